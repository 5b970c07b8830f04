"""Running recipe commands as submitit jobs: local processes or a Slurm job array.

The sweep tool (``petl_modules.sweep``) decides what runs; this module only hands commands to
submitit, which owns the scheduling: ``LocalExecutor`` (one process per job, started at once:
the caller throttles) and ``SlurmExecutor`` (``batch()`` makes one job array). A job is a
``RecipeRun``: the recipe command in a subprocess. It is ``submitit.helpers.Checkpointable``, so a
Slurm job that is preempted or reaches its time limit is requeued with the same command, and the
recipe resumes from its latest checkpoint (``ckpt_interval_minutes``, end of every epoch).

Whether a run succeeded is read from its output folder (``results.json``), never from submitit's
result pickles. The pickles submitit writes in its folder are the sweep's own jobs.

Example
-------
>>> run = RecipeRun(["python", "-c", "print('hello')"], cwd=".")
>>> run.command[-1]
"print('hello')"
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

# Slurm job states in which a job still holds (or waits for) a place: its run is not to be
# submitted again (sacct's names, as submitit reports them).
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


class RecipeRunError(RuntimeError):
    """The recipe command exited with an error (its log says why)."""


class RecipeRun(submitit.helpers.Checkpointable):
    """One recipe command, run in a subprocess (its output goes to the job's log).

    ``checkpoint`` (inherited) resubmits the same command on preemption or timeout: the recipe
    itself resumes from its checkpoints, so nothing else has to be saved.
    """

    def __init__(self, command, cwd, env=None):
        self.command = [str(part) for part in command]
        self.cwd = str(cwd)
        self.env = dict(env or {})

    def __call__(self):
        print(f"[sweep] {shlex.join(self.command)}", flush=True)
        # subprocess.run kills the recipe if this job is interrupted (requeue, cancel)
        code = subprocess.run(self.command, cwd=self.cwd, env={**os.environ, **self.env}).returncode
        if code != 0:
            raise RecipeRunError(f"the recipe exited with code {code}: {shlex.join(self.command)}")
        return code


# ==================================================================== local processes
def local_executor(folder, timeout_min, gpus=()):
    """A ``LocalExecutor`` writing its logs in ``folder``, whose job sees the GPUs of indices
    ``gpus`` only (``CUDA_VISIBLE_DEVICES``; none when empty)."""
    executor = submitit.LocalExecutor(folder=str(folder))
    devices = {"gpus_per_node": len(gpus), "visible_gpus": tuple(int(g) for g in gpus)} if gpus else {}
    executor.update_parameters(timeout_min=timeout_min, **devices)
    return executor


def local_job_exit_code(job):
    """The exit code of a finished local job's process (None while it runs or when unknown)."""
    process = getattr(job, "_process", None)
    return None if process is None else process.poll()


# ==================================================================== Slurm
def slurm_parameters(resources, job_name):
    """submitit's Slurm parameters (sbatch's names) from the sweep's ``resources``: partition,
    GPUs per run, CPUs per run, time, array parallelism, memory, account, QoS, constraint."""
    params = {
        "job_name": job_name,
        "time": int(resources["time_min"]),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": int(resources["cpus_per_run"]),
        "array_parallelism": int(resources["array_parallelism"]),
        "signal_delay_s": 120,  # SIGUSR2 that long before the limit: the job requeues itself
    }
    if int(resources["gpus_per_run"]) > 0:
        params["gpus_per_node"] = int(resources["gpus_per_run"])
    if resources.get("mem_gb"):
        params["mem"] = f"{int(resources['mem_gb'])}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if resources.get(key):
            params[key] = str(resources[key])
    return params


def slurm_executor(folder, params):
    """A ``SlurmExecutor`` (needs ``srun`` on the PATH) with ``params`` (``slurm_parameters``)."""
    executor = submitit.SlurmExecutor(folder=str(folder))
    executor.update_parameters(**params)
    return executor


def slurm_script(folder, params, array_size):
    """The sbatch file ``SlurmExecutor`` submits for a job array of ``array_size`` runs with
    ``params``, written here without a cluster (for ``--dry_run``)."""
    # SlurmExecutor's own command line (``_submitit_command_str``) for the array's jobs
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=str(folder), map_count=array_size, **params)


def slurm_job(folder, job_id):
    """A handle on an earlier Slurm job of the sweep (its state is read with ``sacct``)."""
    return submitit.SlurmJob(folder=str(folder), job_id=str(job_id))


def job_logs(job):
    """``(stdout, stderr)`` log paths of a submitted job."""
    return Path(job.paths.stdout), Path(job.paths.stderr)
