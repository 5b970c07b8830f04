"""Third-party log lines that say nothing about what this package runs, silenced one by one.

Each is dropped by a filter on the logger that emits it, matched on its text, so every other line
of those loggers still shows. ``install()`` runs when ``petl_modules`` is imported, before any of
its modules imports the loggers' modules.

- ``speechbrain.utils.train_logger`` warns, when it is imported, that torchvision is missing and
  figures cannot be saved: that is the image format of its ``ProgressSampleLogger``, which nothing
  here uses (the confusion matrix is drawn with matplotlib).
- torch's ONNX exporter (``torch.onnx._internal.exporter._registration``) warns on every export
  that torchvision's operators (``nms``, ``roi_align``, ...) are skipped: no model here has them.
- SpeechBrain logs its start lines (the quirks it applied, ``Beginning experiment!``, the
  experiment folder) on every ``create_experiment_directory``: once for the output folder and
  again for each fold's folder. Each distinct line shows once per process (a fold's own folder
  still shows).
"""

import logging


class DropLines(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes`` (``once``: shows each
    distinct message the first time)."""

    def __init__(self, prefixes, once=False):
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.once = once
        self.seen = set()

    def filter(self, record):
        message = record.getMessage()
        if not message.startswith(self.prefixes):
            return True
        if not self.once or message in self.seen:
            return False
        self.seen.add(message)
        return True


SILENCED = {
    "speechbrain.utils.train_logger": DropLines(["torchvision is not available - cannot save figures"]),
    "torch.onnx._internal.exporter._registration": DropLines(
        ["torchvision is not installed. Skipping torchvision::"]),
    "speechbrain.utils.quirks": DropLines([""], once=True),
    "speechbrain.core": DropLines(["Beginning experiment!", "Experiment folder: "], once=True),
}


def install():
    """Adds the filters of ``SILENCED`` to their loggers (once)."""
    for name, line_filter in SILENCED.items():
        target = logging.getLogger(name)
        if line_filter not in target.filters:
            target.addFilter(line_filter)
