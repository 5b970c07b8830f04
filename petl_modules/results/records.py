"""Reading runs: every ``results.json`` below some folders, each checked against the schema of what
is read (``RUN_SCHEMA``, ``FOLD_SCHEMA``) before anything looks at it; a malformed or partial one
is skipped with the reason, never silently."""

import json
import logging
import os
from pathlib import Path

from petl_modules.model.task import TASKS
from petl_modules.results.checks import (
    MAX_RESULTS_BYTES,
    ResultsError,
    check_fold_id,
    check_fold_ids,
    check_name,
    check_optional_string,
    check_options,
    check_param_count,
    check_percent,
    describe,
    number_in,
)

logger = logging.getLogger(__name__)


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


# Every field this tool reads, with its check (petl_modules.results.checks); ``read_run`` applies
# them all before anything else looks at the file, so later code can trust the types.
# field -> (required, check)
RUN_SCHEMA = {
    "dataset": (True, check_name),
    "dataset_name": (False, check_name),  # the column (own data: the data folder's name); else dataset
    "method": (True, check_name),
    "backbone": (True, check_name),
    "model_type": (False, check_optional_string),
    "backbone_source": (False, check_optional_string),
    "total_params": (True, check_param_count),
    "trainable_params": (True, check_param_count),
    "trainable_params_without_head": (False, check_param_count),
    "trainable_percent": (False, check_percent),
    "requested_folds": (False, check_fold_ids),
    "folds": (True, None),  # checked with FOLD_SCHEMA
}


def _score_check(task):
    """The check of a task kind's main score: a number in its ``score_range``."""
    low, high = task.score_range
    meaning = "a fraction in [0, 1]" if (low, high) == (0, 1) else f"a number in [{low:g}, {high:g}]"
    return number_in(low, high, meaning)


# The main test score of each task kind (petl_modules.model.task): fold key -> the metric's name.
SCORES = {task.test_key: task.metric_name for task in TASKS.values()}
FOLD_SCHEMA = {
    "fold": (False, check_fold_id),
    # One of the task kinds' scores (check_run): accuracy (single-label), mAP (multi-label), ...
    **{task.test_key: (False, _score_check(task)) for task in TASKS.values()},
    "hparams": (False, check_options),
}
REQUIRED = tuple(key for key, (required, _) in RUN_SCHEMA.items() if required)
TASKS_BY_KEY = {task.test_key: task.kind for task in TASKS.values()}


def apply_schema(schema, record, where):
    missing = [key for key, (required, _) in schema.items() if required and key not in record]
    if missing:
        raise ResultsError(f"{where}missing field(s) {', '.join(missing)}")
    return {key: check(record[key], f"{where}{key}") for key, (_, check) in schema.items()
            if check is not None and key in record}


def check_run(run):
    """``run`` (a parsed results.json) checked against ``RUN_SCHEMA`` / ``FOLD_SCHEMA``: the
    checked fields, with ``folds`` a list of checked fold dicts. Raises ResultsError."""
    if not isinstance(run, dict):
        raise ResultsError(f"not a JSON object but {describe(run)}")
    checked = apply_schema(RUN_SCHEMA, run, "")
    folds = run["folds"]
    if not isinstance(folds, list):
        raise ResultsError(f"folds is {describe(folds)}, not a list of fold results")
    if not folds:
        raise ResultsError("no fold results ('folds' is empty): the run did not finish")
    checked["folds"] = []
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict):
            raise ResultsError(f"folds[{k}] is {describe(fold)}, not an object")
        checked["folds"].append(apply_schema(FOLD_SCHEMA, fold, f"folds[{k}]."))
        if not any(key in fold for key in SCORES):
            first, *others = SCORES
            raise ResultsError(f"folds[{k}].missing field(s) {first} (or "
                               + ", ".join(f"{key}, for a {TASKS_BY_KEY[key]} run" for key in others)
                               + ")")
    ids = [fold.get("fold") for fold in checked["folds"]]
    repeated = sorted({str(i) for i in ids if ids.count(i) > 1})
    if repeated:
        raise ResultsError(f"fold(s) {', '.join(repeated)} appear more than once in folds")
    return checked


def read_run(path):
    """A checked ``results.json``: the fields this tool reads (``check_run``), with
    ``metric`` (the run's task's: ``accuracy``, ``mAP``), ``test_scores`` (one per fold) and
    ``options`` (the first fold's hparams) added.

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
        raise ResultsError(f"folds mix {' and '.join(sorted(kinds))} "
                           f"({' and '.join(TASKS_BY_KEY[k] for k in sorted(kinds))})")
    key = kinds.pop()
    run["metric"] = SCORES[key]
    run["test_scores"] = [fold[key] for fold in run["folds"]]
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
