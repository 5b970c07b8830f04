"""The folds of a run and their results: which folds a command runs (``--fold``), the rotating
k-fold split of one manifest, and ``results.json`` from the finished folds' ``fold_result.json``."""

import json
import math
from pathlib import Path

from petl_modules.model.task import Task
from petl_modules.training.compose import ConfigError
from petl_modules.training.manifests import load_manifest
from petl_modules.training.run_folder import write_json_atomic


def fold_list(hparams):
    """The folds to run: ``[None]`` for datasets with official splits, else the chosen ones."""
    folds = hparams.get("folds")
    choice = hparams.get("fold", "all")
    if not folds:
        if str(choice) not in ("all", "None", "1"):
            raise ConfigError(
                f"--fold={choice}: {hparams['dataset']} has official splits, not folds; drop --fold."
            )
        return [None]
    folds = [int(f) for f in folds]
    if str(choice) == "all":
        return folds
    try:
        chosen = int(choice)
    except ValueError:
        chosen = None
    if chosen not in folds:
        raise ConfigError(
            f"--fold={choice} is out of range for {hparams['dataset']}: use 'all' or one of {folds}."
        )
    return [chosen]


def rotating_folds(folds, test_fold):
    """The split of a rotating k-fold protocol: ``test_fold`` tests, the fold before it validates.

    ``rotating_folds([1, 2, 3, 4, 5], 1)`` -> ``{"train": [2, 3, 4], "valid": [5], "test": [1]}``
    (ESC-50's reference rotation; UrbanSound8K uses the same to keep validation off the test fold).
    """
    folds = [int(f) for f in folds]
    test = int(test_fold)
    valid = folds[folds.index(test) - 1]
    return {"train": [f for f in folds if f not in (test, valid)], "valid": [valid], "test": [test]}


def rotating_fold_datasets(manifest, data_root, folds, fold):
    """``{"train", "valid", "test"}`` datasets of ``rotating_folds(folds, fold)``, filtered from
    one manifest with a ``fold`` column."""
    return {
        split: load_manifest(manifest, data_root, key_test={"fold": lambda f, s=chosen: int(f) in s})
        for split, chosen in rotating_folds(folds, fold).items()
    }


def aggregate_results(output_folder, header):
    """Combines the ``fold_result.json`` files below ``output_folder`` into ``results.json``."""
    output_folder = Path(output_folder)
    folds = []
    for path in sorted(output_folder.glob("**/fold_result.json")):
        with open(path) as stream:
            folds.append(json.load(stream))
    folds.sort(key=lambda r: (r["fold"] is not None, r["fold"] or 0))
    results = dict(header)
    results["folds"] = folds
    # The run's task's scores (accuracy; multi-label: mAP and F1), never another task's.
    task = Task.of_result(folds[0] if folds else {})
    main = task.test_key
    test = [r[main] for r in folds]
    if test:
        mean = sum(test) / len(test)
        results[f"{main}_mean"] = mean
        results[f"{main}_std"] = math.sqrt(sum((t - mean) ** 2 for t in test) / len(test))
    for key in (task.valid_key, *task.test_fields):
        values = [r.get(key) for r in folds]
        if values and all(isinstance(v, (int, float)) for v in values):
            results[key] = sum(values) / len(values)
    write_json_atomic(output_folder / "results.json", results)
    return results
