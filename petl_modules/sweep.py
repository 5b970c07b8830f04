"""Many recipe runs from one sweep file: the papers' tables in one command, locally or on Slurm.

Usage (from the repository root)::

    python -m petl_modules.sweep sweeps/<name>.yaml [--launcher=local|slurm] [--dry_run]
        [--variant=reference] [--data_root=/data] [--output_folder=...] [--set key=value ...]
        [--max_parallel=N] [--partition=P] [--gpus_per_run=1] [--cpus_per_run=8]
        [--time_min=1440] [--array_parallelism=64] [--mem_gb=G] [--account=A] [--qos=Q]
        [--no_wait] [--poll_s=S]

A sweep file (yaml, read with a safe loader: plain data) names recipes with their data folders,
method entries (a method file, options, a grid of options), seeds and folds; every combination is
one run: the ordinary recipe command ``python recipes/<D>/train.py hparams/<method>.yaml
--key=value ...`` with its own output folder named from its settings,
``<output_folder>/<D>/<entry>/<options or default>/seed<s>[/fold<k>]``. Runs go through
submitit (``petl_modules.training.launch``): local processes, at most ``max_parallel`` at once
(one GPU each when there are GPUs), or one Slurm job array. Rerunning the command skips finished
runs (a readable ``results.json``, read with the results tool), counts a run whose lock a live
process holds as running, and resumes the others from their checkpoints. A failed run never
stops the others; failures are listed with their logs. When every run has ended, the results
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
from petl_modules.training import launch
from petl_modules.training.run_folder import lock_holder, write_json_atomic

COMMON_YAML = Path(__file__).resolve().parent / "training" / "recipe.yaml"
STATE_FOLDER = ".sweep"  # inside the sweep's output folder: submitit logs, Slurm job ids
JOBS_FILE = "jobs.json"

# Keys the sweep sets itself on every command line.
SWEEP_SET = {"data_folder", "output_folder", "seed", "fold"}
SWEEP_KEYS = {"description", "output_folder", "data_root", "recipes", "methods", "grid", "overrides",
              "seeds", "folds", "compare", "variants", "resources"}
ENTRY_KEYS = {"method", "name", "overrides", "grid"}
DEFAULT_RESOURCES = {
    "max_parallel": None,  # local: runs at once (default: one per GPU, 1 without GPUs)
    "gpus_per_run": None,  # default: 1 when GPUs are visible (local) / 1 (Slurm)
    "cpus_per_run": 8,
    "time_min": 1440,  # per run (Slurm time limit; a run that reaches it is requeued and resumes)
    "array_parallelism": 64,  # Slurm: array tasks running at once
    "partition": None, "mem_gb": None, "account": None, "qos": None, "constraint": None,
}
STATES = ("done", "running", "failed", "pending")
POLL_S = {"local": 2.0, "slurm": 60.0}  # seconds between state checks (--poll_s)


class SweepError(ValueError):
    """A sweep file or option that cannot be run (the message says where and how to fix it)."""


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
    folder = recipes_folder() / recipe
    if not (folder / "train.py").is_file():
        available = sorted(p.parent.name for p in recipes_folder().glob("*/train.py"))
        close = difflib.get_close_matches(recipe, available, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise SweepError(f"recipes: no recipe '{recipe}' (recipes/{recipe}/train.py).{hint} "
                         f"Available: {', '.join(available)}.")
    for path in sorted(folder.glob("*.yaml")):
        if "dataset" in results_tool._yaml_tree(path):
            return path
    raise SweepError(f"recipes/{recipe} has no dataset yaml (a .yaml file with a 'dataset' key).")


def _format(value):
    """A sweep value as a command-line ``--key=value`` value (SpeechBrain reads it as yaml)."""
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
                         f"the dataset yaml).{hint}")


def read_sweep_file(path):
    """The sweep file as plain data (``yaml.safe_load``), its top-level keys checked."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except FileNotFoundError:
        raise SweepError(f"Sweep file '{path}' not found (see sweeps/ for the papers' tables).") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid yaml: {' '.join(str(err).split())}") from None
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
    (runs, sweep) : the runs and the file's data (with ``root``: the output folder used).
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
    data_root = Path(data_root or sweep.get("data_root") or "data")
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

    recipes = _mapping(sweep["recipes"], f"{where}: recipes")
    entries = sweep["methods"]
    if not isinstance(entries, list):
        raise SweepError(f"{where}: methods must be a list of method entries (see docs/sweeps.md).")
    common_keys = set(results_tool._yaml_tree(COMMON_YAML))
    runs, seen, all_known = [], {}, set()
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
            if not isinstance(method, str) or not method_file.is_file():
                available = sorted(p.stem for p in hparams_folder().glob("*.yaml"))
                raise SweepError(f"{entry_where}: method '{method}' has no file hparams/{method}.yaml "
                                 f"(available: {', '.join(available)}).")
            entry_where += f" ({method})"
            name = str(entry.get("name") or method)
            if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
                raise SweepError(f"{entry_where}: name '{name}' must be a plain folder name.")
            known = common_keys | set(results_tool._yaml_tree(method_file)) | set(dataset_tree)
            all_known |= known
            entry_options = _mapping(entry.get("overrides"), f"{entry_where}.overrides")
            grid = {**common_grid, **_grid(entry.get("grid"), f"{entry_where}.grid")}
            _check_keys(common, known, f"{where}: overrides (and --set)")
            _check_keys(recipe_options, known, f"{where}: recipes.{recipe}.overrides")
            _check_keys(entry_options, known, f"{entry_where}.overrides")
            _check_keys(grid, known, f"{entry_where}.grid (or the top-level grid)")
            for values in itertools.product(*grid.values()):
                point = dict(zip(grid, values))
                named = {**entry_options, **point}
                options = {**common, **recipe_options, **named}
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
                        runs.append(PlannedRun(run_name, recipe, method, options, seed, fold,
                                               (root / run_name).resolve(), data.resolve()))
    unused = sorted(set(variant_options) - all_known)
    if unused:
        _check_keys({unused[0]: None}, all_known, f"{where}: variants.{variant}.overrides")
    sweep["root"] = root.resolve()
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
    (through ``torch.distributed.run`` when it has more than one GPU)."""
    python = [sys.executable]
    if run.gpus > 1:
        python += ["-m", "torch.distributed.run", f"--nproc_per_node={run.gpus}"]
    args = [f"recipes/{run.recipe}/train.py", f"hparams/{run.method}.yaml",
            f"--data_folder={run.data_folder}", f"--output_folder={run.folder}", f"--seed={run.seed}"]
    if run.fold is not None:
        args.append(f"--fold={run.fold}")
    args += [f"--{key}={_format(value)}" for key, value in run.options.items()]
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


def _last_line(path):
    """The recipe's last message in a job's log (its error, before submitit's own report of the
    failure), or ''. Shown beside a failure; the log is only read as text."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - 16384))
            lines = [line.strip() for line in stream.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    reports = [k for k, line in enumerate(lines) if line.startswith("submitit ERROR")]
    lines = [line for line in lines[:reports[-1] if reports else len(lines)] if line]
    return lines[-1][:300] if lines else ""


# ==================================================================== running
class Progress:
    """Prints a line per state change: the time, the counts per state, the run and its new state."""

    def __init__(self, stream=None):
        self.state = {}
        self.stream = stream or sys.stdout

    def counts(self):
        return "  ".join(f"{s} {sum(v == s for v in self.state.values())}" for s in STATES)

    def set(self, name, state, note="", quiet=False):
        if self.state.get(name) == state:
            return
        self.state[name] = state
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


def _resources(sweep, args):
    """The sweep's resources, the command line's winning."""
    resources = {**DEFAULT_RESOURCES, **sweep["resources"]}
    for key in DEFAULT_RESOURCES:
        if getattr(args, key, None) is not None:
            resources[key] = getattr(args, key)
    for key, low in (("cpus_per_run", 1), ("time_min", 1), ("array_parallelism", 1),
                     ("max_parallel", 1), ("gpus_per_run", 0), ("mem_gb", 1)):
        value = resources[key]
        if value is None and key in ("max_parallel", "gpus_per_run", "mem_gb"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SweepError(f"resources.{key} (or --{key}) must be a whole number >= {low}, not {value!r}.")
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
                stdout, stderr = launch.job_logs(job)
                code = launch.local_job_exit_code(job)
                reason = _last_line(stderr) or f"exit code {code}"
                ended[name] = ("failed", f"log {stderr} (and {stdout.name}): {reason}")
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


def run_slurm(runs, sweep, resources, wait=True, out=None):
    """Submits the runs that are neither done, running nor queued as one Slurm job array, then
    (``wait``) follows them until they end. Returns ``{run name: (state, note)}`` of ended runs."""
    out = out or sys.stdout
    state_folder = sweep["root"] / STATE_FOLDER
    folder = state_folder / "submitit"
    params = launch.slurm_parameters({**resources, "gpus_per_run": _slurm_gpus(resources)},
                                     f"sweep-{sweep['root'].name}")
    recorded = _read_jobs(state_folder)
    progress = Progress(out)
    jobs, ended, to_submit = {}, {}, []
    for run in runs:
        run.gpus = _slurm_gpus(resources)
        state = run_state(run.folder)
        if state == "pending" and run.name in recorded:
            job = launch.slurm_job(folder, recorded[run.name])
            if job.state.split(" ")[0] in launch.SLURM_ACTIVE:
                jobs[run.name] = job
                state = "running"
        progress.set(run.name, state, quiet=True)
        if state == "done":
            ended[run.name] = ("done", "")
        elif state == "pending":
            to_submit.append(run)
    print(f"[sweep] {len(runs)} runs: {len(ended)} done, {len(jobs)} queued or running, "
          f"{len(to_submit)} to submit", file=out, flush=True)
    if to_submit:
        executor = launch.slurm_executor(folder, params)
        with executor.batch():
            submitted = [executor.submit(launch.RecipeRun(recipe_command(run), project_root(),
                                                          {"PYTHONUNBUFFERED": "1"})) for run in to_submit]
        for run, job in zip(to_submit, submitted):
            jobs[run.name] = job
            recorded[run.name] = str(job.job_id)
            progress.set(run.name, "running", f"Slurm job {job.job_id}")
        write_json_atomic(state_folder / JOBS_FILE, recorded)
    print(f"[sweep] {len(to_submit)} run(s) submitted as a Slurm job array; logs in {folder}",
          file=out, flush=True)
    if not wait:
        return None
    by_name = {run.name: run for run in runs}
    while jobs:
        time.sleep(POLL_S["slurm"])
        for name, job in list(jobs.items()):
            if not job.done():
                continue
            del jobs[name]
            if run_state(by_name[name].folder) == "done":
                ended[name] = ("done", "")
                progress.set(name, "done")
            else:
                stdout, stderr = launch.job_logs(job)
                ended[name] = ("failed", f"Slurm state {job.state}; log {stderr}: {_last_line(stderr)}")
                progress.set(name, "failed", f"log {stderr}")
    return ended


def _slurm_gpus(resources):
    return 1 if resources["gpus_per_run"] is None else int(resources["gpus_per_run"])


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
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.sweep",
        description="Run every recipe command of a sweep file (locally or as a Slurm job array), "
                    "resumably, then write the results table and plot.",
    )
    parser.add_argument("sweep_file", help="sweeps/<name>.yaml")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each run's command and state (and, with --launcher=slurm, the "
                             "sbatch file of the job array); run nothing")
    parser.add_argument("--variant", help="a variant of the sweep file (e.g. reference)")
    parser.add_argument("--data_root", help="folder of the datasets (default: the file's data_root)")
    parser.add_argument("--output_folder", help="default: the file's output_folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for every run (repeatable), e.g. --set number_of_epochs=1")
    parser.add_argument("--no_wait", action="store_true",
                        help="Slurm: submit and return (rerun the command to follow or report)")
    parser.add_argument("--poll_s", type=float, help="seconds between state checks (local 2, Slurm 60)")
    for key, default in DEFAULT_RESOURCES.items():
        kind = str if key in ("partition", "account", "qos", "constraint") else int
        parser.add_argument(f"--{key}", type=kind, default=None,
                            help=f"resources.{key} (default: the file's, else {default})")
    return parser.parse_args(argv)


def _extra_options(pairs):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {pair}: write --set key=value.")
        options[key.lstrip("-")] = yaml.safe_load(value) if value else ""
    return options


def main(argv=None, out=None):
    out = out or sys.stdout
    args = parse_args(argv)
    try:
        runs, sweep = plan(args.sweep_file, args.variant, args.data_root, args.output_folder,
                           _extra_options(args.set))
        resources = _resources(sweep, args)
        if args.dry_run:
            return dry_run(runs, sweep, resources, args.launcher, out)
        if args.launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise SweepError("--launcher=slurm needs Slurm's sbatch and srun on the PATH: run the "
                             "command on the cluster's login node (--dry_run shows the sbatch file "
                             "it would submit).")
        missing = sorted({str(r.data_folder) for r in runs if not r.data_folder.exists()})
        if missing:
            raise SweepError(f"data folder(s) not found: {', '.join(missing)}. Pass --data_root "
                             "(the folder holding the datasets) or fix 'recipes:' in the sweep file.")
        if args.poll_s:
            POLL_S[args.launcher] = args.poll_s
        if args.launcher == "local":
            ended = run_local(runs, sweep, resources, out)
        else:
            ended = run_slurm(runs, sweep, resources, wait=not args.no_wait, out=out)
            if ended is None:
                return 0
    except SweepError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[sweep] Interrupted. Rerun the same command to resume: finished runs are skipped, "
              "interrupted ones resume from their checkpoints.", file=out, flush=True)
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


def dry_run(runs, sweep, resources, launcher, out=None):
    """Prints every run's state and command; for Slurm also the sbatch file of the array."""
    out = out or sys.stdout
    states = {run.name: run_state(run.folder) for run in runs}
    for run in runs:
        run.gpus = _slurm_gpus(resources) if launcher == "slurm" else (
            resources["gpus_per_run"] or 0)
        print(f"# {run.name} [{states[run.name]}]", file=out)
        print(shlex.join(recipe_command(run)), file=out)
    todo = sum(s == "pending" for s in states.values())
    print(f"[sweep] {len(runs)} runs ({todo} to run) in {sweep['root']}; nothing was run (--dry_run).",
          file=out)
    if launcher == "slurm":
        folder = sweep["root"] / STATE_FOLDER / "submitit"
        params = launch.slurm_parameters({**resources, "gpus_per_run": _slurm_gpus(resources)},
                                         f"sweep-{sweep['root'].name}")
        script = launch.slurm_script(folder, params, max(1, todo))
        print(f"[sweep] The sbatch file of the job array ({max(1, todo)} runs):\n{script}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
