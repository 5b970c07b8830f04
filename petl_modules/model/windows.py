"""How a trained model evaluates a file: its first clip, or sliding windows pooled into one
prediction (the ``evaluation`` of a model folder; ``petl_modules/training/windows.py`` has the
training side: random crops, window datasets, pooled scores).

A backbone sees a clip of fixed length: ``max_frames`` fbank frames (AST) or ``clip_seconds``
(waveform and Whisper lobes), i.e. the input processor's ``samples_needed`` samples. The papers'
protocol keeps the first clip of every file. ``eval_windows: sliding`` covers the whole file with
clips every ``window_hop_seconds`` (null: half a clip), the last one ending where the file ends
(``window_starts``); the windows' class probabilities are pooled into the file's
(``window_pooling``: mean, or max for events). A file no longer than a clip is one window, padded
as in the first-clip protocol. Every window is a ``petl_modules.model.clip.Clip`` of the file (or
of a segment of it); ``classify`` reads a file's windows a few at a time
(``petl_modules.model.long_audio.file_windows``): memory does not grow with the file.
"""

import math

EVAL_WINDOWS = ("first", "sliding")
WINDOW_POOLINGS = ("mean", "max")


# ==================================================================== where clips start
def clip_samples(processor):
    """Samples one clip of ``processor`` reads (None: whole utterances, e.g. ``clip_seconds: null``)."""
    needed = getattr(processor, "samples_needed", None)
    return None if needed is None else int(needed)


def window_starts(total, clip, hop):
    """First samples of the sliding windows over ``total`` samples: every ``hop`` samples while a
    whole clip fits, then one ending at the file's end if the grid misses it; ``[0]`` for a file no
    longer than a clip (or ``clip`` None: whole utterances).

    Example
    -------
    >>> window_starts(1000, 400, 200)  # 1000 = 400 + 3 x 200: the grid ends with the file
    [0, 200, 400, 600]
    >>> window_starts(1100, 400, 200)  # the last window ends with the file
    [0, 200, 400, 600, 700]
    >>> window_starts(300, 400, 200)
    [0]
    """
    if clip is None or total <= clip:
        return [0]
    starts = list(range(0, int(total) - int(clip) + 1, int(hop)))
    if starts[-1] + clip < total:
        starts.append(int(total) - int(clip))
    return starts


# ==================================================================== the evaluation protocol
class EvalProtocol:
    """How a file is evaluated: its first clip, or sliding windows pooled into one prediction.

    Arguments
    ---------
    windows : str
        ``first`` (the papers' protocol) or ``sliding``.
    hop_seconds : float or None
        Seconds between window starts (None: half a clip).
    pooling : str
        ``mean`` or ``max`` of the windows' class probabilities.
    """

    def __init__(self, windows="first", hop_seconds=None, pooling="mean"):
        if windows not in EVAL_WINDOWS:
            raise ValueError(f"eval_windows={windows!r}: use one of {', '.join(EVAL_WINDOWS)}.")
        if pooling not in WINDOW_POOLINGS:
            raise ValueError(f"window_pooling={pooling!r}: use one of {', '.join(WINDOW_POOLINGS)}.")
        number = isinstance(hop_seconds, (int, float)) and not isinstance(hop_seconds, bool)
        if hop_seconds is not None and not (number and math.isfinite(hop_seconds) and hop_seconds > 0):
            raise ValueError(f"window_hop_seconds={hop_seconds!r} must be a positive number or null.")
        self.windows = windows
        self.hop_seconds = None if hop_seconds is None else float(hop_seconds)
        self.pooling = pooling

    @classmethod
    def from_options(cls, options):
        """The protocol of a run's options (``eval_windows``, ``window_hop_seconds``,
        ``window_pooling``; absent ones: the first clip, as in PETL model folders of
        format_version 1 and 2)."""
        return cls(options.get("eval_windows", "first"), options.get("window_hop_seconds"),
                   options.get("window_pooling", "mean"))

    def config(self):
        """The protocol as plain data, under the recipe's option names (``petl_config.json``)."""
        return {"eval_windows": self.windows, "window_hop_seconds": self.hop_seconds,
                "window_pooling": self.pooling}

    @property
    def sliding(self):
        return self.windows == "sliding"

    def hop(self, processor):
        """Samples between window starts for ``processor`` (half a clip by default)."""
        clip = clip_samples(processor)
        if self.hop_seconds is not None:
            return max(1, round(self.hop_seconds * getattr(processor, "sample_rate", 16000)))
        return max(1, (clip or 1) // 2)

    def starts(self, path, processor):
        """First samples of the windows of the file ``path`` (its header only is read); ``[0]``
        for the first-clip protocol (nothing is read)."""
        return [int(clip.start) for clip in self.clips(path, processor)]

    def clips(self, clip, processor):
        """The clips the model reads of ``clip`` (a ``Clip``, or a path: the whole file): the
        clip itself for the first-clip protocol (nothing is read), else its sliding windows (a
        whole file's header is read)."""
        from petl_modules.model.clip import Clip

        clip = clip if isinstance(clip, Clip) else Clip(clip)
        if not self.sliding:
            return [clip]
        return clip.windows(clip_samples(processor), self.hop(processor),
                            getattr(processor, "sample_rate", 16000))


def pool_windows(probabilities, pooling="mean"):
    """``[W, C]`` class probabilities of a file's windows -> ``[C]``: their mean, or their maximum
    per class (``max``: an event heard in any window)."""
    if pooling == "max":
        return probabilities.max(dim=0).values
    return probabilities.mean(dim=0)
