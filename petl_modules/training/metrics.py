"""Score files of a run: the test split's confusion matrix (CSV and PNG), and the choices of
``class_weights``.

What a task is trained and scored by (loss, accuracy, macro F1, mAP, d-prime, thresholds, class
weights) is the task's (``petl_modules.model.task``; the scores: ``petl_modules.model.scores``).
On request (``confusion_matrix: True``) a single-label run writes the test split's confusion
matrix (``write_confusion_matrix``); a task whose test scores hold ``per_class`` scores
(multi-label: every class's AP, ROC AUC, F1) writes them to ``test_per_class.csv``
(``write_per_class_scores``). ``class_weights: balanced`` weights the loss by the inverse class
frequency of the training split (``Task.class_weights``).
"""

import csv
import logging
from pathlib import Path

import numpy as np

from petl_modules.files import csv_cell

logger = logging.getLogger(__name__)

CLASS_WEIGHTS = (None, "balanced")
PER_CLASS_FILE = "test_per_class.csv"


# ==================================================================== per-class scores
def write_per_class_scores(path, scores, class_names, thresholds):
    """Writes a multi-label test's per-class scores (``per_class`` of its test scores:
    ``petl_modules.model.scores.multilabel_scores``) as CSV: ``index, class, positives, ap, auc,
    f1, threshold``, one row per class in index order (empty where a score is undefined: no
    positive, or no negative, test example)."""
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
