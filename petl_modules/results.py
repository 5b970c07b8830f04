"""Collecting runs into a results table and an accuracy-vs-parameters plot.

Usage::

    python -m petl_modules.results RUN_DIR... [--out report.md] [--csv results.csv]
        [--plot accuracy_vs_params.png]

Every ``results.json`` below the given folders is read. Runs are grouped by method (with the
options that differ from the method's defaults: ``lora (lora_targets=Wq,Wk,Wv,Wo)``), dataset and
backbone; a group's test accuracy is the mean +- population std over all its folds and seeds.
Trainable parameters are shown without the head (what the papers count; the same on every dataset)
and as a percentage of the backbone. A malformed or partial ``results.json`` (unreadable JSON, a
missing field, a fold without test accuracy, fewer folds than the run asked for) is listed and
skipped, never silently.

Defaults are read from the repository's yaml files (``petl_modules/recipe.yaml`` <
``hparams/<method>.yaml`` < ``recipes/<DATASET>/<dataset>.yaml``), as a run composes them.
"""

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import ruamel.yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

# Options that never name a different model or training set-up (paths, plumbing, repetitions).
NOT_OPTIONS = {
    "seed", "fold", "folds", "method", "dataset", "backbone_source", "data_folder", "output_folder",
    "experiment_folder", "save_folder", "train_log", "manifest_folder", "num_workers",
    "skip_bad_files", "n_classes",
}
REQUIRED = ("dataset", "method", "backbone", "total_params", "trainable_params", "folds")


class ResultsError(ValueError):
    """A results.json that cannot be used (the message says why)."""


# ==================================================================== reading
def find_results(run_dirs):
    """Paths of every ``results.json`` below ``run_dirs`` (a file given directly counts too)."""
    found = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if run_dir.is_file():
            found.append(run_dir)
        elif run_dir.is_dir():
            found += sorted(run_dir.rglob("results.json"))
        else:
            raise FileNotFoundError(f"Run folder '{run_dir}' does not exist.")
    return list(dict.fromkeys(found))


def _accuracy(value, what):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ResultsError(f"{what} is {value!r}, not a fraction in [0, 1]")
    return float(value)


def read_run(path):
    """A checked ``results.json``: its dict, with ``test_accuracies`` (one per fold) added.

    Raises
    ------
    ResultsError
        Malformed (not JSON, a missing field, a bad value) or partial (fewer folds than asked).
    """
    try:
        with open(path) as stream:
            run = json.load(stream)
    except (OSError, ValueError) as err:
        raise ResultsError(f"not readable as JSON ({err})") from None
    if not isinstance(run, dict):
        raise ResultsError("not a JSON object")
    missing = [key for key in REQUIRED if key not in run]
    if missing:
        raise ResultsError(f"missing field(s) {', '.join(missing)}")
    folds = run["folds"]
    if not isinstance(folds, list) or not folds:
        raise ResultsError("no fold results ('folds' is empty): the run did not finish")
    accuracies = []
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict) or "test_accuracy" not in fold:
            raise ResultsError(f"fold entry {k} has no test_accuracy")
        accuracies.append(_accuracy(fold["test_accuracy"], f"fold {fold.get('fold', k)} test_accuracy"))
    options = folds[0].get("hparams") or {}
    requested = run.get("requested_folds") or []
    done = {fold.get("fold") for fold in folds}
    missing = [f for f in requested if f not in done]
    if missing:
        raise ResultsError(f"partial: {len(requested) - len(missing)} of {len(requested)} folds ran "
                           f"(missing {', '.join(map(str, missing))})")
    for key in ("total_params", "trainable_params"):
        if not isinstance(run[key], int) or run[key] < 0:
            raise ResultsError(f"{key} is {run[key]!r}, not a parameter count")
    run["test_accuracies"] = accuracies
    run["options"] = options
    return run


def collect(run_dirs):
    """``(runs, skipped)``: the usable runs, and ``[(path, reason)]`` of the skipped files."""
    runs, skipped = [], []
    for path in find_results(run_dirs):
        try:
            run = read_run(path)
        except ResultsError as err:
            skipped.append((str(path), str(err)))
            continue
        run["path"] = str(path)
        runs.append(run)
    return runs, skipped


# ==================================================================== defaults and labels
def _plain(value):
    """A yaml value as JSON would hold it; None for tagged values (``!ref``, ``!new``, ...)."""
    if getattr(value, "tag", None) is not None and getattr(value.tag, "value", None):
        return None
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return None


def _yaml_scalars(path):
    try:
        with open(path) as stream:
            tree = ruamel.yaml.YAML().load(stream) or {}
    except OSError:
        return {}
    return {k: v for k, v in ((k, _plain(v)) for k, v in tree.items()) if v is not None}


def _file_defining(folder_glob, key, value):
    for path in sorted(REPO_ROOT.glob(folder_glob)):
        if _yaml_scalars(path).get(key) == value:
            return path
    return None


_DEFAULTS = {}

# recipe.yaml keys that change the model itself, shown with the method's own options.
MODEL_KEYS = {"pooling", "position_embeddings"}


def default_options(method, dataset):
    """``(defaults, method_keys)``: the plain option values a run of ``method`` on ``dataset``
    gets without overrides, and the names of the method's own options (its file's keys)."""
    if (method, dataset) not in _DEFAULTS:
        defaults = _yaml_scalars(REPO_ROOT / "petl_modules" / "recipe.yaml")
        method_file = REPO_ROOT / "hparams" / f"{method}.yaml"
        if not method_file.is_file():
            method_file = _file_defining("hparams/*.yaml", "method", method)
        method_keys = set(_yaml_scalars(method_file)) if method_file else set()
        dataset_file = _file_defining("recipes/*/*.yaml", "dataset", dataset)
        for path in (method_file, dataset_file):
            if path is not None:
                defaults.update(_yaml_scalars(path))
        _DEFAULTS[(method, dataset)] = defaults, (method_keys | MODEL_KEYS) - NOT_OPTIONS
    return _DEFAULTS[(method, dataset)]


def _show(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def changed_options(run):
    """``(method options, other settings)`` that differ from the defaults, as ``key=value`` lists."""
    defaults, method_keys = default_options(run["method"], run["dataset"])
    method, other = [], []
    for key, value in sorted(run["options"].items()):
        if key in NOT_OPTIONS or key not in defaults or defaults[key] == value:
            continue
        (method if key in method_keys else other).append(f"{key}={_show(value)}")
    return method, other


def method_label(run):
    """``method`` plus its options that differ from the defaults, e.g. ``lora (reduction_rate=64)``."""
    changed = changed_options(run)[0]
    return f"{run['method']} ({', '.join(changed)})" if changed else run["method"]


def settings_label(run):
    """Other training settings that differ from the defaults (epochs, batch size, input length)."""
    return ", ".join(changed_options(run)[1])


def backbone_label(run):
    source = str(run.get("backbone_source") or "")
    name = Path(source.rstrip("/")).name if source else ""
    return f"{run['backbone']} ({name})" if name else str(run["backbone"])


# ==================================================================== aggregation
def summarise(runs):
    """One row per (method label, dataset, backbone): accuracy mean/std over folds and seeds."""
    groups = {}
    for run in runs:
        key = (method_label(run), settings_label(run), run["dataset"], backbone_label(run))
        groups.setdefault(key, []).append(run)
    rows = []
    for (label, settings, dataset, backbone), members in sorted(groups.items()):
        values = [a for run in members for a in run["test_accuracies"]]
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
            "test_accuracy_mean": mean,
            "test_accuracy_std": std,
            "trainable_params": trainable,
            "trainable_params_without_head": without_head,
            "trainable_percent": float(first.get("trainable_percent",
                                                 100.0 * trainable / max(1, first["total_params"]))),
            "trainable_percent_without_head": 100.0 * without_head / backbone_total,
            "total_params": first["total_params"],
        })
    return rows


def row_name(row):
    """The name of a group in tables and plots: method options, then other settings in []."""
    return row["method"] + (f" [{row['settings']}]" if row["settings"] else "")


def _count(n):
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def markdown_report(rows, skipped):
    """The report: a method x dataset table per backbone, every group in full, skipped files."""
    out = io.StringIO()
    out.write("# Results\n\n")
    if not rows:
        out.write("No usable results.json found.\n")
    datasets = sorted({r["dataset"] for r in rows})
    for backbone in sorted({r["backbone"] for r in rows}):
        mine = [r for r in rows if r["backbone"] == backbone]
        out.write(f"## Backbone: {backbone}\n\nTest accuracy (%), mean ± std over folds and seeds; "
                  "trainable parameters without the head (% of the backbone).\n\n")
        out.write("| method | trainable | " + " | ".join(datasets) + " |\n")
        out.write("|---|---:|" + "---:|" * len(datasets) + "\n")
        for label in sorted({row_name(r) for r in mine}):
            cells = {r["dataset"]: r for r in mine if row_name(r) == label}
            any_row = next(iter(cells.values()))
            params = (f"{_count(any_row['trainable_params_without_head'])} "
                      f"({any_row['trainable_percent_without_head']:.2f}%)")
            accs = [f"{100 * cells[d]['test_accuracy_mean']:.2f} ± {100 * cells[d]['test_accuracy_std']:.2f}"
                    if d in cells else "—" for d in datasets]
            out.write(f"| {label} | {params} | " + " | ".join(accs) + " |\n")
        out.write("\n")
    if rows:
        out.write("## All groups\n\n| method | other settings | dataset | backbone | runs | folds x seeds "
                  "| test accuracy (%) | trainable (with head) | trainable % |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---:|\n")
        for r in rows:
            out.write(f"| {r['method']} | {r['settings'] or '—'} | {r['dataset']} | {r['backbone']} | {r['runs']} | {r['values']} | "
                      f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
                      f"{r['trainable_params']:,} | {r['trainable_percent']:.4f} |\n")
        out.write("\n")
    if skipped:
        out.write(f"## Skipped ({len(skipped)} malformed or partial results.json)\n\n")
        for path, reason in skipped:
            out.write(f"- `{path}`: {reason}\n")
        out.write("\n")
    return out.getvalue()


CSV_FIELDS = ["method", "settings", "base_method", "dataset", "backbone", "runs", "values", "test_accuracy_mean",
              "test_accuracy_std", "trainable_params", "trainable_params_without_head",
              "trainable_percent", "trainable_percent_without_head", "total_params"]


def write_csv(rows, path):
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


MARKERS = "osD^v<>pP*Xh"


def plot(rows, path):
    """Accuracy (%) against trainable parameters without the head (log x): one panel per
    dataset, one marker per method, one colour per method variant; error bars are the std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["base_method"] for r in rows})
    labels = sorted({(row_name(r), r["backbone"]) for r in rows})
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == dataset):
            index = labels.index((row_name(r), r["backbone"]))
            name = row_name(r) if len({b for _, b in labels}) == 1 else f"{row_name(r)} {{{r['backbone']}}}"
            ax.errorbar(max(1, r["trainable_params_without_head"]), 100 * r["test_accuracy_mean"],
                        yerr=100 * r["test_accuracy_std"], fmt=MARKERS[methods.index(r["base_method"]) % len(MARKERS)],
                        color=colours(index % 20), markersize=8, capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_title(dataset)
        ax.set_xlabel("trainable parameters (without head)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="center left", fontsize="small",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside, right
    plt.close(fig)


# ==================================================================== command line
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.results",
        description="Table and plot of every results.json below the given run folders.",
    )
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="folders to search")
    parser.add_argument("--out", help="write the markdown report here (default: print it)")
    parser.add_argument("--csv", help="write one row per method x dataset x backbone here")
    parser.add_argument("--plot", help="write the accuracy-vs-parameters plot here (PNG, PDF, SVG)")
    args = parser.parse_args(argv)
    try:
        runs, skipped = collect(args.run_dirs)
    except FileNotFoundError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f"Skipped {path}: {reason}", file=sys.stderr)
    rows = summarise(runs)
    report = markdown_report(rows, skipped)
    if args.out:
        Path(args.out).write_text(report)
    else:
        print(report)
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot and rows:
        plot(rows, args.plot)
    print(f"{len(runs)} run(s) in {len(rows)} group(s); {len(skipped)} results.json skipped.",
          file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
