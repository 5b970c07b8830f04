"""A sweep's resources (the sweep file's, the command line's winning), checked: whole numbers, Slurm
names, and what the partition can meet."""

import os
import re

from petl_modules.sweep.sweep_file import SweepError
from petl_modules.training import slurm

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
TEXT_RESOURCES = ("partition", "account", "qos", "constraint", "gpu_type", "gres")


def visible_gpus():
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


def check_resources(sweep, args):
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
