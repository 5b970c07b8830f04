"""Running recipe commands as submitit jobs: local processes or a Slurm job array.

The sweep tool (``petl_modules.sweep``) decides what runs; this module only hands commands to
submitit, which owns the scheduling: ``LocalExecutor`` (one process per job, started at once:
the caller throttles) and ``SlurmExecutor`` (``batch()`` makes one job array; ``submit_arrays``
makes as many as the cluster's ``MaxArraySize`` needs). A job is a ``RecipeRun``: the recipe
command in a subprocess. It is ``submitit.helpers.Checkpointable``, so a Slurm job that is
preempted or reaches its time limit is requeued with the same command, and the recipe resumes from
its latest checkpoint (``ckpt_interval_minutes``, end of every epoch).

Signals: Slurm sends SIGUSR2 (``--signal``, 120 s before the time limit) and SIGTERM (preemption,
``scontrol requeue``, ``scancel``) to every process of the job. ``RecipeRun`` passes them on to the
recipe (which checkpoints at its next step and exits, ``petl_modules.training.stop_signals``),
waits for it, then: after SIGUSR2 it lets submitit requeue the job; after SIGTERM it exits without
a result, and Slurm requeues the job or ends it as it decided.

Whether a run succeeded is read from its output folder (``results.json``), never from submitit's
result pickles. The pickles submitit writes in its folder are the sweep's own jobs.

Example
-------
>>> run = RecipeRun(["python", "-c", "print('hello')"], cwd=".")
>>> run.command[-1]
"print('hello')"
"""

import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths
from submitit.slurm.slurm import _make_sbatch_string

from petl_modules.training.stop_signals import STOP_SIGNALS

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
        process = subprocess.Popen(self.command, cwd=self.cwd, env={**os.environ, **self.env})
        caught = []

        def pass_on(signum, frame):
            caught.append(signum)
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {number: signal.signal(number, pass_on) for number in STOP_SIGNALS}
        try:
            code = process.wait()
        except BaseException:
            process.kill()  # this job is interrupted otherwise (Ctrl-C): the recipe goes with it
            process.wait()
            raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if caught and code != 0:
            print(f"[sweep] The recipe stopped on {signal.Signals(caught[0]).name} (exit code "
                  f"{code}); it resumes from its checkpoint when the job runs again.", flush=True)
            handler = previous.get(signal.SIGUSR2)
            if signal.SIGUSR2 in caught and callable(handler):
                handler(signal.SIGUSR2, None)  # submitit: requeue this job, then exit
            sys.exit(code if code > 0 else 128 - code)  # no result: Slurm requeues or ends the job
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
class SubmissionError(RuntimeError):
    """sbatch refused a job array (the message is sbatch's own)."""


def slurm_parameters(resources, job_name, setup=None):
    """submitit's Slurm parameters (sbatch's names) from the sweep's checked ``resources``:
    partition, GPUs per run (``--gpus-per-node=[type:]N``, or ``--gres`` as given), CPUs per run,
    time, array parallelism, memory, account, QoS, constraint; and the sweep file's ``setup``
    (``sbatch``: extra ``--option[=value]``s, ``commands``: shell lines run before the recipe)."""
    params = {
        "job_name": job_name,
        "time": int(resources["time_min"]),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": int(resources["cpus_per_run"]),
        "array_parallelism": int(resources["array_parallelism"]),
        "signal_delay_s": 120,  # SIGUSR2 that long before the limit: the job requeues itself
    }
    if resources.get("gres"):
        params["gres"] = str(resources["gres"])
    elif int(resources["gpus_per_run"]) > 0:
        gpus = int(resources["gpus_per_run"])
        params["gpus_per_node"] = f"{resources['gpu_type']}:{gpus}" if resources.get("gpu_type") else gpus
    if resources.get("mem_gb"):
        params["mem"] = f"{int(resources['mem_gb'])}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if resources.get(key):
            params[key] = str(resources[key])
    setup = setup or {}
    if setup.get("commands"):
        params["setup"] = list(setup["commands"])
    if setup.get("sbatch"):
        extra = {}
        for option in setup["sbatch"]:
            name, sep, value = option[2:].partition("=")
            extra[name] = value if sep else True
        params["additional_parameters"] = extra
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


def submit_arrays(executor, runs, sizes):
    """Submits ``runs`` (``RecipeRun``s) as job arrays of ``sizes`` (in order; ``sum(sizes) ==
    len(runs)``); returns their job ids (``<array>_<task>``; submitit submits an array of one as
    a plain job: ``<job>``), one per run.

    Raises
    ------
    SubmissionError
        sbatch refused an array: its error lines (``sbatch: error: ...``). Arrays submitted
        before it stay submitted; the ids of their runs are in ``err.submitted``.
    """
    ids, start = [], 0
    for size in sizes:
        try:  # submitit prints sbatch's refusal too: it is in the error
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(run) for run in runs[start:start + size]]
        except (FailedJobError, FailedSubmissionError) as err:
            lines = [" ".join(line.split()) for line in str(err).splitlines()]
            said = [line for line in lines if "error" in line.lower()] or lines[-1:]
            failure = SubmissionError(" ".join(dict.fromkeys(said)) or "sbatch failed")
            failure.submitted = ids
            raise failure from None
        ids += [str(job.job_id) for job in jobs]
        start += size
    return ids


def job_logs(folder, job_id):
    """``(stdout, stderr)`` log paths of the job ``job_id`` submitted from ``folder``."""
    paths = JobPaths(str(folder), job_id=str(job_id), task_id=0)
    return Path(paths.stdout), Path(paths.stderr)


def local_job_logs(job):
    """``(stdout, stderr)`` log paths of a local job."""
    return Path(job.paths.stdout), Path(job.paths.stderr)
