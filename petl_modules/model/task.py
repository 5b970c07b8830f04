"""What a model's outputs mean: the task kind and, for multi-label, the per-class thresholds.

- ``single_label``: one class per example; softmax over the classes; the prediction is the most
  probable class.
- ``multilabel``: any number of classes per example; a sigmoid per class; the prediction is every
  class whose probability reaches its threshold (chosen on the validation split at training).
"""

import dataclasses

import torch

TASKS = ("single_label", "multilabel")
DEFAULT_THRESHOLD = 0.5  # a class without a positive validation example keeps this one


@dataclasses.dataclass
class Task:
    """The task of a model with ``n_classes`` outputs (``thresholds``: multi-label only, one per
    class in [0, 1]). ``check(n_classes)`` raises ``ValueError`` naming what is wrong."""

    kind: str = "single_label"
    thresholds: list = None

    def check(self, n_classes=None):
        if self.kind not in TASKS:
            raise ValueError(f"'task' is {self.kind!r:.60}, not one of {', '.join(TASKS)}")
        if self.kind == "single_label":
            if self.thresholds is not None:
                raise ValueError("'thresholds' given for a single_label model")
            return self
        if not isinstance(self.thresholds, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
                for t in self.thresholds):
            raise ValueError("a multilabel model needs 'thresholds': a list of numbers in [0, 1]")
        if n_classes is not None and len(self.thresholds) != n_classes:
            raise ValueError(f"'thresholds' has {len(self.thresholds)} values for {n_classes} class_names")
        return self

    @property
    def multilabel(self):
        return self.kind == "multilabel"

    def probabilities(self, logits):
        """``[B, C]`` logits -> class probabilities (fp32): sigmoid per class, or softmax."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def threshold_tensor(self, n_classes):
        """``[C]`` decision thresholds (``DEFAULT_THRESHOLD`` for a single-label model)."""
        return torch.tensor(self.thresholds or [DEFAULT_THRESHOLD] * n_classes)

    def to_json(self):
        return {"kind": self.kind, "thresholds": self.thresholds}
