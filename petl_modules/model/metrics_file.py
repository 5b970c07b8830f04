"""``metrics.json`` of a PETL model folder: how the run that wrote it scored, and how it was run.

Written by ``Run.finish_fold`` beside ``petl_config.json`` once the fold is tested (the folder
holds the best validation checkpoint's weights, which the test used). Optional: folders written
before it existed, or by hand, load without it. Like the config it is data (JSON, at most 1 MiB,
checked against ``METRICS_SCHEMA``); the model card (``petl_modules.sharing.model_card``) reads it::

    {"format_version": 1, "dataset": "FSC", "fold": null, "test_accuracy": 0.991,
     "test_loss": 0.04, "valid_accuracy": 0.995, "best_epoch": 7,
     "command": "python recipes/FSC/train.py hparams/lora.yaml --data_folder=..."}
"""

import shlex
import sys
from pathlib import Path

from petl_modules.files import read_json, schema_problems, write_json_atomic
from petl_modules.model.bases import is_local_path, shareable_name

METRICS_FILE = "metrics.json"
METRICS_VERSION = 1
MAX_METRICS_BYTES = 2 ** 20
NUMBER = (int, float, type(None))
METRICS_SCHEMA = {
    # key: (allowed JSON types, required)
    "format_version": ((int,), True),
    "dataset": ((str, type(None)), False),
    "fold": ((int, str, type(None)), False),
    "test_accuracy": (NUMBER, False),
    "test_loss": (NUMBER, False),
    "valid_accuracy": (NUMBER, False),
    "test_f1_macro": (NUMBER, False),
    # multi-label runs (no accuracy): mAP and F1 at the thresholds chosen on validation
    "test_map": (NUMBER, False),
    "valid_map": (NUMBER, False),
    "test_f1_micro": (NUMBER, False),
    "best_epoch": ((int, type(None)), False),
    "command": ((str, type(None)), False),
}


class MetricsError(ValueError):
    """A ``metrics.json`` that is not what PETL-AST writes."""


def run_command(argv=None, root=None):
    """The command line of this process as a user would type it (``python script args...``),
    without the paths of this machine (``shareable_argument``): the file is shared with the model."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join(["python", *(shareable_argument(a, root) for a in argv)])


def shareable_argument(argument, root=None):
    """``argument`` of a command line without a path of this machine: a path inside the folder
    ``root`` (the project's, given by the recipes) relative to it (``recipes/FSC/train.py``),
    another one by its last part after ``.../`` (``--data_folder=.../fluent_speech_commands_dataset``);
    anything else unchanged."""
    key, equals, value = argument.partition("=") if argument.startswith("-") else ("", "", argument)
    if not is_local_path(value):
        return argument
    path = Path(value).expanduser()
    try:
        if root is None:
            raise ValueError("no project folder given")
        shown = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        shown = f".../{shareable_name(value)}"
    return f"{key}{equals}{shown}"


def write_metrics(folder, result, dataset=None, command=None):
    """Writes ``folder/metrics.json`` from a fold's result (``Run.finish_fold``)."""
    scores = ("test_accuracy", "valid_accuracy", "test_map", "valid_map", "test_f1_micro",
              "test_f1_macro")  # those of the run's task (single- or multi-label)
    metrics = {
        "format_version": METRICS_VERSION,
        "dataset": dataset,
        "fold": result.get("fold"),
        **{key: _number(result[key]) for key in scores if key in result},
        "test_loss": _number(result.get("test_loss")),
        "best_epoch": result.get("best_epoch"),
        "command": command if command is not None else run_command(),
    }
    validate_metrics(metrics, folder)
    write_json_atomic(Path(folder) / METRICS_FILE, metrics)
    return metrics


def _number(value):
    """A plain float (numpy/torch scalars included), or None."""
    return None if value is None else float(value)


def validate_metrics(metrics, path):
    """Raises ``MetricsError`` naming every key of ``metrics`` that the schema does not allow."""
    if not isinstance(metrics, dict):
        raise MetricsError(f"{path}: expected a JSON object, found {type(metrics).__name__}.")
    problems = schema_problems(metrics, METRICS_SCHEMA)
    version = metrics.get("format_version")
    if isinstance(version, int) and version > METRICS_VERSION:
        problems.append(f"format_version {version} is newer than this version reads "
                        f"({METRICS_VERSION}): update PETL-AST")
    if problems:
        raise MetricsError(f"{path} is not a valid {METRICS_FILE}: " + "; ".join(problems) + ".")
    return metrics


def read_metrics(folder):
    """The checked ``metrics.json`` of a PETL model folder, or None when it has none.

    Raises
    ------
    MetricsError
        The file is too large, not JSON, or not what PETL-AST writes.
    """
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    return validate_metrics(read_json(path, f"a {METRICS_FILE}", MetricsError, MAX_METRICS_BYTES), path)
