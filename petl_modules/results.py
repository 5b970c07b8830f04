"""Collecting runs into a results table and a score-vs-parameters plot.

Usage::

    python -m petl_modules.results RUN_DIR... [--out report.md] [--csv results.csv]
        [--plot accuracy_vs_params.png]

Every ``results.json`` below the given folders is read. Runs are grouped by method (with the
options that differ from the method's defaults: ``lora (lora_targets=Wq,Wk,Wv,Wo)``), dataset and
backbone; a group's test score is the mean +- population std over all its folds and seeds: the
accuracy of single-label runs, the mAP of multi-label ones (``test_map``; ``task: multilabel``), each
table cell naming which. Runs of the two kinds are never averaged together.
Trainable parameters are shown without the head (what the papers count; the same on every dataset)
and as a percentage of the backbone. A malformed or partial ``results.json`` (unreadable JSON, a
missing field, a fold without test accuracy, fewer folds than the run asked for) is listed and
skipped with a warning naming it, never silently; so is one with a field of the wrong type
(every field read is checked first: ``RUN_SCHEMA``, ``FOLD_SCHEMA``), so one bad folder never hides
the table.

A run is labelled by the options it recorded (its first fold's ``hparams``) that differ from the
defaults its own composition gives: ``petl_modules/training/recipe.yaml`` < ``hparams/<method>.yaml`` <
``recipes/<DATASET>/<dataset>.yaml``, with their ``family_defaults`` for the backbone family the run
recorded (``recipe.compose_hparams``). A default wav2vec2 run is thus not labelled by the epochs or
layers its family gets by default.
"""

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path

import ruamel.yaml

from petl_modules.files import csv_cell, csv_value
from petl_modules.paths import hparams_folder, project_root

logger = logging.getLogger(__name__)

# Options that never name a different model or training set-up (paths, plumbing, repetitions).
NOT_OPTIONS = {
    "seed", "fold", "folds", "method", "dataset", "dataset_name", "backbone_source", "data_folder",
    "output_folder", "experiment_folder", "save_folder", "train_log", "manifest_folder", "num_workers",
    "skip_bad_files", "n_classes", "class_names", "confusion_matrix", "manifest",
}


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


# ---------------------------------------------------------------- the schema of what is read
# Every field this tool reads, with its check. A check returns the value (possibly normalised)
# or raises ResultsError saying what is wrong; ``read_run`` applies them all before anything else
# looks at the file, so later code can trust the types.
MAX_COUNT = 2 ** 53  # parameter counts: whole numbers that a float holds exactly
MAX_RESULTS_BYTES = 64 * 2 ** 20  # larger files are skipped unread (never a 10 GB string)


def _kind(value):
    """``value`` as a user reads it in an error: its JSON type and (shortened) text."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    text = json.dumps(value, allow_nan=True, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def _name(value, what):
    if not isinstance(value, str) or not value.strip():
        raise ResultsError(f"{what} is {_kind(value)}, not a non-empty string")
    return value


def _optional_string(value, what):
    if value is not None and not isinstance(value, str):
        raise ResultsError(f"{what} is {_kind(value)}, not a string")
    return value


def _param_count(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ResultsError(f"{what} is {_kind(value)}, not a parameter count (a whole number >= 0)")
    return value


def _number_in(low, high, meaning):
    def check(value, what):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not low <= value <= high):
            raise ResultsError(f"{what} is {_kind(value)}, not {meaning}")
        return float(value)
    return check


_accuracy = _number_in(0, 1, "a fraction in [0, 1]")
_percent = _number_in(0, math.inf, "a percentage (a number >= 0)")


def _fold_id(value, what):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ResultsError(f"{what} is {_kind(value)}, not a fold number (or null)")
    return value


def _fold_ids(value, what):
    if not isinstance(value, list):
        raise ResultsError(f"{what} is {_kind(value)}, not a list of fold numbers")
    return [_fold_id(v, f"{what}[{k}]") for k, v in enumerate(value)]


_PLAIN = (str, int, float, bool, type(None))


def _options(value, what):
    """A fold's ``hparams``: option name -> a plain value or a list of plain values."""
    if not isinstance(value, dict):
        raise ResultsError(f"{what} is {_kind(value)}, not an object of options")
    for key, option in value.items():
        if isinstance(option, list):
            bad = [v for v in option if not isinstance(v, _PLAIN) or v is None]
        else:
            bad = [] if isinstance(option, _PLAIN) else [option]
        if bad:
            raise ResultsError(f"{what}.{key} is {_kind(option)}, not a plain value "
                               "(string, number, boolean, null or a list of them)")
    return value


# field -> (required, check)
RUN_SCHEMA = {
    "dataset": (True, _name),
    "dataset_name": (False, _name),  # the column (own data: the data folder's name); else dataset
    "method": (True, _name),
    "backbone": (True, _name),
    "model_type": (False, _optional_string),
    "backbone_source": (False, _optional_string),
    "total_params": (True, _param_count),
    "trainable_params": (True, _param_count),
    "trainable_params_without_head": (False, _param_count),
    "trainable_percent": (False, _percent),
    "requested_folds": (False, _fold_ids),
    "folds": (True, None),  # checked with FOLD_SCHEMA
}
FOLD_SCHEMA = {
    "fold": (False, _fold_id),
    # One of the two scores (check_run): accuracy (single-label) or mAP (multi-label).
    "test_accuracy": (False, _accuracy),
    "test_map": (False, _accuracy),
    "hparams": (False, _options),
}
REQUIRED = tuple(key for key, (required, _) in RUN_SCHEMA.items() if required)
SCORES = {"test_accuracy": "accuracy", "test_map": "mAP"}  # fold key -> the metric's name


def _apply(schema, record, where):
    missing = [key for key, (required, _) in schema.items() if required and key not in record]
    if missing:
        raise ResultsError(f"{where}missing field(s) {', '.join(missing)}")
    return {key: check(record[key], f"{where}{key}") for key, (_, check) in schema.items()
            if check is not None and key in record}


def check_run(run):
    """``run`` (a parsed results.json) checked against ``RUN_SCHEMA`` / ``FOLD_SCHEMA``: the
    checked fields, with ``folds`` a list of checked fold dicts. Raises ResultsError."""
    if not isinstance(run, dict):
        raise ResultsError(f"not a JSON object but {_kind(run)}")
    checked = _apply(RUN_SCHEMA, run, "")
    folds = run["folds"]
    if not isinstance(folds, list):
        raise ResultsError(f"folds is {_kind(folds)}, not a list of fold results")
    if not folds:
        raise ResultsError("no fold results ('folds' is empty): the run did not finish")
    checked["folds"] = []
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict):
            raise ResultsError(f"folds[{k}] is {_kind(fold)}, not an object")
        checked["folds"].append(_apply(FOLD_SCHEMA, fold, f"folds[{k}]."))
        if not any(key in fold for key in SCORES):
            raise ResultsError(f"folds[{k}].missing field(s) test_accuracy (or test_map, for a "
                               "multi-label run)")
    ids = [fold.get("fold") for fold in checked["folds"]]
    repeated = sorted({str(i) for i in ids if ids.count(i) > 1})
    if repeated:
        raise ResultsError(f"fold(s) {', '.join(repeated)} appear more than once in folds")
    return checked


def read_run(path):
    """A checked ``results.json``: the fields this tool reads (``check_run``), with
    ``metric`` (``accuracy`` or ``mAP``), ``test_scores`` (one per fold; for accuracy runs also
    as ``test_accuracies``) and ``options`` (the first fold's hparams) added.

    Raises
    ------
    ResultsError
        Malformed (not JSON, a missing field, a value of the wrong type or range) or partial
        (fewer folds than the run asked for).
    """
    try:
        if not os.path.isfile(path):  # a FIFO or a device, which reading would block on
            raise ResultsError("not a regular file")
        if os.path.getsize(path) > MAX_RESULTS_BYTES:
            raise ResultsError(f"too large ({os.path.getsize(path):,} bytes; a results.json is a "
                               f"few KB, at most {MAX_RESULTS_BYTES:,} are read)")
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError) as err:
        raise ResultsError(f"not readable as JSON ({err})") from None
    except RecursionError:
        raise ResultsError("not readable as JSON (nested too deeply)") from None
    run = check_run(data)
    requested = run.get("requested_folds") or []
    done = {fold.get("fold") for fold in run["folds"]}
    missing = [f for f in requested if f not in done]
    if missing:
        raise ResultsError(f"partial: {len(requested) - len(missing)} of {len(requested)} folds ran "
                           f"(missing {', '.join(map(str, missing))})")
    kinds = {next(key for key in SCORES if key in fold) for fold in run["folds"]}
    if len(kinds) > 1:
        raise ResultsError("folds mix test_accuracy and test_map (single- and multi-label)")
    key = kinds.pop()
    run["metric"] = SCORES[key]
    run["test_scores"] = [fold[key] for fold in run["folds"]]
    if key == "test_accuracy":
        run["test_accuracies"] = run["test_scores"]
    run["options"] = run["folds"][0].get("hparams") or {}
    return run


def collect(run_dirs, warn=logger.warning):
    """``(runs, skipped)``: the usable runs, and ``[(path, reason)]`` of the skipped files, each
    also given to ``warn`` (default: a logged warning) as ``Skipped <path>: <what is wrong>``."""
    runs, skipped = [], []
    for path in find_results(run_dirs):
        try:
            run = read_run(path)
        except ResultsError as err:
            skipped.append((str(path), str(err)))
            warn(f"Skipped {path}: {err}")
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
    except (TypeError, ValueError):
        return None


def _yaml_tree(path):
    try:
        with open(path) as stream:
            tree = ruamel.yaml.YAML().load(stream)
    except (OSError, ruamel.yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def _file_defining(folder_glob, key, value):
    """The first repository yaml file matching ``folder_glob`` whose ``key`` is ``value``."""
    for path in sorted(project_root().glob(folder_glob)):
        if _plain(_yaml_tree(path).get(key)) == value:
            return path
    return None


def _method_file(method):
    plain_name = method.replace("_", "").replace("-", "").isalnum()  # no path tricks
    path = hparams_folder() / f"{method}.yaml"
    if plain_name and path.is_file():
        return path
    return _file_defining("hparams/*.yaml", "method", method)


def compose_defaults(method_file, dataset_file, family):
    """The yaml text a run of ``method_file`` on ``dataset_file`` composes without command-line
    options, for a backbone of ``family`` (``ast``, ``wav2vec2``): ``recipe.compose_hparams``
    with the family the run recorded, instead of the one of a ``backbone_source`` that need not
    exist here (so the method's and dataset's ``family_defaults`` apply as in the run)."""

    from petl_modules.training import compose  # imports torch: only when a table is made

    # data_folder is a !PLACEHOLDER that compose_hparams insists on; it is no option.
    return compose.compose_hparams(method_file, dataset_file, {"data_folder": "unused"}, family=family)


_DEFAULTS = {}
_WARNED = set()

# recipe.yaml keys that change the model itself, shown with the method's own options.
MODEL_KEYS = {"pooling", "position_embeddings"}


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def default_options(method, dataset, family):
    """``(defaults, method_keys)``: the plain option values a run of ``method`` on ``dataset``
    with a ``family`` backbone gets without command-line options (its composition, per-family
    defaults included), and the names of the method's own options (its config class's).

    Keys whose composed value is derived (``!ref``) or an object are not options: they are left
    out, so a run is never labelled by them (what they derive from is)."""
    key = (method, dataset, family)
    if key not in _DEFAULTS:
        defaults, method_keys = {}, set()
        method_file = _method_file(method)
        dataset_file = _file_defining("recipes/*/*.yaml", "dataset", dataset)
        if method_file is None:
            _warn_once(f"No method file in {hparams_folder()} says 'method: {method}': "
                       f"runs of '{method}' are grouped without their options.")
        else:
            if dataset_file is None:
                _warn_once(f"No recipe yaml says 'dataset: {dataset}': options of runs on "
                           f"'{dataset}' are compared with the method's defaults only.")
            try:
                text = compose_defaults(method_file, dataset_file or os.devnull, family)
            except (ValueError, OSError, ruamel.yaml.YAMLError) as err:  # ConfigError is a ValueError
                _warn_once(f"Cannot compose the defaults of '{method}' on '{dataset}' ({family}): "
                           f"{err}. Its runs are grouped without their options.")
            else:
                tree = ruamel.yaml.YAML().load(text) or {}
                defaults = {k: v for k, v in ((k, _plain(v)) for k, v in tree.items())
                            if v is not None or tree[k] is None}
                method_keys = method_options(method)
        _DEFAULTS[key] = defaults, (method_keys | MODEL_KEYS) - NOT_OPTIONS
    return _DEFAULTS[key]


def method_options(method):
    """The names of ``method``'s own options: its config class's fields (``petl_modules.methods``)."""
    from petl_modules.methods import METHODS  # imports torch: only when a table is made

    return set(METHODS[method].options()) if method in METHODS else set()


def _show(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def changed_options(run):
    """``(method options, other settings)`` the run recorded with a value other than the one its
    own composition gives by default, as ``key=value`` lists."""
    defaults, method_keys = default_options(run["method"], run["dataset"], run["backbone"])
    method, other = [], []
    for key, value in sorted(run["options"].items()):
        if key in NOT_OPTIONS or key not in defaults or _same(defaults[key], value):
            continue
        (method if key in method_keys else other).append(f"{key}={_show(value)}")
    return method, other


def _same(default, value):
    """Equal as options: 50 and 50.0 are, True and 1 are not."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value) and default == value
    return default == value


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


def _md(text):
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
        out.write(f"## Backbone: {_md(backbone)}\n\nTest accuracy (%; multi-label runs: mAP (%), "
                  "marked mAP), mean ± std over folds and seeds; trainable parameters without the "
                  "head (% of the backbone).\n\n")
        out.write("| method | trainable | " + " | ".join(map(_md, datasets)) + " |\n")
        out.write("|---|---:|" + "---:|" * len(datasets) + "\n")
        for label, metric in sorted({(row_name(r), r["metric"]) for r in mine}):
            cells = {r["dataset"]: r for r in mine if row_name(r) == label and r["metric"] == metric}
            any_row = next(iter(cells.values()))
            params = (f"{_count(any_row['trainable_params_without_head'])} "
                      f"({any_row['trainable_percent_without_head']:.2f}%)")
            accs = [score_text(cells[d]) if d in cells else "—" for d in datasets]
            out.write(f"| {_md(label)} | {params} | " + " | ".join(accs) + " |\n")
        out.write("\n")
    if rows:
        out.write("## All groups\n\n| method | other settings | dataset | backbone | runs | folds x seeds "
                  "| test score (%) | trainable (with head) | trainable % |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---:|\n")
        for r in rows:
            out.write(f"| {_md(r['method'])} | {_md(r['settings'] or '—')} | {_md(r['dataset'])} | "
                      f"{_md(r['backbone'])} | {r['runs']} | {r['values']} | "
                      f"{score_text(r)} | "
                      f"{r['trainable_params']:,} | {r['trainable_percent']:.4f} |\n")
        out.write("\n")
    if skipped:
        out.write(f"## Skipped ({len(skipped)} malformed or partial results.json)\n\n")
        for path, reason in skipped:
            out.write(f"- `{_md(path)}`: {_md(reason)}\n")
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


MARKERS = "osD^v<>pP*Xh"


def plot(rows, path, published=()):
    """Accuracy (%) against trainable parameters without the head (log x): one panel per
    dataset, one marker per method, one colour per method variant; error bars are the std.
    ``published``: papers' numbers (``compare_published`` entries with a value), drawn as black
    bars at our runs' parameter counts."""
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
            name = name.replace("$", r"\$")  # no mathtext from a results.json
            ax.errorbar(max(1, r["trainable_params_without_head"]), 100 * r["test_mean"],
                        yerr=100 * r["test_std"], fmt=MARKERS[methods.index(r["base_method"]) % len(MARKERS)],
                        color=colours(index % 20), markersize=8, capsize=3, label=name)
        for point in (p for p in published if p["dataset"] == dataset and p.get("params")):
            ax.plot(max(1, point["params"]), point["paper"], "k_", markersize=16, mew=2,
                    label="published (paper)")
        ax.set_xscale("log")
        ax.set_title(dataset.replace("$", r"\$"))
        ax.set_xlabel("trainable parameters (without head)")
        metrics = sorted({r["metric"] for r in rows if r["dataset"] == dataset})
        ax.set_ylabel(f"test {' / '.join(metrics)} (%)")
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


# ==================================================================== published numbers
# sweeps/published.json: the papers' tables, as plain JSON data (see docs/sweeps.md). A row names
# the runs it stands for (method, backbone family and the options that define it); a value is the
# paper's number for one dataset, or null where it could not be read from the paper.
def published_file():
    """``<repository>/sweeps/published.json``."""
    return project_root() / "sweeps" / "published.json"


def _published_row(row, where):
    if not isinstance(row, dict):
        raise ResultsError(f"{where} is {_kind(row)}, not an object")
    _name(row.get("label"), f"{where}.label")
    _name(row.get("method"), f"{where}.method")
    _name(row.get("backbone"), f"{where}.backbone")
    _options(row.get("options", {}), f"{where}.options")
    values = row.get("values")
    if not isinstance(values, dict):
        raise ResultsError(f"{where}.values is {_kind(values)}, not an object (dataset -> number or null)")
    for dataset, value in values.items():
        if value is not None:
            _number_in(-math.inf, math.inf, "a number or null")(value, f"{where}.values.{dataset}")
    return row


def load_published(path=None):
    """The published tables (``{"sources": ..., "tables": {name: table}}``), every field read
    checked (types, not values' truth). Raises ResultsError naming the field."""
    path = Path(path or published_file())
    try:
        if os.path.getsize(path) > MAX_RESULTS_BYTES:
            raise ResultsError("too large")
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError, RecursionError) as err:
        raise ResultsError(f"{path}: not readable as JSON ({err})") from None
    try:
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) \
                or not isinstance(data.get("sources"), dict):
            raise ResultsError("must be an object with 'sources' and 'tables' objects")
        for name, table in data["tables"].items():
            where = f"tables.{name}"
            if not isinstance(table, dict):
                raise ResultsError(f"{where} is {_kind(table)}, not an object")
            if table.get("source") not in data["sources"]:
                raise ResultsError(f"{where}.source {_kind(table.get('source'))} is not one of sources")
            _name(table.get("metric"), f"{where}.metric")
            _number_in(0, math.inf, "a positive number")(table.get("scale", 1), f"{where}.scale")
            if not isinstance(table.get("rows"), list):
                raise ResultsError(f"{where}.rows is {_kind(table.get('rows'))}, not a list")
            for k, row in enumerate(table["rows"]):
                _published_row(row, f"{where}.rows[{k}]")
    except ResultsError as err:
        raise ResultsError(f"{path}: {err}") from None
    return data


_MISSING = object()


def matches_published(run, row):
    """True when ``run`` is one of the runs the published ``row`` stands for: same method and
    backbone family, and every option the row names recorded with the row's value."""
    if run["method"] != row["method"] or run["backbone"] != row["backbone"]:
        return False
    options = run["options"]
    return all(_same(value, options.get(key, _MISSING)) for key, value in row.get("options", {}).items())


def metric_values(runs, metric):
    """Every fold's ``metric`` of ``runs`` (folds without it are left out)."""
    return [fold[metric] for run in runs for fold in run["folds"] if fold.get(metric) is not None]


def compare_published(published, table_name, runs):
    """One dict per (published row, dataset): the paper's value, ours (mean and population std
    over every fold and seed of the matching runs, in the paper's unit: ``scale``), their
    difference (ours - paper), and how many runs and values. Raises ResultsError for an unknown
    table."""
    tables = published["tables"]
    if table_name not in tables:
        raise ResultsError(f"no table '{table_name}' in the published numbers "
                           f"(tables: {', '.join(tables)})")
    table = tables[table_name]
    scale = float(table.get("scale", 1))
    out = []
    for row in table["rows"]:
        mine = [run for run in runs if matches_published(run, row)]
        for dataset, paper in row["values"].items():
            members = [run for run in mine if run["dataset"] == dataset]
            values = [scale * v for v in metric_values(members, table["metric"])]
            mean = std = None
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            out.append({
                "label": row["label"], "dataset": dataset, "paper": paper, "mean": mean, "std": std,
                "params": members[0].get("trainable_params_without_head", members[0]["trainable_params"])
                if members else None,
                "difference": None if mean is None or paper is None else mean - paper,
                "runs": len(members), "values": len(values),
            })
    return out


def published_markdown(published, table_name, runs):
    """A markdown section: the published table beside ours, with the difference."""
    comparison = compare_published(published, table_name, runs)
    table = published["tables"][table_name]
    source = published["sources"][table["source"]]
    unit = " (%)" if float(table.get("scale", 1)) == 100 else ""
    out = io.StringIO()
    out.write(f"## Published: {_md(table.get('title', table_name))}\n\n"
              f"Source: {_md(source.get('citation', table['source']))} ({_md(source.get('url', ''))}). "
              f"{_md(table['metric'])}{unit}: paper, ours (mean ± std over folds and seeds), "
              "difference (ours − paper); '—' where there is no number.")
    if table.get("note"):
        out.write(f" {_md(table['note'])}")
    out.write("\n\n| row | dataset | paper | ours | difference | runs | folds x seeds |\n"
              "|---|---|---:|---:|---:|---:|---:|\n")
    for c in comparison:
        paper = "—" if c["paper"] is None else f"{c['paper']:.2f}"
        ours = "—" if c["mean"] is None else f"{c['mean']:.2f} ± {c['std']:.2f}"
        diff = "—" if c["difference"] is None else f"{c['difference']:+.2f}"
        out.write(f"| {_md(c['label'])} | {_md(c['dataset'])} | {paper} | {ours} | {diff} | "
                  f"{c['runs']} | {c['values']} |\n")
    out.write("\n")
    return out.getvalue()


# ==================================================================== command line
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.results",
        description="Table and plot of every results.json below the given run folders.",
    )
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="folders to search")
    parser.add_argument("--out", help="write the markdown report here (default: print it)")
    parser.add_argument("--csv", help="write one row per method x dataset x backbone here")
    parser.add_argument("--plot", help="write the score-vs-parameters plot here (PNG, PDF, SVG): "
                                       "accuracy, or mAP for multi-label runs")
    parser.add_argument("--compare", action="append", default=[], metavar="TABLE",
                        help="add a published table of sweeps/published.json beside ours (repeatable)")
    args = parser.parse_args(argv)
    try:
        runs, skipped = collect(args.run_dirs, warn=lambda message: print(message, file=sys.stderr))
    except FileNotFoundError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    rows = summarise(runs)
    report = markdown_report(rows, skipped)
    try:
        published = load_published() if args.compare else None
        for table in args.compare:
            report += published_markdown(published, table, runs)
    except ResultsError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
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
