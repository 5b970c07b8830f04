"""Reading a sweep file: plain data (a safe loader; nothing in it is ever evaluated), every key and
value checked, each problem said with where it is and how to fix it."""

import difflib
import re
from pathlib import Path

import yaml

from petl_modules.paths import read_yaml_tree, recipes_folder
from petl_modules.training.arguments import as_argument, yaml_code


# Keys the sweep sets itself on every command line.
SWEEP_SET = {"data_folder", "output_folder", "seed", "fold"}
SWEEP_KEYS = {"description", "output_folder", "data_root", "recipes", "methods", "grid", "overrides",
              "seeds", "folds", "compare", "variants", "resources", "setup"}
ENTRY_KEYS = {"method", "name", "overrides", "grid"}
SETUP_KEYS = {"sbatch", "commands"}
# sbatch options the sweep sets itself (from resources, or for its job arrays): not in setup.sbatch.
SWEEP_SBATCH = {"array": None, "job-name": None, "output": None, "error": None, "signal": None,
                "open-mode": None, "wckey": None, "time": "time_min", "partition": "partition",
                "cpus-per-task": "cpus_per_run", "gpus-per-node": "gpus_per_run", "gres": "gres",
                "mem": "mem_gb", "account": "account", "qos": "qos", "constraint": "constraint",
                "nodes": None, "ntasks-per-node": None}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SweepError(ValueError):
    """A sweep file or option that cannot be run: one message per problem, each saying where and
    how to fix it."""

    def __init__(self, *messages):
        super().__init__("\n".join(messages))
        self.messages = list(messages)


def fail(where, message):
    raise SweepError(f"{where}: {message}")


def mapping(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(where, f"must be a mapping of 'key: value', not {type(value).__name__}")
    return dict(value)


def grid_of(value, where):
    grid = mapping(value, where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            fail(f"{where}.{key}", "a grid option takes a non-empty list of values")
    return grid


def dataset_yaml(recipe):
    """``recipes/<recipe>/<dataset>.yaml``: the recipe folder's yaml with a ``dataset`` key."""
    available = sorted(p.parent.name for p in recipes_folder().glob("*/train.py"))
    folder = recipes_folder() / recipe
    if not re.fullmatch(r"[A-Za-z0-9_-]+", recipe) or not (folder / "train.py").is_file():
        close = difflib.get_close_matches(recipe, available, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise SweepError(f"recipes: no recipe '{recipe}' (a recipe is a folder recipes/<name>/ with "
                         f"a train.py).{hint} Available: {', '.join(available)}.")
    for path in sorted(folder.glob("*.yaml")):
        if "dataset" in read_yaml_tree(path):
            return path
    raise SweepError(f"recipes/{recipe} has no dataset yaml (a .yaml file with a 'dataset' key).")


def check_keys(options, known, where):
    for key in options:
        if key in SWEEP_SET:
            fail(where, f"'{key}' is set by the sweep for every run (data folders come from "
                         "'recipes:' and 'data_root', output folders from 'output_folder', "
                         "seeds and folds from 'seeds:' and 'folds:'); remove it")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            fail(where, f"unknown option '{key}' (not a key of recipe.yaml, the method file or "
                         f"the dataset yaml, nor a SpeechBrain run option).{hint}")


def value_problem(value):
    """Why ``value`` cannot be a sweep option's value (None: it can). Sweep files are data: a
    string that YAML would read as a tag, anchor or alias (``!apply:...``, ``!ref <x>``, ``*x``)
    would be code in the recipe's configuration; a value must also survive a command line."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str) and yaml_code(item):
            return (f"{item!r} would be YAML code (a tag, anchor or alias) in the recipe's "
                    "configuration; sweep files are data: give a plain value")
    try:
        as_argument(value)
    except ValueError as err:
        return str(err)
    return None


def check_values(options, where, problems):
    for key, value in options.items():
        problem = value_problem(value)
        if problem:
            problems.append(f"{where}: {key}: {problem}.")


def check_path(path, where):
    if CONTROL.search(str(path)):
        raise SweepError(f"{where}: {str(path)!r} holds a line break or another control "
                         "character; give a plain path.")


def read_sweep_file(path):
    """The sweep file as plain data (``yaml.safe_load``), its top-level keys checked."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except FileNotFoundError:
        raise SweepError(f"Sweep file '{path}' not found (see sweeps/ for the papers' tables).") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid yaml (a sweep file is plain data, without tags): "
                         f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path} must be a mapping of 'key: value' lines (see docs/sweeps.md).")
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        close = {k: difflib.get_close_matches(k, SWEEP_KEYS, n=1) for k in unknown}
        hints = "; ".join(f"'{k}'" + (f" (did you mean '{c[0]}'?)" if c else "") for k, c in close.items())
        raise SweepError(f"{path}: unknown key(s) {hints}. Keys: {', '.join(sorted(SWEEP_KEYS))}.")
    for key in ("recipes", "methods"):
        if not data.get(key):
            raise SweepError(f"{path}: '{key}' is missing or empty (see docs/sweeps.md).")
    return data


def read_setup(value, where):
    """The sweep file's ``setup:`` (``{"sbatch": [...], "commands": [...]}``), checked: each an
    option ``--name[=value]`` sbatch takes (not one the sweep sets) or one shell line."""
    setup = mapping(value, f"{where}: setup")
    unknown = sorted(set(setup) - SETUP_KEYS)
    if unknown:
        raise SweepError(f"{where}: setup: unknown key(s) {', '.join(unknown)} (setup takes "
                         "'sbatch': extra sbatch options, and 'commands': shell lines run in each "
                         "Slurm job before the recipe).")
    problems = []
    for key in SETUP_KEYS:
        lines = setup.get(key) or []
        if isinstance(lines, str):
            lines = [lines]
        if not isinstance(lines, list) or not all(isinstance(x, str) and x.strip() for x in lines):
            problems.append(f"{where}: setup.{key} must be a list of text lines.")
            continue
        for line in lines:
            if CONTROL.search(line):
                problems.append(f"{where}: setup.{key}: {line!r} holds a line break or another "
                                "control character; give one line per list item.")
        setup[key] = list(lines)
    for option in setup.get("sbatch") or []:
        match = re.fullmatch(r"--([a-z][a-z0-9-]*)(=.+)?", option)
        if not match:
            problems.append(f"{where}: setup.sbatch: {option!r} is not an sbatch option "
                            "(--name or --name=value, e.g. --mail-type=END).")
        elif match.group(1) in SWEEP_SBATCH:
            key = SWEEP_SBATCH[match.group(1)]
            how = f"use resources.{key}" if key else "the sweep sets it for its job arrays"
            problems.append(f"{where}: setup.sbatch: {option}: {how}.")
    if problems:
        raise SweepError(*problems)
    return {k: setup.get(k) or [] for k in SETUP_KEYS}
