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

The tool's parts, one job each: ``sweep_file`` (reading and checking a sweep file), ``plan``
(its runs and their recipe commands), ``resources`` (checked resources, the partition's limits),
``state`` (a run's state, job logs, progress lines), ``local`` and ``on_slurm`` (the two
launchers), ``report`` (the results table of the sweep), ``cli`` (the command line). What they
offer other code is imported here.
"""

from petl_modules.sweep.cli import dry_run, main, parse_args
from petl_modules.sweep.local import run_local
from petl_modules.sweep.on_slurm import job_name, run_slurm
from petl_modules.sweep.plan import COMMON_YAML, PlannedRun, plan, recipe_command
from petl_modules.sweep.report import write_report
from petl_modules.sweep.resources import DEFAULT_RESOURCES, check_cluster, check_resources, gres_gpus
from petl_modules.sweep.state import JOBS_FILE, POLL_S, STATE_FOLDER, read_log, run_state
from petl_modules.sweep.sweep_file import SweepError, dataset_yaml, read_sweep_file, value_problem

__all__ = [
    "COMMON_YAML", "DEFAULT_RESOURCES", "JOBS_FILE", "POLL_S", "STATE_FOLDER", "PlannedRun",
    "SweepError", "check_cluster", "check_resources", "dataset_yaml", "dry_run", "gres_gpus",
    "job_name", "main", "parse_args", "plan", "read_log", "read_sweep_file", "recipe_command",
    "run_local", "run_slurm", "run_state", "value_problem", "write_report",
]
