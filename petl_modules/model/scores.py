"""The scores of a task's predictions (scikit-learn underneath): arrays in, plain numbers out.

``petl_modules.model.task`` picks the ones of each task kind: accuracy, macro F1 and the
confusion matrix for single-label; for multi-label the mAP (the mean over classes of the average
precision, as the AudioSet and FSD50K papers; classes without a positive example are left out of
the mean), micro/macro F1 at per-class thresholds, and those thresholds (``choose_thresholds``:
the threshold of best F1 per class, on the validation split); the test also reports the mean
per-class ROC AUC and its d-prime (``d_prime``: sqrt(2) x the inverse normal CDF of the AUC, the
AudioSet papers' convention), and every class's AP, AUC and F1.
"""

import math

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a class without a positive validation example keeps this one


def finite_or_none(value):
    """A score as JSON holds it: a plain float, or None where it is undefined (NaN, infinite)."""
    return float(value) if value is not None and math.isfinite(value) else None


# ==================================================================== single-label
def single_label_scores(labels, predicted, n_classes):
    """``{"accuracy", "f1_macro", "confusion"}`` of class indices (``confusion[i][j]``: examples
    of class i predicted as j).

    Example
    -------
    >>> found = single_label_scores([0, 1, 1], [0, 1, 0], 2)
    >>> round(found["accuracy"], 4), found["confusion"]
    (0.6667, [[1, 0], [1, 1]])
    """
    from sklearn.metrics import confusion_matrix, f1_score

    classes = list(range(int(n_classes)))
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return {
        "accuracy": accuracy(labels, predicted),
        "f1_macro": float(f1_score(labels, predicted, labels=classes, average="macro",
                                   zero_division=0)),
        "confusion": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def accuracy(labels, predicted):
    """The share of ``predicted`` class indices equal to ``labels`` (0.0 when there are none)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return float((labels == predicted).mean()) if labels.size else 0.0


# ==================================================================== multi-label
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
    none has one).

    Example
    -------
    >>> mean_average_precision([[1, 0], [0, 1]], [[0.9, 0.2], [0.1, 0.8]])
    1.0
    """
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
