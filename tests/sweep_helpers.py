"""What the sweep tests share: a sweep file in a folder, and a Slurm cluster whose commands answer
with output recorded on a real one (``tests/data/slurm``, see its README), with stand-in
``sbatch``/``srun`` for submitit."""

import os
from pathlib import Path

import yaml

from petl_modules.training import slurm

RECORDED = Path(__file__).resolve().parent / "data" / "slurm"


def write_sweep(folder, **content):
    """A sweep file in ``folder`` (its data folder made, so that a real launch accepts it)."""
    data = folder / "data" / "fluent_speech_commands_dataset"
    data.mkdir(parents=True, exist_ok=True)
    body = {"output_folder": str(folder / "out"), "data_root": str(folder / "data"),
            "recipes": {"FSC": "fluent_speech_commands_dataset"}, "methods": ["linear"]}
    body.update(content)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def recorded(name):
    return (RECORDED / name).read_text()


class ScriptedCluster(slurm.Cluster):
    """``slurm.Cluster`` whose commands print recorded text: ``kind`` ``cpu`` (the 2-CPU test
    cluster) or ``gpu``; ``queues``: squeue's output at each call (the last one repeats; a
    callable is called for it, so that a test can act between polls);
    ``sacct``: its outputs at each call (the last one repeats; None: no accounting)."""

    def __init__(self, kind="cpu", queues=("",), sacct=("",), max_array_size=None):
        super().__init__()
        self.kind, self.queues, self.sacct = kind, list(queues), None if sacct is None else list(sacct)
        self.max_array = max_array_size
        self.commands = []

    def installed(self, command):
        return command == "sacct" or super().installed(command)  # scripted, whatever this host has

    def _run(self, command):
        self.commands.append(command)
        if command[:3] == ["scontrol", "show", "partition"]:
            return recorded(f"partition_{self.kind}.txt")
        if command[:3] == ["scontrol", "show", "node"]:
            return recorded(f"node_{self.kind}.txt")
        if command[:3] == ["scontrol", "show", "config"]:
            text = recorded("config.txt")
            return text if self.max_array is None else text.replace(
                "MaxArraySize            = 4", f"MaxArraySize            = {self.max_array}")
        if command[0] == "squeue":
            answer = self.queues.pop(0) if len(self.queues) > 1 else self.queues[0]
            return answer() if callable(answer) else answer
        if command[0] == "sacct":
            if self.sacct is None:
                raise slurm.SlurmError("sacct: Slurm accounting storage is disabled")
            if "-S" in command:  # Cluster.accounting's probe
                return ""
            return self.sacct.pop(0) if len(self.sacct) > 1 else self.sacct[0]
        raise AssertionError(f"unexpected command {command}")


def fake_submission(folder, monkeypatch, first_id=4242, refuse=None):
    """Stand-in ``srun``, ``sbatch`` (and ``squeue``) on the PATH: sbatch keeps each script it is given in
    ``folder/record`` and answers job ids from ``first_id`` up (or, ``refuse``: prints that text
    on stderr and fails, as sbatch does). Returns the record folder."""
    bin_folder, record = folder / "bin", folder / "record"
    bin_folder.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    (bin_folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    if refuse:
        (record / "refusal.txt").write_text(refuse)
        sbatch = '#!/bin/sh\ncat "$FAKE_SLURM_DIR/refusal.txt" >&2\nexit 1\n'
    else:
        sbatch = ('#!/bin/sh\nn=$(ls "$FAKE_SLURM_DIR" | grep -c sbatch)\n'
                  'cp "$1" "$FAKE_SLURM_DIR/submitted.$n.sbatch"\n'
                  f'echo "Submitted batch job $(({first_id} + n))"\n')
    (bin_folder / "sbatch").write_text(sbatch)
    # the ScriptedCluster answers for squeue; main() only checks that it is there
    (bin_folder / "squeue").write_text("#!/bin/sh\necho 'not this one' >&2\nexit 1\n")
    for name in ("srun", "sbatch", "squeue"):
        (bin_folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(record))
    return record
