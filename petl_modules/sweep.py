"""Many recipe runs from one sweep file: the papers' tables in one command, locally or on Slurm.

Usage (from the repository root)::

    python -m petl_modules.sweep sweeps/<name>.yaml [--launcher=local|slurm] [--dry_run]
        [--variant=reference] [--data_root=/data] [--output_folder=...] [--set key=value ...]
        [--max_parallel=N] [--partition=P] [--gpus_per_run=1] [--gpu_type=T] [--gres=G]
        [--cpus_per_run=8] [--time_min=1440] [--array_parallelism=64] [--mem_gb=G]
        [--account=A] [--qos=Q] [--constraint=C] [--no_wait] [--poll_s=S]

A sweep file (yaml, read with a safe loader: plain data, and nothing in it is ever evaluated)
names recipes with their data folders, method entries (a method file, options, a grid of
options), seeds and folds; every combination is one run: the ordinary recipe command ``python
recipes/<D>/train.py hparams/<method>.yaml --key=value ...`` with its own output folder named from
its settings, ``<output_folder>/<D>/<entry>/<options or default>/seed<s>[/fold<k>]``. Option
values are plain data: a value that YAML would read as a tag, anchor or alias (code, for
HyperPyYAML) is refused, and every value is written so that the recipe reads it back exactly
(``petl_modules.training.arguments``). The one place a sweep file asks for commands is its
``setup:`` key (extra sbatch options, shell lines run in each Slurm job before the recipe), shown
in full by ``--dry_run`` and at submission.

Runs go through submitit (``petl_modules.training.launch``): local processes, at most
``max_parallel`` at once (one GPU each when there are GPUs), or Slurm job arrays (as many as the
cluster's ``MaxArraySize`` needs), checked first against the partition (``scontrol``: CPUs,
memory, MaxTime, GPUs). Rerunning the command skips finished runs (a readable ``results.json``,
read with the results tool), follows runs whose job is queued or running (``squeue``) or whose
lock a live process holds, and resumes the others from their checkpoints. A requeued job (time
limit, ``scontrol requeue``, preemption) is followed to its end. A failed run never stops the
others; failures are listed with their cause and log. When every run has ended, the results
table, CSV and plot are written to the output folder, with the papers' numbers beside ours
(``compare:``, tables of ``sweeps/published.json``). See docs/sweeps.md for the file format.
"""

import argparse
import difflib
import itertools
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from petl_modules import results as results_tool
from petl_modules.paths import hparams_folder, project_root, recipes_folder
from petl_modules.training import launch, slurm
from petl_modules.training.arguments import (
    CommandLineError,
    as_argument,
    parse_run_options,
    read_value,
    run_option_names,
    split_arguments,
    yaml_code,
)
from petl_modules.files import write_json_atomic
from petl_modules.training.run_folder import lock_holder

COMMON_YAML = Path(__file__).resolve().parent / "training" / "recipe.yaml"
STATE_FOLDER = ".sweep"  # inside the sweep's output folder: submitit logs, Slurm job ids
JOBS_FILE = "jobs.json"

# Keys the sweep sets itself on every command line.
SWEEP_SET = {"data_folder", "output_folder", "seed", "fold"}
SWEEP_KEYS = {"description", "output_folder", "data_root", "recipes", "methods", "grid", "overrides",
              "seeds", "folds", "compare", "variants", "resources", "setup"}
ENTRY_KEYS = {"method", "name", "overrides", "grid"}
SETUP_KEYS = {"sbatch", "commands"}
DEFAULT_RESOURCES = {
    "max_parallel": None,  # local: runs at once (default: one per GPU, 1 without GPUs)
    "gpus_per_run": None,  # default: local, 1 when GPUs are visible; Slurm, 1 on a GPU partition
    "gpu_type": None,  # Slurm: --gpus-per-node=<type>:<gpus_per_run>
    "gres": None,  # Slurm: --gres as given (e.g. gpu:a100:2) instead of --gpus-per-node
    "cpus_per_run": 8,
    "time_min": 1440,  # per run (Slurm time limit; a run that reaches it is requeued and resumes)
    "array_parallelism": 64,  # Slurm: array tasks running at once (per array)
    "partition": None, "mem_gb": None, "account": None, "qos": None, "constraint": None,
}
NUMBERS = {"max_parallel": 1, "gpus_per_run": 0, "cpus_per_run": 1, "time_min": 1,
           "array_parallelism": 1, "mem_gb": 1}  # whole numbers, at least this
NAMES = {  # Slurm names: what sbatch accepts, and nothing a shell would read
    "partition": r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*",
    "account": r"[A-Za-z0-9._-]+",
    "qos": r"[A-Za-z0-9._-]+",
    "constraint": r"[A-Za-z0-9._:&|,*\[\]()-]+",
    "gpu_type": r"[A-Za-z0-9._-]+",
    "gres": r"[A-Za-z0-9_]+(:[A-Za-z0-9._-]+)?(:\d+)?(,[A-Za-z0-9_]+(:[A-Za-z0-9._-]+)?(:\d+)?)*",
}
# sbatch options the sweep sets itself (from resources, or for its job arrays): not in setup.sbatch.
SWEEP_SBATCH = {"array": None, "job-name": None, "output": None, "error": None, "signal": None,
                "open-mode": None, "wckey": None, "time": "time_min", "partition": "partition",
                "cpus-per-task": "cpus_per_run", "gpus-per-node": "gpus_per_run", "gres": "gres",
                "mem": "mem_gb", "account": "account", "qos": "qos", "constraint": "constraint",
                "nodes": None, "ntasks-per-node": None}
STATES = ("done", "running", "queued", "failed", "pending")
POLL_S = {"local": 2.0, "slurm": 60.0}  # seconds between state checks (--poll_s)
SACCT_POLLS = 5  # polls to wait for sacct to record the end of a job that left the queue
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SweepError(ValueError):
    """A sweep file or option that cannot be run: one message per problem, each saying where and
    how to fix it."""

    def __init__(self, *messages):
        super().__init__("\n".join(messages))
        self.messages = list(messages)


@dataclass
class PlannedRun:
    """One recipe command of a sweep."""

    name: str  # its folder below the sweep's output folder
    recipe: str
    method: str
    options: dict  # every --key=value but data_folder, output_folder, seed, fold
    seed: int
    fold: object  # None (official splits), a fold number, or "all"
    folder: Path
    data_folder: Path
    gpus: int = 0  # set by the launcher: > 1 runs the recipe through torchrun


# ==================================================================== the sweep file
def _fail(where, message):
    raise SweepError(f"{where}: {message}")


def _mapping(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping of 'key: value', not {type(value).__name__}")
    return dict(value)


def _grid(value, where):
    grid = _mapping(value, where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(f"{where}.{key}", "a grid option takes a non-empty list of values")
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
        if "dataset" in results_tool._yaml_tree(path):
            return path
    raise SweepError(f"recipes/{recipe} has no dataset yaml (a .yaml file with a 'dataset' key).")


def _format(value):
    """A value as it appears in a run's folder name (``key=value``; lists ``[a, b]``)."""
    if isinstance(value, bool):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _slug(options):
    """A folder name from ``options``: ``key=value,key=value`` (``default`` when empty)."""
    if not options:
        return "default"
    text = ",".join(f"{k}={_format(v)}" for k, v in options.items())
    text = re.sub(r"[^A-Za-z0-9._,=+-]", "-", text)
    if len(text) > 120:  # file systems limit a name to 255 bytes
        import hashlib

        text = text[:100] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return text


def _check_keys(options, known, where):
    for key in options:
        if key in SWEEP_SET:
            _fail(where, f"'{key}' is set by the sweep for every run (data folders come from "
                         "'recipes:' and 'data_root', output folders from 'output_folder', "
                         "seeds and folds from 'seeds:' and 'folds:'); remove it")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            _fail(where, f"unknown option '{key}' (not a key of recipe.yaml, the method file or "
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


def _check_values(options, where, problems):
    for key, value in options.items():
        problem = value_problem(value)
        if problem:
            problems.append(f"{where}: {key}: {problem}.")


def _check_path(path, where):
    if _CONTROL.search(str(path)):
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
    setup = _mapping(value, f"{where}: setup")
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
            if _CONTROL.search(line):
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


def plan(path, variant=None, data_root=None, output_folder=None, extra=None):
    """Every run of the sweep file ``path`` (``PlannedRun``), checked before anything runs.

    Arguments
    ---------
    path : str or Path
        The sweep file.
    variant : str, optional
        A name under the file's ``variants:``: its overrides apply to every run whose
        configuration has the key (e.g. ``init`` only for methods that have it); its runs go to
        ``<output_folder>-<variant>``.
    data_root, output_folder : str, optional
        Replace the file's ``data_root`` / ``output_folder``.
    extra : dict, optional
        ``--set key=value`` options for every run (not part of the folder names).

    Returns
    -------
    (runs, sweep) : the runs and the file's data (with ``root``: the output folder used, and
    ``setup``: its checked ``setup:``).

    Raises
    ------
    SweepError
        With one message per problem found (values that are not plain data are all listed).
    """
    path = Path(path)
    sweep = read_sweep_file(path)
    where = str(path)
    root = Path(output_folder or sweep.get("output_folder") or f"results/sweeps/{path.stem}")
    variants = _mapping(sweep.get("variants"), f"{where}: variants")
    variant_options = {}
    if variant:
        if variant not in variants:
            raise SweepError(f"--variant={variant}: {where} has no such variant "
                             f"(variants: {', '.join(variants) or 'none'}).")
        entry = _mapping(variants[variant], f"{where}: variants.{variant}")
        variant_options = _mapping(entry.get("overrides"), f"{where}: variants.{variant}.overrides")
        root = Path(f"{root}-{variant}")
    _check_path(root, f"{where}: output_folder (or --output_folder)")
    data_root = Path(data_root or sweep.get("data_root") or "data")
    _check_path(data_root, f"{where}: data_root (or --data_root)")
    common = {**_mapping(sweep.get("overrides"), f"{where}: overrides"), **(extra or {})}
    common_grid = _grid(sweep.get("grid"), f"{where}: grid")
    seeds = sweep.get("seeds", [10])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise SweepError(f"{where}: seeds must be a list of whole numbers, not {seeds!r}.")
    folds_choice = sweep.get("folds", "each")
    if not (folds_choice in ("each", "all") or (isinstance(folds_choice, list) and all(
            isinstance(f, int) and not isinstance(f, bool) for f in folds_choice) and folds_choice)):
        raise SweepError(f"{where}: folds must be 'each' (one run per fold), 'all' (one run of "
                         f"every fold) or a list of fold numbers, not {folds_choice!r}.")
    setup = read_setup(sweep.get("setup"), where)

    recipes = _mapping(sweep["recipes"], f"{where}: recipes")
    entries = sweep["methods"]
    if not isinstance(entries, list):
        raise SweepError(f"{where}: methods must be a list of method entries (see docs/sweeps.md).")
    # the yaml keys, and SpeechBrain's run options (--ckpt_interval_steps, --precision, ...)
    common_keys = set(results_tool._yaml_tree(COMMON_YAML)) | set(run_option_names())
    runs, seen, all_known, problems = [], {}, set(), []
    _check_values(common, f"{where}: overrides (or --set)", problems)
    _check_values(variant_options, f"{where}: variants.{variant}.overrides", problems)
    for key, values in common_grid.items():
        for value in values:
            _check_values({key: value}, f"{where}: grid", problems)
    for recipe, recipe_entry in recipes.items():
        recipe = str(recipe)
        dataset_file = dataset_yaml(recipe)
        dataset_tree = results_tool._yaml_tree(dataset_file)
        if isinstance(recipe_entry, dict):
            recipe_entry = dict(recipe_entry)
            data_folder = recipe_entry.pop("data_folder", None)
            recipe_options = _mapping(recipe_entry.pop("overrides", None), f"{where}: recipes.{recipe}.overrides")
            if recipe_entry:
                raise SweepError(f"{where}: recipes.{recipe}: unknown key(s) {', '.join(recipe_entry)} "
                                 "(a recipe takes 'data_folder' and 'overrides').")
        else:
            data_folder, recipe_options = recipe_entry, {}
        if not isinstance(data_folder, str) or not data_folder:
            raise SweepError(f"{where}: recipes.{recipe} needs its data folder (the dataset's folder "
                             "as unpacked, relative to data_root or absolute).")
        _check_path(data_folder, f"{where}: recipes.{recipe}")
        _check_values(recipe_options, f"{where}: recipes.{recipe}.overrides", problems)
        data = Path(data_folder) if Path(data_folder).is_absolute() else data_root / data_folder
        recipe_folds = [int(f) for f in dataset_tree.get("folds") or []]
        if not recipe_folds:
            folds = [None]
        elif folds_choice == "each":
            folds = recipe_folds
        elif folds_choice == "all":
            folds = ["all"]
        else:
            wrong = [f for f in folds_choice if f not in recipe_folds]
            if wrong:
                raise SweepError(f"{where}: folds {wrong} are not folds of {recipe} ({recipe_folds}).")
            folds = list(folds_choice)
        for k, entry in enumerate(entries):
            entry_where = f"{where}: methods[{k}]"
            if isinstance(entry, str):
                entry = {"method": entry}
            entry = _mapping(entry, entry_where)
            unknown = sorted(set(entry) - ENTRY_KEYS)
            if unknown:
                raise SweepError(f"{entry_where}: unknown key(s) {', '.join(unknown)} (an entry takes "
                                 f"{', '.join(sorted(ENTRY_KEYS))}).")
            method = entry.get("method")
            method_file = hparams_folder() / f"{method}.yaml"
            if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", method) \
                    or not method_file.is_file():
                available = sorted(p.stem for p in hparams_folder().glob("*.yaml"))
                raise SweepError(f"{entry_where}: method '{method}' has no file hparams/{method}.yaml "
                                 f"(available: {', '.join(available)}).")
            entry_where += f" ({method})"
            name = str(entry.get("name") or method)
            if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", name):
                raise SweepError(f"{entry_where}: name '{name}' must be a plain folder name (letters, "
                                 "digits, . _ + -, not starting with a dot).")
            known = common_keys | set(results_tool._yaml_tree(method_file)) | set(dataset_tree)
            all_known |= known
            entry_options = _mapping(entry.get("overrides"), f"{entry_where}.overrides")
            grid = {**common_grid, **_grid(entry.get("grid"), f"{entry_where}.grid")}
            _check_keys(recipe_options, known, f"{where}: recipes.{recipe}.overrides")
            _check_keys(entry_options, known, f"{entry_where}.overrides")
            _check_keys(grid, known, f"{entry_where}.grid (or the top-level grid)")
            _check_values(entry_options, f"{entry_where}.overrides", problems)
            for key, values in _grid(entry.get("grid"), f"{entry_where}.grid").items():
                for value in values:
                    _check_values({key: value}, f"{entry_where}.grid", problems)
            for values in itertools.product(*grid.values()):
                point = dict(zip(grid, values))
                named = {**entry_options, **point}
                # top-level options and the variant's: for the runs whose configuration has them
                options = {k: v for k, v in common.items() if k in known}
                options.update({**recipe_options, **named})
                options.update({k: v for k, v in variant_options.items() if k in known})
                for seed in seeds:
                    for fold in folds:
                        parts = [recipe, name, _slug(named), f"seed{seed}"]
                        if fold is not None:
                            parts.append(f"fold{fold}")
                        run_name = "/".join(parts)
                        if run_name in seen:
                            raise SweepError(f"{entry_where}: two runs would share the folder "
                                             f"{run_name} (the other from {seen[run_name]}); give one "
                                             "entry a different 'name'.")
                        seen[run_name] = entry_where
                        folder = (root / run_name).resolve()
                        if not folder.is_relative_to(root.resolve()):
                            raise SweepError(f"{entry_where}: the run folder {run_name} is not inside "
                                             f"the sweep's output folder {root}.")
                        runs.append(PlannedRun(run_name, recipe, method, options, seed, fold,
                                               folder, data.resolve()))
    for source, options in (("overrides (or --set)", common), (f"variants.{variant}.overrides",
                                                               variant_options)):
        unused = sorted(set(options) - all_known)
        if unused:
            _check_keys({unused[0]: None}, all_known, f"{where}: {source}")
    _check_keys({k: None for k in common if k in SWEEP_SET}, all_known, f"{where}: overrides (and --set)")
    if problems:
        raise SweepError(*dict.fromkeys(problems))
    for run in runs[:1] + [r for r in runs[1:] if r.options != runs[0].options]:
        try:  # the recipe's own parser takes the command (run options: --precision=..., ...)
            hparams_file, run_args, _ = split_arguments(recipe_command(run)[1:][1:])
            parse_run_options(hparams_file, run_args)
        except CommandLineError as err:
            raise SweepError(f"{where}: run {run.name}: {err}") from None
    sweep["root"] = root.resolve()
    sweep["setup"] = setup
    sweep["resources"] = _mapping(sweep.get("resources"), f"{where}: resources")
    unknown = sorted(set(sweep["resources"]) - set(DEFAULT_RESOURCES))
    if unknown:
        raise SweepError(f"{where}: resources: unknown key(s) {', '.join(unknown)} "
                         f"(keys: {', '.join(DEFAULT_RESOURCES)}).")
    compare = sweep.get("compare") or []
    sweep["compare"] = compare if isinstance(compare, list) else [compare]
    if sweep["compare"]:
        try:
            tables = results_tool.load_published()["tables"]
        except results_tool.ResultsError as err:
            raise SweepError(f"{where}: compare: {err}") from None
        unknown = [str(t) for t in sweep["compare"] if t not in tables]
        if unknown:
            raise SweepError(f"{where}: compare: no table {', '.join(unknown)} in "
                             f"{results_tool.published_file()} (tables: {', '.join(tables)}).")
    return runs, sweep


def recipe_command(run):
    """The recipe command of ``run``: ``python recipes/<D>/train.py hparams/<m>.yaml --...``
    (through ``torch.distributed.run`` when it has more than one GPU). Every value is written so
    that the recipe reads back exactly the sweep's (``arguments.as_argument``)."""
    python = [sys.executable]
    if run.gpus > 1:
        python += ["-m", "torch.distributed.run", f"--nproc_per_node={run.gpus}"]
    args = [f"recipes/{run.recipe}/train.py", f"hparams/{run.method}.yaml",
            f"--data_folder={run.data_folder}", f"--output_folder={run.folder}", f"--seed={run.seed}"]
    if run.fold is not None:
        args.append(f"--fold={run.fold}")
    flags = run_option_names()  # SpeechBrain's run options: {name: nargs}
    for key, value in run.options.items():
        if flags.get(key) == 0:  # a SpeechBrain flag (--debug): given or not
            args += [f"--{key}"] if value else []
        elif flags.get(key) == "*":
            args += [f"--{key}", *[str(v) for v in (value if isinstance(value, list) else [value])]]
        else:
            args.append(f"--{key}={as_argument(value)}")
    _, _, texts = split_arguments(args[1:])
    for key, value in {"output_folder": str(run.folder), "data_folder": str(run.data_folder),
                       **{k: v for k, v in run.options.items() if k not in flags}}.items():
        if read_value(texts[key]) != value:  # never: as_argument round-trips; a last guard
            raise SweepError(f"run {run.name}: --{key} would not reach the recipe as {value!r}.")
    return python + args


# ==================================================================== the state of a run
def run_state(folder):
    """``done`` (a results.json the results tool reads: any metric), ``running`` (a live process
    holds its lock) or ``pending`` (never started, interrupted or failed: to be run or resumed)."""
    folder = Path(folder)
    path = folder / "results.json"
    if path.is_file():
        try:
            results_tool.read_run(path)
            return "done"
        except results_tool.ResultsError:
            pass  # partial or damaged: the recipe resumes it and writes it again
    return "running" if lock_holder(folder) else "pending"


def _read_jobs(state_folder):
    """``{run name: Slurm job id}`` recorded by an earlier submission (plain JSON data)."""
    path = Path(state_folder) / JOBS_FILE
    if not path.is_file() or path.stat().st_size > 16 * 2 ** 20:
        return {}
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)
            and re.fullmatch(r"[0-9_]+", v)}


# What a job's log holds besides the recipe's messages: progress bars, submitit's and Slurm's
# own lines.
_NOISE = re.compile(r"(\d+%\|)|(\bit/s\]|s/it\])|^(submitit (INFO|WARNING|DEBUG)|srun: |slurmstepd|\[sweep\])")
_ERROR = re.compile(r"^(Error\b|[A-Za-z_.]*(Error|Exception)\b.*:)")
_STOPPED = re.compile(r"Stopped on SIG[A-Z0-9]+ at ")  # petl_modules.training.brain, on a signal
# slurmstepd's line when Slurm ended a job: "*** JOB 12 ON node CANCELLED AT ... DUE TO TIME LIMIT ***"
_SLURM_CAUSES = {"": "cancelled", "TIME LIMIT": "reached its time limit", "PREEMPTION": "preempted",
                 "NODE FAILURE": "its node failed"}
_SLURM_END = re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))?(?: \*\*\*|$)")


def read_log(path):
    """``(message, Slurm's account of the end)`` from the end of a job's log, read as text. The
    message is the recipe's last error line (``Error...``, ``XxxError: ...``) or its line saying
    where it stopped on a signal; else ``''``. Slurm's account: ``reached its time limit``,
    ``cancelled``, ... from slurmstepd's line, else ``''``."""
    lines = _log_lines(path)
    ended = ""
    for line in lines:
        match = _SLURM_END.search(line)
        if match and match.group(1) != "JOB REQUEUE":  # a requeue is not an end
            ended = _SLURM_CAUSES.get(match.group(1) or "", f"cancelled ({(match.group(1) or '').lower()})")
    said = [line for line in lines if _ERROR.search(line) or _STOPPED.search(line)]
    message = re.sub(r"^[\w.]+ - (?=Stopped on )", "", said[-1]) if said else ""  # logger's name
    return message.rstrip(".")[:300], ended


def _log_lines(path):
    """The lines of the end of a log before submitit's report of a failure, without progress
    bars, tracebacks' headers, submitit's and Slurm's own lines."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - 65536))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    reports = [k for k, line in enumerate(lines) if line.startswith("submitit ERROR")]
    slurm_lines = [line for line in lines if _SLURM_END.search(line)]
    lines = [line for line in lines[:reports[-1] if reports else len(lines)]
             if line and not _NOISE.search(line) and not line.startswith("Traceback")]
    return lines + slurm_lines


def _last_line(path):
    """The recipe's error line in a job's log, else its last line, or ''."""
    lines = [line for line in _log_lines(path) if not _SLURM_END.search(line)]
    return read_log(path)[0] or (lines[-1][:300] if lines else "")


# ==================================================================== running
class Progress:
    """Prints a line per state change: the time, the counts per state, the run and its new state."""

    def __init__(self, stream=None):
        self.state = {}
        self.note = {}
        self.stream = stream or sys.stdout

    def counts(self):
        return "  ".join(f"{s} {sum(v == s for v in self.state.values())}" for s in STATES)

    def set(self, name, state, note="", quiet=False, force=False):
        """A line when the state of ``name`` changes (or, ``force``, when its note does)."""
        if self.state.get(name) == state and (not force or self.note.get(name) == note):
            return
        self.state[name], self.note[name] = state, note
        if quiet:  # the states found at start: summed up in one line
            return
        print(f"[sweep] {time.strftime('%H:%M:%S')}  {self.counts()}  | {name}: {state}"
              + (f" ({note})" if note else ""), file=self.stream, flush=True)


def _visible_gpus():
    """GPU indices this process may use (``CUDA_VISIBLE_DEVICES`` if set, else every GPU)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [int(g) for g in given.split(",") if g.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


def gres_gpus(gres):
    """The GPUs a ``--gres`` value asks for (``gpu:a100:2`` -> 2, ``gpu`` -> 1)."""
    return sum(count for (name, _), count in slurm.parse_gres(gres).items() if name == "gpu")


def _resources(sweep, args):
    """The sweep's resources, the command line's winning, checked: whole numbers, Slurm names
    (nothing a shell would read). One message per wrong value."""
    resources = {**DEFAULT_RESOURCES, **sweep["resources"]}
    for key in DEFAULT_RESOURCES:
        if getattr(args, key, None) is not None:
            resources[key] = getattr(args, key)
    problems = []
    for key, low in NUMBERS.items():
        value = resources[key]
        if value is None and key in ("max_parallel", "gpus_per_run", "mem_gb"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"resources.{key} (or --{key}) must be a whole number >= {low}, not {value!r}.")
    for key, pattern in NAMES.items():
        value = resources[key]
        if value is not None and not (isinstance(value, str) and re.fullmatch(pattern, value)):
            problems.append(f"resources.{key} (or --{key}) = {value!r} is not a Slurm "
                            f"{key.replace('_', ' ')}: letters, digits, '.', '_' and '-' only "
                            "(no spaces, quotes or line breaks).")
    if resources["gres"] and not problems:
        from_gres = gres_gpus(resources["gres"])
        given = resources["gpus_per_run"]
        if given is not None and given != from_gres:
            problems.append(f"resources.gres={resources['gres']} asks for {from_gres} GPU(s) but "
                            f"gpus_per_run={given}; give one of them.")
        resources["gpus_per_run"] = from_gres
        if resources["gpu_type"]:
            problems.append("resources.gpu_type goes with gpus_per_run (--gpus-per-node=type:N); "
                            "with gres, write the type there (gres: gpu:<type>:<N>).")
    if problems:
        raise SweepError(*problems)
    return resources


def run_local(runs, sweep, resources, out=None):
    """Runs ``runs`` as local submitit jobs, at most ``max_parallel`` at once (runs that a
    process outside this sweep holds count too), one GPU each when GPUs are visible. Returns
    ``{run name: (state, note)}`` at the end."""
    out = out or sys.stdout
    gpus = _visible_gpus()
    per_run = resources["gpus_per_run"]
    per_run = (1 if gpus else 0) if per_run is None else int(per_run)
    if per_run > len(gpus):
        raise SweepError(f"gpus_per_run={per_run} but {len(gpus)} GPU(s) are visible here.")
    max_parallel = resources["max_parallel"] or (max(1, len(gpus) // per_run) if per_run else 1)
    folder = sweep["root"] / STATE_FOLDER / "submitit"
    if any(sweep.get("setup", {}).values()):
        print("[sweep] setup: (extra sbatch options, job setup lines) is for Slurm jobs; local runs "
              "use this process's environment.", file=out, flush=True)
    progress = Progress(out)
    queue, external, active, ended = [], set(), {}, {}
    for run in runs:
        run.gpus = per_run
        state = run_state(run.folder)
        progress.set(run.name, state, quiet=True)
        if state == "done":
            ended[run.name] = ("done", "")
        elif state == "running":
            external.add(run.name)
        else:
            queue.append(run)
    by_name = {run.name: run for run in runs}
    free = list(gpus)
    gpu_note = f", {per_run} GPU each" if per_run else " (no GPU)"
    print(f"[sweep] {len(runs)} runs: {len(ended)} done, {len(external)} running in another process "
          f"(waited for), {len(queue)} to run, {max_parallel} at once{gpu_note}; logs in {folder}",
          file=out, flush=True)
    while queue or active or external:
        for name in sorted(external):  # runs of other processes: wait for their locks
            state = run_state(by_name[name].folder)
            if state != "running":
                external.discard(name)
                if state == "done":
                    ended[name] = ("done", "")
                    progress.set(name, "done")
                else:  # stopped without finishing: resume it here
                    queue.insert(0, by_name[name])
                    progress.set(name, "pending", "stopped elsewhere: will resume")
        for name, (job, assigned) in list(active.items()):
            if not job.done():
                continue
            del active[name]
            free += assigned
            state = run_state(by_name[name].folder)
            if state == "done":
                ended[name] = ("done", "")
                progress.set(name, "done")
            elif state == "running":  # another process took the folder over
                external.add(name)
            else:
                stdout, stderr = launch.local_job_logs(job)
                code = launch.local_job_exit_code(job)
                reason = _last_line(stderr) or f"exit code {code}"
                ended[name] = ("failed", f"{reason}; log {stderr} (and {stdout.name})")
                progress.set(name, "failed", f"log {stderr}")
        while queue and len(active) + len(external) < max_parallel and len(free) >= per_run:
            run = queue.pop(0)
            state = run_state(run.folder)  # it may have changed since the plan
            if state == "running":
                external.add(run.name)
            if state != "pending":
                ended.update({run.name: ("done", "")} if state == "done" else {})
                progress.set(run.name, state)
                continue
            assigned, free = free[:per_run], free[per_run:]
            executor = launch.local_executor(folder, resources["time_min"], gpus=assigned)
            job = executor.submit(launch.RecipeRun(recipe_command(run), project_root(),
                                                   {"PYTHONUNBUFFERED": "1"}))
            active[run.name] = (job, assigned)
            progress.set(run.name, "running", f"job {job.job_id}" + (f", GPU {assigned}" if assigned else ""))
        if queue or active or external:
            time.sleep(POLL_S["local"])
    return ended


# ==================================================================== Slurm
def job_name(sweep):
    """The Slurm job name of the sweep's arrays (``squeue -n <name>``): ``sweep-<folder name>``."""
    return "sweep-" + (re.sub(r"[^A-Za-z0-9._-]", "-", sweep["root"].name) or "runs")


def check_cluster(resources, cluster):
    """The resources the partition can meet: ``(resources with gpus_per_run decided, max array
    size, notes)``, or ``SweepError`` with one message per option it cannot meet.
    ``gpus_per_run`` left out is 1 on a partition with GPUs and 0 on one without."""
    try:
        partition = cluster.partition(resources["partition"])
        max_array = cluster.max_array_size()
    except slurm.SlurmError as err:
        raise SweepError(str(err)) from None
    resources, notes = dict(resources), []
    if resources["gpus_per_run"] is None:
        resources["gpus_per_run"] = 1 if partition.has_gpus() else 0
        notes.append(f"gpus_per_run: {resources['gpus_per_run']} (partition '{partition.name}' "
                     f"{'has GPUs' if partition.has_gpus() else 'has no GPUs: the runs train on CPUs'}"
                     "; set gpus_per_run to change it)")
    gpu_type = resources["gpu_type"]
    if resources["gres"]:
        kinds = [k for (name, k), _ in slurm.parse_gres(resources["gres"]).items() if name == "gpu" and k]
        gpu_type = kinds[0] if kinds else None
    problems = slurm.check_request(partition, int(resources["cpus_per_run"]), resources["mem_gb"],
                                   int(resources["time_min"]), int(resources["gpus_per_run"]), gpu_type)
    if partition.state != "UP":
        notes.append(f"partition '{partition.name}' is {partition.state}: jobs wait until it is UP")
    if problems:
        raise SweepError(*problems)
    return resources, max_array, notes


def _slurm_params(sweep, resources):
    return launch.slurm_parameters(resources, job_name(sweep), sweep.get("setup"))


def _setup_lines(sweep):
    """The sweep file's setup, as the jobs get it (shown in full before submission)."""
    setup = sweep.get("setup") or {}
    lines = [f"  #SBATCH {option}" for option in setup.get("sbatch") or []]
    lines += [f"  {command}" for command in setup.get("commands") or []]
    return lines


def run_slurm(runs, sweep, resources, wait=True, out=None, cluster=None, max_array=None):
    """Submits the runs that are neither done, queued, running nor held by a live process as
    Slurm job arrays (``max_array`` runs at most each), then (``wait``) follows every run that is
    not done until it ends: its job's state from ``squeue`` at each poll (queued, running; a
    requeued job is queued again), else its lock. A run whose job left the queue without
    ``results.json`` failed; the note gives the cause (``sacct``, else Slurm's line in the log),
    the recipe's error line and the log. Returns ``{run name: (state, note)}`` of ended runs
    (None with ``wait=False``)."""
    out = out or sys.stdout
    cluster = cluster or slurm.Cluster()
    state_folder = sweep["root"] / STATE_FOLDER
    folder = state_folder / "submitit"
    name_of_jobs = job_name(sweep)
    accounting = cluster.accounting()
    if not accounting:
        print("[sweep] Slurm accounting (sacct) is not available here: states come from squeue; a "
              "run that ends without results.json is reported failed with its log, and its cause "
              "(cancelled, time limit, ...) is read from that log where Slurm wrote it.",
              file=out, flush=True)
    try:
        queue = cluster.queue(name_of_jobs)
    except slurm.SlurmError as err:
        raise SweepError(f"squeue failed, so the sweep cannot tell which runs are queued: {err}") from None
    recorded = _read_jobs(state_folder)
    progress = Progress(out)
    follow, ended, to_submit = {}, {}, []  # follow: run name -> job id (None: by its lock)
    for run in runs:
        run.gpus = int(resources["gpus_per_run"] or 0)
        state = run_state(run.folder)
        job = recorded.get(run.name)
        if state == "done":
            ended[run.name] = ("done", "")
        elif job in queue:
            follow[run.name] = job
            state = slurm.queue_state(queue[job][0])
        elif state == "running":
            follow[run.name] = None
        else:
            to_submit.append(run)
        progress.set(run.name, state, quiet=True)
    counts = {s: sum(v == s for v in progress.state.values()) for s in STATES}
    by_lock = sum(job is None for job in follow.values())
    print(f"[sweep] {len(runs)} runs: {counts['done']} done, {counts['queued']} queued, "
          f"{counts['running']} running" + (f" ({by_lock} held by a process outside this sweep's "
                                            "jobs: followed by its lock)" if by_lock else "")
          + f", {len(to_submit)} to submit", file=out, flush=True)
    if to_submit:
        sizes = slurm.array_sizes(len(to_submit), max_array)
        setup = _setup_lines(sweep)
        if setup:
            print("[sweep] setup from the sweep file, in every job:\n" + "\n".join(setup),
                  file=out, flush=True)
        executor = launch.slurm_executor(folder, _slurm_params(sweep, resources))
        commands = [launch.RecipeRun(recipe_command(run), project_root(), {"PYTHONUNBUFFERED": "1"})
                    for run in to_submit]
        try:
            ids = launch.submit_arrays(executor, commands, sizes)
        except launch.SubmissionError as err:
            for run, job in zip(to_submit, err.submitted):
                recorded[run.name] = job
            write_json_atomic(state_folder / JOBS_FILE, recorded)
            raise SweepError(f"sbatch refused the job array: {err} (check resources.partition, "
                             "account, qos, constraint and gres in the sweep file or on the command "
                             "line; --dry_run shows the sbatch file)") from None
        for run, job in zip(to_submit, ids):
            recorded[run.name] = job
            follow[run.name] = job
            progress.set(run.name, "queued", f"Slurm job {job}", quiet=True)
        write_json_atomic(state_folder / JOBS_FILE, recorded)
        arrays = sorted({job.split("_")[0] for job in ids}, key=int)
        print(f"[sweep] {len(to_submit)} run(s) submitted as {len(arrays)} job array(s) "
              f"({', '.join(arrays)}) named {name_of_jobs}; logs in {folder}", file=out, flush=True)
    if not wait:
        print(f"[sweep] Not waiting (--no_wait): squeue -n {name_of_jobs} shows the jobs; rerun the "
              "same command to follow them and write the report.", file=out, flush=True)
        return None
    if follow:
        print(f"[sweep] Following {len(follow)} run(s): squeue every {POLL_S['slurm']:g} s "
              f"(--poll_s); squeue -n {name_of_jobs} shows them too.", file=out, flush=True)
    by_name = {run.name: run for run in runs}
    left_queue, squeue_failed = {}, False
    while follow:
        time.sleep(POLL_S["slurm"])
        try:
            queue = cluster.queue(name_of_jobs)
            squeue_failed = False
        except slurm.SlurmError as err:
            if not squeue_failed:
                print(f"[sweep] squeue failed ({err}); trying again at the next poll.", file=out, flush=True)
            squeue_failed = True
            continue
        gone = []
        for name, job in list(follow.items()):
            if job in queue:
                state, reason = queue[job]
                note = f"Slurm job {job}"
                if state in slurm.QUEUED and reason and reason != "None":
                    note += f", {reason}"
                    if reason in slurm.NEVER_STARTS:
                        note += (f": it will not start, {slurm.NEVER_STARTS[reason]}; scancel it and "
                                 "change the resources")
                progress.set(name, slurm.queue_state(state), note, force=reason in slurm.NEVER_STARTS)
                continue
            state = run_state(by_name[name].folder)
            if state == "done":
                ended[name] = ("done", "")
                progress.set(name, "done")
                del follow[name]
            elif state == "running":
                progress.set(name, "running", "its lock is held" + (f"; Slurm job {job}" if job else ""))
            else:
                gone.append(name)
        causes = {}
        if accounting and any(follow[n] for n in gone):
            try:
                causes = cluster.ended([follow[n] for n in gone if follow[n]])
            except slurm.SlurmError:
                causes = {}
        for name in gone:
            job = follow[name]
            sacct_state, code = causes.get(job, (None, ""))
            final = sacct_state is not None and sacct_state not in slurm.QUEUED | slurm.RUNNING
            if job and accounting and not final and left_queue.get(job, 0) < SACCT_POLLS:
                left_queue[job] = left_queue.get(job, 0) + 1  # sacct lags behind squeue
                continue
            note = _failure_note(folder, job, sacct_state if final else None, code)
            ended[name] = ("failed", note)
            progress.set(name, "failed", note.split("; log ")[0])
            del follow[name]
    return ended


def _failure_note(folder, job, sacct_state, exit_code):
    """Why a run ended without results: Slurm's cause, the recipe's error line, the log."""
    if job is None:
        return "its process ended without results.json (it was not a job of this sweep)"
    stdout, stderr = launch.job_logs(folder, job)
    message, slurm_end = read_log(stderr)
    if not message or not slurm_end:
        out_message, out_end = read_log(stdout)
        message, slurm_end = message or out_message, slurm_end or out_end
    if sacct_state:
        cause = slurm.CAUSES.get(sacct_state, sacct_state.lower())
        if sacct_state in ("FAILED", "COMPLETED") and exit_code and exit_code != "0:0":
            cause += f" (exit code {exit_code})"
    else:
        cause = slurm_end or "left the queue without results.json"
    if not message and (sacct_state in (None, "FAILED", "COMPLETED")) and not slurm_end:
        message = _last_line(stderr)  # no error line: the recipe's last words
    return f"Slurm job {job} {cause}" + (f": {message}" if message else "") + f"; log {stderr}"


# ==================================================================== the report
def write_report(sweep, out=None):
    """The results tool's table, CSV and plot of every run below the sweep's output folder, with
    the published numbers of the tables the sweep file names under ``compare:``."""
    out = out or sys.stdout
    root = sweep["root"]
    runs, skipped = results_tool.collect([root], warn=lambda m: print(m, file=sys.stderr))
    rows = results_tool.summarise(runs)
    report = results_tool.markdown_report(rows, skipped)
    papers = []  # published accuracies (%) with a matching run: drawn in the plot
    if sweep["compare"]:
        published = results_tool.load_published()
        for table in sweep["compare"]:
            report += results_tool.published_markdown(published, table, runs)
            spec = published["tables"][table]
            if spec["metric"] == "test_accuracy" and float(spec.get("scale", 1)) == 100:
                papers += [c for c in results_tool.compare_published(published, table, runs)
                           if c["paper"] is not None]
    (root / "report.md").write_text(report)
    results_tool.write_csv(rows, root / "results.csv")
    written = [root / "report.md", root / "results.csv"]
    if rows:
        results_tool.plot(rows, root / "results.png", published=papers)
        written.append(root / "results.png")
    print(f"[sweep] Results of {len(runs)} run(s): {', '.join(map(str, written))}", file=out, flush=True)




# ==================================================================== command line
TEXT_RESOURCES = ("partition", "account", "qos", "constraint", "gpu_type", "gres")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.sweep",
        description="Run every recipe command of a sweep file (locally or as Slurm job arrays), "
                    "resumably, then write the results table and plot.",
    )
    parser.add_argument("sweep_file", help="sweeps/<name>.yaml")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each run's command and state (and, with --launcher=slurm, the "
                             "partition check, the setup and the sbatch file); run nothing")
    parser.add_argument("--variant", help="a variant of the sweep file (e.g. reference)")
    parser.add_argument("--data_root", help="folder of the datasets (default: the file's data_root)")
    parser.add_argument("--output_folder", help="default: the file's output_folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for every run that has it (repeatable), e.g. --set "
                             "number_of_epochs=1")
    parser.add_argument("--no_wait", action="store_true",
                        help="Slurm: submit and return (rerun the command to follow or report)")
    parser.add_argument("--poll_s", type=float, help="seconds between state checks (local 2, Slurm 60)")
    for key, default in DEFAULT_RESOURCES.items():
        kind = str if key in TEXT_RESOURCES else int
        parser.add_argument(f"--{key}", type=kind, default=None,
                            help=f"resources.{key} (default: the file's, else {default})")
    return parser.parse_args(argv)


def _extra_options(pairs):
    """``--set key=value`` options: each value read as a recipe reads its command line."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {pair}: write --set key=value.")
        options[key.lstrip("-")] = read_value(value) if value else ""
        if yaml_code(value):
            raise SweepError(f"--set {pair}: the value would be YAML code (a tag, anchor or alias) "
                             "in the recipe's configuration; give a plain value.")
    return options


def _print_errors(err):
    for message in err.messages:
        print(f"Error: {message}", file=sys.stderr)


def main(argv=None, out=None, cluster=None):
    out = out or sys.stdout
    args = parse_args(argv)
    try:
        runs, sweep = plan(args.sweep_file, args.variant, args.data_root, args.output_folder,
                           _extra_options(args.set))
        resources = _resources(sweep, args)
        if args.dry_run:
            return dry_run(runs, sweep, resources, args.launcher, out, cluster)
        max_array = None
        if args.launcher == "slurm":
            if not (shutil.which("sbatch") and shutil.which("srun") and shutil.which("squeue")):
                raise SweepError("--launcher=slurm needs Slurm's sbatch, srun and squeue on the PATH: "
                                 "run the command on the cluster's login node (--dry_run shows the "
                                 "sbatch file it would submit).")
            cluster = cluster or slurm.Cluster()
            resources, max_array, notes = check_cluster(resources, cluster)
            for note in notes:
                print(f"[sweep] {note}", file=out, flush=True)
        missing = sorted({str(r.data_folder) for r in runs if not r.data_folder.exists()})
        if missing:
            raise SweepError(f"data folder(s) not found: {', '.join(missing)}. Pass --data_root "
                             "(the folder holding the datasets) or fix 'recipes:' in the sweep file.")
        if args.poll_s:
            POLL_S[args.launcher] = args.poll_s
        if args.launcher == "local":
            ended = run_local(runs, sweep, resources, out)
        else:
            ended = run_slurm(runs, sweep, resources, wait=not args.no_wait, out=out,
                              cluster=cluster, max_array=max_array)
            if ended is None:
                return 0
    except SweepError as err:
        _print_errors(err)
        return 2
    except KeyboardInterrupt:
        print("\n[sweep] Interrupted. Rerun the same command to resume: finished runs are skipped, "
              "interrupted ones resume from their checkpoints (Slurm jobs go on: the rerun "
              "follows them).", file=out, flush=True)
        return 130
    failed = {name: note for name, (state, note) in ended.items() if state == "failed"}
    write_report(sweep, out)
    if failed:
        print(f"[sweep] {len(failed)} run(s) failed (rerun the command to retry them):", file=out)
        for name, note in sorted(failed.items()):
            print(f"  {name}: {note}", file=out)
        return 1
    print(f"[sweep] All {len(runs)} run(s) done.", file=out, flush=True)
    return 0


def dry_run(runs, sweep, resources, launcher, out=None, cluster=None):
    """Prints every run's state and command; for Slurm also the partition check (where Slurm's
    commands are at hand; each refusal an ``Error:`` line), the sweep file's setup in full and the
    sbatch file of the (first) job array. Returns 2 when something would be refused, else 0."""
    out = out or sys.stdout
    states = {run.name: run_state(run.folder) for run in runs}
    refused, notes, max_array = [], [], None
    if launcher == "slurm":
        cluster = cluster or (slurm.Cluster() if slurm.Cluster.available() else None)
        if cluster is None:
            notes.append("the partition was not checked: no Slurm commands here (run --dry_run on "
                         "the cluster's login node to check CPUs, memory, time and GPUs)")
            resources = dict(resources, gpus_per_run=1 if resources["gpus_per_run"] is None
                             else resources["gpus_per_run"])
        else:
            try:
                resources, max_array, found = check_cluster(resources, cluster)
                notes += found
            except SweepError as err:
                refused += err.messages
                resources = dict(resources, gpus_per_run=resources["gpus_per_run"] or 0)
    for run in runs:
        run.gpus = int(resources["gpus_per_run"] or 0)
        print(f"# {run.name} [{states[run.name]}]", file=out)
        print(shlex.join(recipe_command(run)), file=out)
    todo = sum(s == "pending" for s in states.values())
    print(f"[sweep] {len(runs)} runs ({todo} to run) in {sweep['root']}; nothing was run (--dry_run).",
          file=out)
    if launcher == "slurm":
        for note in notes:
            print(f"[sweep] {note}", file=out)
        sizes = slurm.array_sizes(max(1, todo), max_array)
        setup = _setup_lines(sweep)
        print("[sweep] setup from the sweep file, in every job:\n" + "\n".join(setup) if setup
              else "[sweep] no setup: in the sweep file (the jobs run with the environment sbatch "
                   "passes on)", file=out)
        folder = sweep["root"] / STATE_FOLDER / "submitit"
        script = launch.slurm_script(folder, _slurm_params(sweep, resources), sizes[0])
        arrays = f"{len(sizes)} job arrays of {', '.join(map(str, sizes))} runs (MaxArraySize " \
                 f"{max_array})" if len(sizes) > 1 else f"one job array of {sizes[0]} runs"
        print(f"[sweep] {arrays}; the sbatch file of the first:\n{script}", file=out)
    for message in refused:
        print(f"Error: {message}", file=sys.stderr)
    return 2 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
