"""What a task is scored by, and the loss weights of imbalanced classes (scikit-learn underneath).

Two tasks (``task`` in ``recipe.yaml``):

- ``single_label``: one class per example, softmax + cross-entropy; scored by accuracy and macro F1,
  with, on request (``confusion_matrix: True``), the test split's confusion matrix
  (``write_confusion_matrix``: CSV and PNG);
- ``multilabel``: any number of classes per example (``label`` holds them ``;``-separated), one
  sigmoid + binary cross-entropy per class; scored by mAP (the mean over classes of the average
  precision, as the AudioSet and FSD50K papers; classes without a positive example are left out of
  the mean) and by micro/macro F1 at per-class thresholds chosen on the validation split
  (``choose_thresholds``: the threshold of best F1 per class), which the model folder keeps; the
  test also reports d-prime (``d_prime``: sqrt(2) x the inverse normal CDF of the mean per-class
  ROC AUC, the AudioSet papers' convention) and writes every class's AP, AUC and F1 to a CSV
  (``write_per_class_scores``).

``class_weights: balanced`` weights the loss by the inverse class frequency of the training split
(``balanced_class_weights``; scikit-learn's ``compute_class_weight``): per class for single-label,
as the positive weight of each class's binary loss (negatives / positives) for multi-label.
"""

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from petl_modules.files import csv_cell
from petl_modules.model.task import DEFAULT_THRESHOLD, TASKS  # noqa: F401 (the model's; used from here too)

logger = logging.getLogger(__name__)

CLASS_WEIGHTS = (None, "balanced")
LABEL_SEPARATOR = ";"  # the classes of one multi-label example, in a manifest's label column


def is_multilabel(hparams):
    """True for a ``task: multilabel`` run (``hparams`` a dict or SpeechBrain's hparams object)."""
    task = hparams.get("task") if isinstance(hparams, dict) else getattr(hparams, "task", None)
    return task == "multilabel"


def labels_of(value, multilabel):
    """The class names in one manifest ``label`` cell: one, or the ``;``-separated ones."""
    if not multilabel:
        return [value]
    return [part.strip() for part in str(value).split(LABEL_SEPARATOR) if part.strip()]


def multi_hot(names, index_of, n_classes):
    """``[C]`` float tensor with 1 at the classes ``names`` (``index_of``: name -> index)."""
    target = torch.zeros(int(n_classes))
    target[[index_of[name] for name in names]] = 1.0
    return target


# ==================================================================== loss weights
def balanced_class_weights(label_lists, class_names, multilabel):
    """Loss weights for ``class_weights: balanced`` from the training labels.

    Arguments
    ---------
    label_lists : list of list of str
        The classes of every training example (one each for single-label).
    class_names : list of str
        The classes in index order.
    multilabel : bool
        False: scikit-learn's ``compute_class_weight("balanced")`` (n / (C x count)), the
        ``weight`` of the cross-entropy. True: negatives / positives per class, the ``pos_weight``
        of the binary cross-entropy.

    Returns
    -------
    torch.Tensor
        ``[C]`` float32.
    """
    names = list(class_names)
    if multilabel:
        index = {name: k for k, name in enumerate(names)}
        counts = np.zeros(len(names))
        for labels in label_lists:
            for name in labels:
                counts[index[name]] += 1
        negatives = len(label_lists) - counts
        return torch.tensor(negatives / np.maximum(counts, 1), dtype=torch.float32)
    from sklearn.utils.class_weight import compute_class_weight

    flat = [labels[0] for labels in label_lists]
    present = sorted(set(flat), key=names.index)
    weights = dict(zip(present, compute_class_weight("balanced", classes=np.array(present),
                                                     y=np.array(flat))))
    return torch.tensor([float(weights.get(name, 1.0)) for name in names], dtype=torch.float32)


# ==================================================================== scores
def average_precisions(targets, scores):
    """Per-class average precision ``[C]`` (NaN for a class without a positive example)."""
    from sklearn.metrics import average_precision_score

    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        if targets[:, c].any():
            out[c] = average_precision_score(targets[:, c], scores[:, c])
    return out


def mean_average_precision(targets, scores):
    """mAP: the mean of ``average_precisions`` over the classes with a positive example (0.0 if
    none has one)."""
    ap = average_precisions(targets, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def roc_aucs(targets, scores):
    """Per-class ROC AUC ``[C]`` (NaN for a class whose examples are all positive or all negative)."""
    from sklearn.metrics import roc_auc_score

    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        if 0 < targets[:, c].sum() < len(targets):
            out[c] = roc_auc_score(targets[:, c], scores[:, c])
    return out


def d_prime(auc):
    """The d-prime of a ROC AUC: ``sqrt(2) * Phi^-1(auc)`` (the separation, in standard deviations,
    of two unit-variance normal score distributions with that AUC); NaN for a NaN AUC.

    Example
    -------
    >>> round(d_prime(0.5), 6), round(d_prime(0.9), 4)
    (0.0, 1.8124)
    """
    from scipy.stats import norm

    return float(np.sqrt(2.0) * norm.ppf(auc)) if np.isfinite(auc) else float("nan")


def choose_thresholds(targets, scores):
    """Per-class decision thresholds: the score threshold of best F1 on these (validation) examples.

    Arguments
    ---------
    targets : array ``[N, C]`` of 0/1
    scores : array ``[N, C]`` of probabilities

    Returns
    -------
    list of float
        ``[C]``; ``DEFAULT_THRESHOLD`` for a class without a positive example.
    """
    from sklearn.metrics import precision_recall_curve

    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    thresholds = []
    for c in range(targets.shape[1]):
        if not targets[:, c].any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(targets[:, c], scores[:, c])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds.append(float(cuts[int(np.argmax(f1))]))
    return thresholds


def multilabel_scores(targets, scores, thresholds):
    """The scores of probabilities ``scores`` against 0/1 ``targets`` (both ``[N, C]``), a class
    being predicted where its score reaches its threshold: ``map``, ``f1_micro``, ``f1_macro``,
    ``mauc`` (the mean per-class ROC AUC), ``d_prime`` (of ``mauc``), and per class (lists of
    ``[C]``, NaN where undefined) ``ap``, ``auc``, ``f1``, ``positives``."""
    from sklearn.metrics import f1_score

    targets = np.asarray(targets).astype(int)
    predicted = (np.asarray(scores) >= np.asarray(thresholds)[None, :]).astype(int)
    ap, auc = average_precisions(targets, scores), roc_aucs(targets, scores)
    mauc = float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")
    return {
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
        "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(targets, predicted, average="macro", zero_division=0)),
        "mauc": mauc,
        "d_prime": d_prime(mauc),
        "ap": ap.tolist(),
        "auc": auc.tolist(),
        "f1": f1_score(targets, predicted, average=None, zero_division=0).tolist(),
        "positives": targets.sum(axis=0).tolist(),
    }


PER_CLASS_FILE = "test_per_class.csv"


def write_per_class_scores(path, scores, class_names, thresholds):
    """Writes a multi-label test's per-class scores (``multilabel_scores``) as CSV: ``index, class,
    positives, ap, auc, f1, threshold``, one row per class in index order (empty where a score is
    undefined: no positive, or no negative, test example)."""
    def cell(value):
        return "" if value is None or not np.isfinite(value) else f"{value:.6f}"

    with open(Path(path), "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "class", "positives", "ap", "auc", "f1", "threshold"])
        for k, name in enumerate(class_names):
            writer.writerow([k, csv_cell(name), int(scores["positives"][k]), cell(scores["ap"][k]),
                             cell(scores["auc"][k]), cell(scores["f1"][k]),
                             cell(float(thresholds[k]))])
    return Path(path)


def single_label_scores(labels, predicted, n_classes):
    """``{"accuracy", "f1_macro", "confusion"}`` of class indices (``confusion[i][j]``: examples
    of class i predicted as j)."""
    from sklearn.metrics import confusion_matrix, f1_score

    classes = list(range(int(n_classes)))
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return {
        "accuracy": float((labels == predicted).mean()) if labels.size else 0.0,
        "f1_macro": float(f1_score(labels, predicted, labels=classes, average="macro",
                                   zero_division=0)),
        "confusion": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


# ==================================================================== confusion matrix files
def write_confusion_matrix(folder, confusion, class_names, stem="confusion_matrix", title=None):
    """Writes ``<stem>.csv`` (rows: true class, columns: predicted class) and ``<stem>.png``
    (``confusion_figure``) in ``folder``; returns their paths."""
    folder = Path(folder)
    csv_path, png_path = folder / f"{stem}.csv", folder / f"{stem}.png"
    with open(csv_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["true \\ predicted", *map(csv_cell, class_names)])
        for name, row in zip(class_names, confusion):
            writer.writerow([csv_cell(name), *row])
    import matplotlib.pyplot as plt

    figure = confusion_figure(confusion, class_names, title)
    figure.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return csv_path, png_path


def confusion_figure(confusion, class_names, title=None):
    """The confusion matrix as a matplotlib figure (scikit-learn's ``ConfusionMatrixDisplay``):
    the count in each non-empty cell, a colour bar, a title with the accuracy and the number of
    clips, the class names on both axes; cells and fonts sized so that labels stay apart up to
    50 classes and more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(confusion)
    classes = len(class_names)
    cell = min(0.8, max(0.3, 6.0 / max(classes, 1)))  # inches per class
    side = cell * classes + 3.0  # room for the labels and the colour bar
    figure, axes = plt.subplots(figsize=(side + 1.0, side))
    labels = [str(n).replace("$", r"\$") for n in class_names]  # no mathtext from class names
    display = ConfusionMatrixDisplay(matrix, display_labels=labels)
    display.plot(ax=axes, cmap="Blues", colorbar=True, values_format="d", xticks_rotation="vertical",
                 text_kw={"fontsize": min(12.0, cell * 72 * 0.4)})
    for text, count in zip(display.text_.ravel(), matrix.ravel()):
        if count == 0:
            text.set_text("")  # empty cells blank: the counts that matter stand out
    font = min(11.0, cell * 72 * 0.45)
    axes.tick_params(labelsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    total = int(matrix.sum())
    accuracy = float(np.trace(matrix) / total) if total else 0.0
    heading = f"{title}: " if title else "Confusion matrix: "
    axes.set_title(f"{heading}test accuracy {accuracy:.3f} on {total} clips")
    return figure


def default_window_pooling(task):
    """How a file's sliding windows are pooled by default: ``max`` for multi-label (an event in
    any window is in the file), ``mean`` for single-label."""
    return "max" if task == "multilabel" else "mean"
