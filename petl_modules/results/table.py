"""The results table: runs grouped by method label, dataset and backbone, each group's test score
as mean and population std over folds and seeds; as a markdown report and as CSV."""

import csv
import io
import math

from petl_modules.files import csv_cell, csv_value
from petl_modules.results.labels import backbone_label, method_label, settings_label


def summarise(runs):
    """One row per (method label, dataset, backbone, metric): the test score's mean/std over folds
    and seeds (``test_mean``/``test_std``; for accuracy also ``test_accuracy_mean``/``_std``)."""
    groups = {}
    for run in runs:
        key = (method_label(run), settings_label(run), run.get("dataset_name") or run["dataset"],
               backbone_label(run), run["metric"])
        groups.setdefault(key, []).append(run)
    rows = []
    for (label, settings, dataset, backbone, metric), members in sorted(groups.items()):
        values = [a for run in members for a in run["test_scores"]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        first = members[0]
        trainable = first["trainable_params"]
        without_head = first.get("trainable_params_without_head", trainable)
        head = trainable - without_head
        backbone_total = max(1, first["total_params"] - head)
        rows.append({
            "method": label,
            "settings": settings,
            "base_method": first["method"],
            "dataset": dataset,
            "backbone": backbone,
            "runs": len(members),
            "values": len(values),
            "metric": metric,
            "test_mean": mean,
            "test_std": std,
            "test_accuracy_mean": mean if metric == "accuracy" else None,
            "test_accuracy_std": std if metric == "accuracy" else None,
            "trainable_params": trainable,
            "trainable_params_without_head": without_head,
            "trainable_percent": float(first.get("trainable_percent",
                                                 100.0 * trainable / max(1, first["total_params"]))),
            "trainable_percent_without_head": 100.0 * without_head / backbone_total,
            "total_params": first["total_params"],
        })
    return rows


def score_text(row):
    """``85.00 ± 1.20`` (percent), with `` mAP`` after a multi-label group's."""
    text = f"{100 * row['test_mean']:.2f} ± {100 * row['test_std']:.2f}"
    return text if row["metric"] == "accuracy" else f"{text} {row['metric']}"


def row_name(row):
    """The name of a group in tables and plots: method options, then other settings in []."""
    return row["method"] + (f" [{row['settings']}]" if row["settings"] else "")


def _count(n):
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def markdown_cell(text):
    """``text`` as one markdown table cell (a results.json may hold any string)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def markdown_report(rows, skipped):
    """The report: a method x dataset table per backbone, every group in full, skipped files."""
    out = io.StringIO()
    out.write("# Results\n\n")
    if not rows:
        out.write("No usable results.json found.\n")
    datasets = sorted({r["dataset"] for r in rows})
    for backbone in sorted({r["backbone"] for r in rows}):
        mine = [r for r in rows if r["backbone"] == backbone]
        out.write(f"## Backbone: {markdown_cell(backbone)}\n\nTest accuracy (%; multi-label runs: mAP (%), "
                  "marked mAP), mean ± std over folds and seeds; trainable parameters without the "
                  "head (% of the backbone).\n\n")
        out.write("| method | trainable | " + " | ".join(map(markdown_cell, datasets)) + " |\n")
        out.write("|---|---:|" + "---:|" * len(datasets) + "\n")
        for label, metric in sorted({(row_name(r), r["metric"]) for r in mine}):
            cells = {r["dataset"]: r for r in mine if row_name(r) == label and r["metric"] == metric}
            any_row = next(iter(cells.values()))
            params = (f"{_count(any_row['trainable_params_without_head'])} "
                      f"({any_row['trainable_percent_without_head']:.2f}%)")
            accs = [score_text(cells[d]) if d in cells else "—" for d in datasets]
            out.write(f"| {markdown_cell(label)} | {params} | " + " | ".join(accs) + " |\n")
        out.write("\n")
    if rows:
        out.write("## All groups\n\n| method | other settings | dataset | backbone | runs | folds x seeds "
                  "| test score (%) | trainable (with head) | trainable % |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---:|\n")
        for r in rows:
            out.write(f"| {markdown_cell(r['method'])} | {markdown_cell(r['settings'] or '—')} | {markdown_cell(r['dataset'])} | "
                      f"{markdown_cell(r['backbone'])} | {r['runs']} | {r['values']} | "
                      f"{score_text(r)} | "
                      f"{r['trainable_params']:,} | {r['trainable_percent']:.4f} |\n")
        out.write("\n")
    if skipped:
        out.write(f"## Skipped ({len(skipped)} malformed or partial results.json)\n\n")
        for path, reason in skipped:
            out.write(f"- `{markdown_cell(path)}`: {markdown_cell(reason)}\n")
        out.write("\n")
    return out.getvalue()


CSV_FIELDS = ["method", "settings", "base_method", "dataset", "backbone", "runs", "values", "metric",
              "test_mean", "test_std", "test_accuracy_mean", "test_accuracy_std", "trainable_params",
              "trainable_params_without_head", "trainable_percent", "trainable_percent_without_head",
              "total_params"]


def write_csv(rows, path):
    """Writes the table ``rows`` (dicts of ``CSV_FIELDS``) to ``path``; a text cell that a
    spreadsheet would run as a formula is written with a leading ``'`` (``files.csv_cell``)."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)


def read_csv(path):
    """The rows (dicts of text) of a table ``write_csv`` wrote, its text cells as they were."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [{k: csv_value(v) for k, v in row.items()} for row in csv.DictReader(stream)]
