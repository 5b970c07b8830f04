"""What a model's outputs mean, how they train and how they are scored: one class per task kind.

A task kind is one class, registered by its name (``register_task``; ``TASKS``), the value of
``task`` in ``recipe.yaml`` and in ``petl_config.json``. Everything that differs between kinds is
here, and the rest of the package asks the task: the Brain (targets of a batch, loss, stage
scores, the best-epoch key and what its checkpoint keeps), the recipe flow (the classes of a
manifest's ``label``, targets, class weights, the fields of ``fold_result.json`` and
``results.json``), ``classify`` (output activation, predicted classes, the answer printed), the
results tool (a run's score), the exports (the ONNX head's activation, the side files) and the
model card (its score lines):

- ``single_label`` (``SingleLabel``): one class per example; softmax and cross-entropy; the
  prediction is the most probable class; scored by accuracy (the best epoch by ``valid_acc``),
  macro F1 and the confusion matrix;
- ``multilabel`` (``MultiLabel``): any number of classes per example (a manifest's ``label`` holds
  them ``;``-separated); a sigmoid and a binary cross-entropy per class; the prediction is every
  class whose probability reaches its threshold (chosen on the validation split at training, kept
  in the model folder); scored by mAP (the best epoch by ``valid_map``), micro/macro F1, the
  mean ROC AUC and its d-prime, and per class (AP, AUC, F1: ``test_per_class.csv``).

``docs/extending.md`` shows how a third kind is added.
"""

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from petl_modules.files import printable
from petl_modules.model import scores
from petl_modules.model.scores import DEFAULT_THRESHOLD

TASKS = {}  # kind -> Task subclass, in registration order
LABEL_SEPARATOR = ";"  # the classes of one multi-label example, in a manifest's label column


def register_task(cls):
    """Class decorator: makes ``cls`` the task of ``task: <cls.kind>``."""
    TASKS[cls.kind] = cls
    return cls


@dataclasses.dataclass
class Task:
    """The task of a model: what its ``[B, C]`` logits mean. A subclass per kind sets the class
    attributes below and the methods that differ; ``thresholds`` is the state a trained model of
    the kind keeps (multi-label: one per class in [0, 1]; None for the others)."""

    thresholds: list = None

    kind: ClassVar[str] = None
    uses_thresholds: ClassVar[bool] = False
    several_classes: ClassVar[bool] = False  # an example may have more than one class
    target_key: ClassVar[str] = None  # the batch key of the training targets
    metric: ClassVar[str] = None  # the stage score that selects the best epoch
    metric_name: ClassVar[str] = None  # how tables and logs name it
    selection_key: ClassVar[str] = None  # the checkpoint meta key of the best epoch
    valid_key: ClassVar[str] = None  # fold_result.json: the best epoch's validation score
    test_fields: ClassVar[dict] = {}  # fold_result.json key -> test stage score, the main one first
    test_key: ClassVar[str] = None  # the main one's key (fold_result.json, results.json): set from test_fields
    score_range: ClassVar[tuple] = (0.0, 1.0)  # of the main score
    window_pooling: ClassVar[str] = "mean"  # how a file's windows are pooled by default
    classes_note: ClassVar[str] = ""  # the model card's Classes row

    # ---------------------------------------------------------------- which task
    @classmethod
    def of(cls, kind, thresholds=None):
        """The task of kind ``kind`` (``ValueError`` naming the kinds for another value)."""
        if not isinstance(kind, str) or kind not in TASKS:
            raise ValueError(f"'task' is {kind!r:.60}, not one of {', '.join(TASKS)}")
        return TASKS[kind](thresholds)

    @classmethod
    def of_options(cls, options):
        """The task of a run's options (a dict, or SpeechBrain's hparams object): ``task``,
        single-label by default."""
        kind = options.get("task") if isinstance(options, dict) else getattr(options, "task", None)
        return cls.of(kind or "single_label")

    @classmethod
    def of_view(cls, config):
        """The task of a model folder's flat summary (``ModelSpec.view``: ``task``, ``thresholds``)."""
        return cls.of(config.get("task") or "single_label", config.get("thresholds"))

    @classmethod
    def of_result(cls, result):
        """The task whose main test score is in ``result`` (a fold's result, or results.json with
        ``<key>_mean``); single-label when none is."""
        for task in TASKS.values():
            key = task.test_key
            if key in result or f"{key}_mean" in result:
                return task()
        return TASKS["single_label"]()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.test_key = next(iter(cls.test_fields), None)

    # ---------------------------------------------------------------- the model folder
    def check(self, n_classes=None):
        """Returns ``self``; ``ValueError`` naming what is wrong for a model of ``n_classes``."""
        if self.thresholds is not None:
            raise ValueError(f"'thresholds' given for a {self.kind} model")
        return self

    def to_json(self):
        return {"kind": self.kind, "thresholds": self.thresholds}

    def trained(self, thresholds=None):
        """The task a trained model keeps (``thresholds``: those chosen at training, if any)."""
        return type(self)()

    # ---------------------------------------------------------------- outputs
    def probabilities(self, logits):
        """``[B, C]`` logits -> the outputs (fp32)."""
        raise NotImplementedError

    def predicted_labels(self, labels, probabilities):
        """The predicted classes (names of ``labels``) of one example's ``[C]`` outputs."""
        return [labels[int(probabilities.argmax())]]

    def answer(self, result, top_k):
        """One model's answer for a file as ``classify`` prints it: ``{"label", "score",
        "top_k"}`` (``result``: a file's result of ``PETLModel.classify_files``)."""
        return {"label": result["label"], "score": result["score"], "top_k": top_k}

    def answer_text(self, row):
        """An ``answer`` as a line of text: ``label<TAB>score  other score...`` (control
        characters in labels escaped: one answer stays one line of its fields)."""
        return f"{printable(row['label'])}\t{row['score']:.4f}{_others(row)}"

    # ---------------------------------------------------------------- data
    def labels_of(self, cell):
        """The class names in one manifest ``label`` cell."""
        return [cell]

    def target(self, cell, encoder):
        """The training target of a ``label`` cell (``encoder``: SpeechBrain's
        ``CategoricalEncoder`` of the run's classes)."""
        raise NotImplementedError

    def target_of_classes(self, indices, n_classes):
        """The training target of an example of the classes ``indices`` (as ``target`` gives it:
        tar shards hold class indices)."""
        raise ValueError(f"--shards hold class labels; a {self.kind} task has no targets of "
                         "classes: train from the manifests.")

    def batch_targets(self, batch):
        """The targets of a padded batch, as ``loss`` takes them."""
        return getattr(batch, self.target_key).data

    def soft_targets(self, targets, n_classes):
        """``[B, C]`` float targets of ``batch_targets``: what mixup mixes, and ``loss`` takes."""
        raise ValueError(f"mixup mixes class targets; a {self.kind} task defines no such targets: "
                         "run without it.")

    def class_weights(self, label_lists, class_names):
        """``[C]`` loss weights of ``class_weights: balanced`` from the training examples' classes."""
        raise ValueError(f"class_weights=balanced weighs the loss per class; a {self.kind} task "
                         "defines no such weights: run without it.")

    # ---------------------------------------------------------------- training and scores
    def loss(self, logits, targets, weights=None):
        """The training loss of fp32 ``[B, C]`` logits (``weights``: ``class_weights``)."""
        raise NotImplementedError

    def pooled_loss(self, pooled, targets):
        """The loss of files whose windows' outputs were pooled (``[U, C]``)."""
        raise NotImplementedError

    def train_counts(self, logits, targets):
        """``[2]`` what training scores count per batch (hits, examples), or None."""
        return None

    def train_scores(self, counts):
        """The training epoch's scores from the summed ``train_counts``."""
        return {}

    def valid_scores(self, targets, outputs):
        """``(scores, thresholds)`` of a validation pass (``[N, ...]`` targets, ``[N, C]``
        outputs); ``thresholds`` chosen on it, or None."""
        raise NotImplementedError

    def test_scores(self, targets, outputs, thresholds=None):
        """The test pass's scores (``thresholds``: those of the best validation epoch)."""
        raise NotImplementedError

    def checkpoint_meta(self, stats, thresholds=None):
        """What a validation checkpoint keeps of the pass's ``stats`` (plain floats: SpeechBrain
        reads it with a safe loader)."""
        return {self.selection_key: float(stats[self.metric])}

    def fold_result(self, valid_score, stats):
        """A fold's scores in ``fold_result.json``: the best epoch's validation score and the
        test pass's ``stats``."""
        return {self.valid_key: valid_score,
                **{key: scores.finite_or_none(stats.get(name)) for key, name in self.test_fields.items()}}

    def summary(self, results, n_classes=None, digits=4):
        """What a run's summary says beside its main score (``results``: results.json; with
        ``n_classes``, also what chance would score), or ""."""
        return ""

    def card_rows(self, metrics, percent):
        """The model card's extra score rows (``percent``: a score as text)."""
        return []


def _others(row):
    return "".join(f"  {printable(t['label'])} {t['score']:.4f}" for t in row["top_k"][1:])


# ==================================================================== single-label
@register_task
@dataclasses.dataclass
class SingleLabel(Task):
    """One class per example: softmax, cross-entropy; accuracy, macro F1, confusion matrix."""

    kind: ClassVar[str] = "single_label"
    target_key: ClassVar[str] = "label_index"
    metric: ClassVar[str] = "accuracy"
    metric_name: ClassVar[str] = "accuracy"
    selection_key: ClassVar[str] = "valid_acc"
    valid_key: ClassVar[str] = "valid_accuracy"
    test_fields: ClassVar[dict] = {"test_accuracy": "accuracy", "test_f1_macro": "f1_macro"}

    def probabilities(self, logits):
        return torch.softmax(logits.float(), dim=-1)

    def target(self, cell, encoder):
        return encoder.encode_label_torch(cell)

    def target_of_classes(self, indices, n_classes):
        return torch.tensor([int(indices[0])])

    def batch_targets(self, batch):
        return batch.label_index.data.view(-1)

    def soft_targets(self, targets, n_classes):
        """One-hot rows of the class indices ``targets``."""
        return F.one_hot(targets.view(-1), int(n_classes)).float()

    def class_weights(self, label_lists, class_names):
        """scikit-learn's ``compute_class_weight("balanced")`` (n / (C x count)), the ``weight``
        of the cross-entropy; 1.0 for a class without a training example."""
        import numpy as np
        from sklearn.utils.class_weight import compute_class_weight

        names = list(class_names)
        flat = [labels[0] for labels in label_lists]
        present = sorted(set(flat), key=names.index)
        weights = dict(zip(present, compute_class_weight("balanced", classes=np.array(present),
                                                         y=np.array(flat))))
        return torch.tensor([float(weights.get(name, 1.0)) for name in names], dtype=torch.float32)

    def loss(self, logits, targets, weights=None):
        return F.cross_entropy(logits, targets, weight=weights)

    def pooled_loss(self, pooled, targets):
        """The cross-entropy of the pooled probabilities, renormalised."""
        distribution = pooled / pooled.sum(dim=-1, keepdim=True)
        return F.nll_loss(torch.log(distribution.clamp_min(torch.finfo(pooled.dtype).tiny)), targets)

    def train_counts(self, logits, targets):
        predicted = logits.argmax(dim=-1)
        return torch.stack([(predicted == targets).sum(),
                            torch.tensor(targets.numel(), device=targets.device)])

    def train_scores(self, counts):
        return {"accuracy": float(counts[0] / counts[1]) if counts[1] > 0 else 0.0}

    def summary(self, results, n_classes=None, digits=4):
        return "" if not n_classes else f"chance {1 / n_classes:.{digits}f}"

    def valid_scores(self, targets, outputs):
        return {"accuracy": scores.accuracy(targets, outputs.argmax(dim=-1))}, None

    def test_scores(self, targets, outputs, thresholds=None):
        if not len(targets):
            return {"accuracy": 0.0}
        return scores.single_label_scores(targets, outputs.argmax(dim=-1), outputs.shape[-1])


# ==================================================================== multi-label
@register_task
@dataclasses.dataclass
class MultiLabel(Task):
    """Any number of classes per example: a sigmoid and a binary cross-entropy per class; mAP,
    micro/macro F1 at per-class thresholds chosen on the validation split."""

    kind: ClassVar[str] = "multilabel"
    uses_thresholds: ClassVar[bool] = True
    several_classes: ClassVar[bool] = True
    target_key: ClassVar[str] = "targets"
    metric: ClassVar[str] = "map"
    metric_name: ClassVar[str] = "mAP"
    selection_key: ClassVar[str] = "valid_map"
    valid_key: ClassVar[str] = "valid_map"
    test_fields: ClassVar[dict] = {"test_map": "map", "test_f1_micro": "f1_micro",
                                   "test_f1_macro": "f1_macro", "test_mauc": "mauc",
                                   "test_d_prime": "d_prime"}
    window_pooling: ClassVar[str] = "max"  # an event heard in any window is in the file
    classes_note: ClassVar[str] = " (multi-label: every class above its threshold)"

    def check(self, n_classes=None):
        if not isinstance(self.thresholds, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
                for t in self.thresholds):
            raise ValueError("a multilabel model needs 'thresholds': a list of numbers in [0, 1]")
        if n_classes is not None and len(self.thresholds) != n_classes:
            raise ValueError(f"'thresholds' has {len(self.thresholds)} values for {n_classes} class_names")
        return self

    def trained(self, thresholds=None):
        if thresholds is None:
            raise ValueError("A multilabel model needs its per-class thresholds.")
        return MultiLabel([float(t) for t in thresholds])

    def probabilities(self, logits):
        return torch.sigmoid(logits.float())

    def predicted_labels(self, labels, probabilities):
        """Every class at or above its threshold, most probable first."""
        cuts = torch.tensor(self.thresholds or [DEFAULT_THRESHOLD] * len(labels))
        above = (probabilities >= cuts).nonzero().view(-1).tolist()
        return [labels[i] for i in sorted(above, key=lambda i: -float(probabilities[i]))]

    def answer(self, result, top_k):
        """The single-label answer and ``labels``: every class above its threshold."""
        return {**super().answer(result, top_k), "labels": result["labels"]}

    def answer_text(self, row):
        """``labels<TAB>label score ...`` (``-`` for no class)."""
        return (f"{';'.join(map(printable, row['labels'])) or '-'}\t{printable(row['label'])} "
                f"{row['score']:.4f}{_others(row)}")

    def labels_of(self, cell):
        return [part.strip() for part in str(cell).split(LABEL_SEPARATOR) if part.strip()]

    def target(self, cell, encoder):
        """``[C]`` float tensor with 1 at the classes of ``cell``."""
        return self.target_of_classes([encoder.lab2ind[name] for name in self.labels_of(cell)],
                                      len(encoder))

    def target_of_classes(self, indices, n_classes):
        target = torch.zeros(int(n_classes))
        target[torch.as_tensor(list(indices), dtype=torch.long)] = 1.0
        return target

    def batch_targets(self, batch):
        return batch.targets.data.float()

    def soft_targets(self, targets, n_classes):
        return targets.float()

    def class_weights(self, label_lists, class_names):
        """Negatives / positives per class: the ``pos_weight`` of the binary cross-entropy."""
        import numpy as np

        index = {name: k for k, name in enumerate(class_names)}
        counts = np.zeros(len(index))
        for labels in label_lists:
            for name in labels:
                counts[index[name]] += 1
        negatives = len(label_lists) - counts
        return torch.tensor(negatives / np.maximum(counts, 1), dtype=torch.float32)

    def loss(self, logits, targets, weights=None):
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)

    def pooled_loss(self, pooled, targets):
        tiny = torch.finfo(pooled.dtype).eps
        return F.binary_cross_entropy(pooled.clamp(tiny, 1 - tiny), targets.float())

    def valid_scores(self, targets, outputs):
        if not len(targets):
            return {"map": 0.0}, [DEFAULT_THRESHOLD] * outputs.shape[-1]
        return ({"map": scores.mean_average_precision(targets, outputs)},
                scores.choose_thresholds(targets, outputs))

    def test_scores(self, targets, outputs, thresholds=None):
        """mAP, micro/macro F1, the mean ROC AUC and its d-prime, and ``per_class``: every
        class's ``ap``, ``auc``, ``f1`` and ``positives`` (``test_per_class.csv``)."""
        if not len(targets):
            return {**dict.fromkeys(("map", "f1_micro", "f1_macro"), 0.0),
                    "mauc": float("nan"), "d_prime": float("nan")}
        found = scores.multilabel_scores(targets, outputs, thresholds)
        per_class = {k: found.pop(k) for k in ("ap", "auc", "f1", "positives")}
        return {**found, "per_class": per_class}

    def checkpoint_meta(self, stats, thresholds=None):
        return {**super().checkpoint_meta(stats), "thresholds": [float(t) for t in thresholds]}

    def summary(self, results, n_classes=None, digits=4):
        if "test_f1_micro" not in results:
            return ""
        return (f"micro F1 {results['test_f1_micro']:.{digits}f}, "
                f"macro F1 {results['test_f1_macro']:.{digits}f}")

    def card_rows(self, metrics, percent):
        return [f"| Test F1 micro / macro | {percent(metrics.get('test_f1_micro'))} / "
                f"{percent(metrics.get('test_f1_macro'))} |"]


def default_window_pooling(kind):
    """How a file's sliding windows are pooled by default for a task of ``kind`` (the yaml's
    ``window_pooling``): ``max`` for multi-label (an event in any window is in the file), ``mean``
    otherwise."""
    return Task.of(kind).window_pooling
