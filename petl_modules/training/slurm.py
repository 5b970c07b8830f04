"""What a Slurm cluster says, read from its own commands: the partition's limits (``scontrol show
partition|node -o``), the largest job array (``scontrol show config``: ``MaxArraySize``), the
queue (``squeue``) and the accounting of ended jobs (``sacct``).

The sweep (``petl_modules.sweep``) checks a request against the partition before it submits
(``check_request``: one message per option the partition cannot meet), splits its runs into
arrays the cluster accepts (``array_sizes``), and follows its jobs with ``squeue`` at each poll:
a job is active (queued or running, also after any requeue) while squeue lists it; once it has
left the queue, ``sacct`` (when the cluster keeps accounting) gives the cause of an end without
results (cancelled, time limit, node failure, out of memory). The parsers take the commands'
text, so that unit tests feed them recorded output; ``Cluster`` runs the commands.

Example
-------
>>> parse_squeue("12_0|RUNNING|None\\n12_1|PENDING|Priority\\n")
{'12_0': ('RUNNING', 'None'), '12_1': ('PENDING', 'Priority')}
>>> parse_minutes("1-00:00:00"), parse_minutes("01:30:00"), parse_minutes("UNLIMITED")
(1440, 90, None)
>>> array_sizes(10, max_array_size=4)
[4, 4, 2]
"""

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass, field

# squeue's states of a job that holds or waits for its place (%T).
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD",
          "CONFIGURING", "SUSPENDED", "STOPPED", "PREEMPTED"}
RUNNING = {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
# Pending reasons that mean the request exceeds what the partition (or account, QoS) allows:
# the job would wait forever.
NEVER_STARTS = {
    "PartitionConfig": "the partition's nodes cannot meet the request (CPUs, memory, GPUs)",
    "PartitionTimeLimit": "the time limit is above the partition's MaxTime",
    "PartitionNodeLimit": "the request exceeds the partition's node limits",
    "BadConstraints": "no node meets the request (constraint, CPUs, memory, GPUs)",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QoS is not valid",
    "QOSMaxWallDurationPerJobLimit": "the time limit is above the QoS's",
    "ReqNodeNotAvail": "the nodes it needs are not available",
}
# sacct's final states, as a failure note says them.
CAUSES = {
    "CANCELLED": "cancelled", "TIMEOUT": "reached its time limit", "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "ran out of memory", "FAILED": "the job failed", "PREEMPTED": "preempted",
    "BOOT_FAIL": "its node failed to boot", "DEADLINE": "reached its deadline",
    "COMPLETED": "the job ended",
}


class SlurmError(RuntimeError):
    """A Slurm command that failed or said something we cannot read (the message quotes it)."""


# ==================================================================== parsing
def parse_key_values(line):
    """``{key: value}`` of one ``scontrol show ... -o`` line (values may hold spaces: ``OS=Linux
    6.1 #1 SMP``)."""
    starts = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=", line))
    found = {}
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(line)
        found[match.group(1)] = line[match.end():end].strip()
    return found


def parse_minutes(text):
    """Minutes of a Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None for
    ``UNLIMITED``/``INFINITE``/``NONE``."""
    text = (text or "").strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "", "N/A"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        parts += [0] * (3 - len(parts))  # D-HH, D-HH:MM
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_memory_mb(text):
    """Megabytes of a Slurm memory size (``12052``, ``12052M``, ``64G``); None for unlimited."""
    text = (text or "").strip().upper()
    if text in ("UNLIMITED", "", "N/A", "0"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text)
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group(2)]
    return int(float(match.group(1)) * scale)


def parse_gres(text):
    """``{(name, type or None): count}`` of a node's ``Gres`` (``gpu:a100:4(S:0-1),gpu:2``)."""
    found = {}
    for item in re.split(r",(?![^(]*\))", text or ""):
        item = re.sub(r"\(.*\)$", "", item.strip())
        if not item or item == "(null)":
            continue
        parts = item.split(":")
        count = int(parts[-1]) if parts[-1].isdigit() else 1
        names = parts[:-1] if parts[-1].isdigit() else parts
        key = (names[0], names[1] if len(names) > 1 else None)
        found[key] = found.get(key, 0) + count
    return found


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gres: dict = field(default_factory=dict)
    partitions: tuple = ()

    def gpus(self, gpu_type=None):
        return sum(n for (name, kind), n in self.gres.items()
                   if name == "gpu" and (gpu_type is None or kind == gpu_type))


@dataclass
class Partition:
    name: str
    default: bool
    state: str
    max_time_min: object  # minutes, None: unlimited
    max_cpus_per_node: object
    max_mem_per_node_mb: object
    nodes: list = field(default_factory=list)

    def has_gpus(self):
        return any(node.gpus() for node in self.nodes)


def parse_partitions(text):
    """``{name: {key: value}}`` of ``scontrol show partition -o``."""
    partitions = {}
    for line in (text or "").splitlines():
        values = parse_key_values(line)
        if "PartitionName" in values:
            partitions[values["PartitionName"]] = values
    return partitions


def parse_nodes(text):
    """``[Node]`` of ``scontrol show node -o``."""
    nodes = []
    for line in (text or "").splitlines():
        values = parse_key_values(line)
        if "NodeName" not in values:
            continue
        cpus = values.get("CPUEfctv") or values.get("CPUTot") or "0"
        nodes.append(Node(values["NodeName"], int(cpus) if cpus.isdigit() else 0,
                          parse_memory_mb(values.get("RealMemory")) or 0,
                          parse_gres(values.get("Gres")),
                          tuple(p for p in values.get("Partitions", "").split(",") if p)))
    return nodes


def make_partition(values, nodes):
    """A ``Partition`` from its ``parse_partitions`` values and every node (``parse_nodes``)."""
    name = values["PartitionName"]
    max_cpus = values.get("MaxCPUsPerNode", "UNLIMITED")
    return Partition(
        name=name, default=values.get("Default") == "YES", state=values.get("State", "UP"),
        max_time_min=parse_minutes(values.get("MaxTime")),
        max_cpus_per_node=int(max_cpus) if max_cpus.isdigit() else None,
        max_mem_per_node_mb=parse_memory_mb(values.get("MaxMemPerNode")),
        nodes=[n for n in nodes if name in n.partitions])


def parse_config_value(text, key):
    """The value of ``key`` in ``scontrol show config`` (``MaxArraySize = 1001``), or None."""
    match = re.search(rf"^{re.escape(key)}\s*=\s*(\S+)", text or "", re.M)
    return match.group(1) if match else None


def parse_squeue(text):
    """``{job id: (state, reason)}`` of ``squeue -h -r -o %i|%T|%r`` (array tasks one a line)."""
    found = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


def parse_sacct(text):
    """``{job id: (state, exit code)}`` of ``sacct -X -P -n -o JobID,State,ExitCode``: the last
    record of each job (``CANCELLED by 0`` is CANCELLED); a pending array's ``12_[1-3%2]``
    stands for its tasks 1, 2, 3."""
    found = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:
            continue
        state = parts[1].split(" ")[0]
        code = parts[2] if len(parts) > 2 else ""
        match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", parts[0])
        if match:
            for item in match.group(2).split(","):
                low, _, high = item.partition("-")
                for task in range(int(low), int(high or low) + 1):
                    found[f"{match.group(1)}_{task}"] = (state, code)
        else:
            found[parts[0]] = (state, code)
    return found


# ==================================================================== checks
def check_request(partition, cpus, mem_gb, time_min, gpus, gpu_type=None):
    """Messages, one per option the partition cannot meet (empty: it can); each names the
    ``resources`` key, what the partition has and the fix."""
    problems = []
    nodes = partition.nodes
    where = f"partition '{partition.name}'"
    if partition.max_time_min is not None and time_min > partition.max_time_min:
        problems.append(
            f"resources.time_min={time_min} (--time_min): {where} allows at most "
            f"{partition.max_time_min} minutes (MaxTime); ask for {partition.max_time_min} or less "
            "(a run that reaches its limit is requeued and resumes from its checkpoint).")
    most_cpus = max([n.cpus for n in nodes], default=0)
    if partition.max_cpus_per_node is not None:
        most_cpus = min(most_cpus, partition.max_cpus_per_node) if nodes else partition.max_cpus_per_node
    if nodes and cpus > most_cpus:
        problems.append(f"resources.cpus_per_run={cpus} (--cpus_per_run): the nodes of {where} "
                        f"have at most {most_cpus} CPUs; ask for {most_cpus} or fewer.")
    if mem_gb:
        most_mb = max([n.memory_mb for n in nodes], default=0)
        if partition.max_mem_per_node_mb is not None:
            most_mb = min(most_mb, partition.max_mem_per_node_mb) if nodes else partition.max_mem_per_node_mb
        if nodes and mem_gb * 1024 > most_mb:
            problems.append(f"resources.mem_gb={mem_gb} (--mem_gb): the nodes of {where} have at "
                            f"most {most_mb // 1024} GB; ask for {max(1, most_mb // 1024)} or less "
                            "(or leave mem_gb out: the partition's default).")
    if gpus and nodes:
        most_gpus = max(n.gpus(gpu_type) for n in nodes)
        kind = f" of type {gpu_type}" if gpu_type else ""
        if not most_gpus:
            have = sorted({k for n in nodes for (name, k), c in n.gres.items() if name == "gpu" and k})
            hint = f" (types there: {', '.join(have)})" if gpu_type and have else ""
            problems.append(f"resources.gpus_per_run={gpus} (--gpus_per_run): {where} has no GPUs"
                            f"{kind}{hint}; choose a GPU partition (resources.partition) or set "
                            "gpus_per_run: 0 to train on CPUs.")
        elif gpus > most_gpus:
            problems.append(f"resources.gpus_per_run={gpus} (--gpus_per_run): the nodes of {where} "
                            f"have at most {most_gpus} GPUs{kind}; ask for {most_gpus} or fewer.")
    if not problems and nodes and not any(
            n.cpus >= cpus and (not mem_gb or n.memory_mb >= mem_gb * 1024)
            and (not gpus or n.gpus(gpu_type) >= gpus) for n in nodes):
        problems.append(f"resources: no node of {where} has {cpus} CPUs"
                        + (f", {mem_gb} GB" if mem_gb else "") + (f" and {gpus} GPUs" if gpus else "")
                        + " together; ask for less of one of them.")
    return problems


def array_sizes(count, max_array_size):
    """Sizes of the job arrays ``count`` runs are split into: task indices stay below
    ``max_array_size`` (Slurm's ``MaxArraySize``)."""
    largest = max(1, int(max_array_size)) if max_array_size else count
    return [min(largest, count - start) for start in range(0, count, largest)] if count else []


def queue_state(state):
    """``queued`` or ``running`` for a squeue state."""
    return "running" if state in RUNNING else "queued"


# ==================================================================== the cluster
class Cluster:
    """Runs Slurm's commands (``timeout_s`` each); errors are ``SlurmError`` quoting the
    command's message."""

    def __init__(self, timeout_s=60):
        self.timeout_s = timeout_s
        self.user = getpass.getuser()

    @staticmethod
    def available():
        return all(shutil.which(c) for c in ("sbatch", "squeue", "scontrol"))

    def _run(self, command):
        try:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SlurmError(f"{' '.join(command)}: {err}") from None
        if proc.returncode != 0:
            message = " ".join((proc.stderr or proc.stdout).split()) or f"exit code {proc.returncode}"
            raise SlurmError(f"{' '.join(command)}: {message}")
        return proc.stdout

    def partition(self, name=None):
        """The partition ``name`` (None: the cluster's default) with its nodes."""
        partitions = parse_partitions(self._run(["scontrol", "show", "partition", "-o"]))
        if name is None:
            defaults = [p for p, values in partitions.items() if values.get("Default") == "YES"]
            if not defaults:
                raise SlurmError("the cluster has no default partition: set resources.partition "
                                 f"(or --partition); partitions: {', '.join(partitions)}")
            name = defaults[0]
        if name not in partitions:
            raise SlurmError(f"resources.partition={name} (--partition): no such partition; "
                             f"partitions here: {', '.join(partitions) or 'none'}")
        nodes = parse_nodes(self._run(["scontrol", "show", "node", "-o"]))
        return make_partition(partitions[name], nodes)

    def max_array_size(self):
        value = parse_config_value(self._run(["scontrol", "show", "config"]), "MaxArraySize")
        return int(value) if value and value.isdigit() else None

    def installed(self, command):
        """Whether ``command`` is on the PATH."""
        return shutil.which(command) is not None

    def accounting(self):
        """Whether ``sacct`` answers (the cluster keeps accounting through slurmdbd)."""
        if not self.installed("sacct"):
            return False
        try:
            self._run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "now"])
        except SlurmError:
            return False
        return True

    def queue(self, job_name):
        """``{job id: (state, reason)}`` of this user's jobs named ``job_name`` (array tasks one
        by one)."""
        return parse_squeue(self._run(["squeue", "-h", "-r", "-u", self.user, "-n", job_name,
                                       "-o", "%i|%T|%r"]))

    def ended(self, job_ids):
        """``{job id: (state, exit code)}`` from sacct for ``job_ids`` (array tasks ``12_3``)."""
        arrays = sorted({str(j).split("_")[0] for j in job_ids})
        if not arrays:
            return {}
        return parse_sacct(self._run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode",
                                      "-j", ",".join(arrays)]))
