"""A sweep's runs as local processes (submitit), at most ``max_parallel`` at once, one GPU each
when there are GPUs."""

import sys
import time

from petl_modules.paths import project_root
from petl_modules.sweep.plan import recipe_command
from petl_modules.sweep.resources import visible_gpus
from petl_modules.sweep.state import POLL_S, STATE_FOLDER, Progress, last_line, run_state
from petl_modules.sweep.sweep_file import SweepError
from petl_modules.training import launch


def run_local(runs, sweep, resources, out=None):
    """Runs ``runs`` as local submitit jobs, at most ``max_parallel`` at once (runs that a
    process outside this sweep holds count too), one GPU each when GPUs are visible. Returns
    ``{run name: (state, note)}`` at the end."""
    out = out or sys.stdout
    gpus = visible_gpus()
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
    pool = LocalPool(runs, per_run, gpus, progress)
    gpu_note = f", {per_run} GPU each" if per_run else " (no GPU)"
    print(f"[sweep] {len(runs)} runs: {len(pool.ended)} done, {len(pool.external)} running in "
          f"another process (waited for), {len(pool.queue)} to run, {max_parallel} at once"
          f"{gpu_note}; logs in {folder}", file=out, flush=True)
    while pool.queue or pool.active or pool.external:
        pool.check_external()
        pool.check_active()
        while pool.queue and len(pool.active) + len(pool.external) < max_parallel \
                and len(pool.free) >= per_run:
            pool.start_next(folder, resources["time_min"])
        if pool.queue or pool.active or pool.external:
            time.sleep(POLL_S["local"])
    return pool.ended


class LocalPool:
    """The local runs of a sweep: queued, active (this sweep's jobs, with their GPUs), external
    (held by another process: waited for) and ended (``{name: (state, note)}``)."""

    def __init__(self, runs, per_run, gpus, progress):
        self.per_run, self.free, self.progress = per_run, list(gpus), progress
        self.by_name = {run.name: run for run in runs}
        self.queue, self.external, self.active, self.ended = [], set(), {}, {}
        for run in runs:
            run.gpus = per_run
            state = run_state(run.folder)
            progress.set(run.name, state, quiet=True)
            if state == "done":
                self.ended[run.name] = ("done", "")
            elif state == "running":
                self.external.add(run.name)
            else:
                self.queue.append(run)

    def check_external(self):
        """Runs of other processes: waited for until their locks are released."""
        for name in sorted(self.external):
            state = run_state(self.by_name[name].folder)
            if state != "running":
                self.external.discard(name)
                if state == "done":
                    self.ended[name] = ("done", "")
                    self.progress.set(name, "done")
                else:  # stopped without finishing: resume it here
                    self.queue.insert(0, self.by_name[name])
                    self.progress.set(name, "pending", "stopped elsewhere: will resume")

    def check_active(self):
        """This sweep's jobs that ended: done, taken over by another process, or failed."""
        for name, (job, assigned) in list(self.active.items()):
            if not job.done():
                continue
            del self.active[name]
            self.free += assigned
            state = run_state(self.by_name[name].folder)
            if state == "done":
                self.ended[name] = ("done", "")
                self.progress.set(name, "done")
            elif state == "running":  # another process took the folder over
                self.external.add(name)
            else:
                stdout, stderr = launch.local_job_logs(job)
                code = launch.local_job_exit_code(job)
                reason = last_line(stderr) or f"exit code {code}"
                self.ended[name] = ("failed", f"{reason}; log {stderr} (and {stdout.name})")
                self.progress.set(name, "failed", f"log {stderr}")

    def start_next(self, folder, time_min):
        """Starts the next queued run (unless its state changed since the plan)."""
        run = self.queue.pop(0)
        state = run_state(run.folder)
        if state == "running":
            self.external.add(run.name)
        if state != "pending":
            self.ended.update({run.name: ("done", "")} if state == "done" else {})
            self.progress.set(run.name, state)
            return
        assigned, self.free = self.free[:self.per_run], self.free[self.per_run:]
        executor = launch.local_executor(folder, time_min, gpus=assigned)
        job = executor.submit(launch.RecipeRun(recipe_command(run), project_root(),
                                               {"PYTHONUNBUFFERED": "1"}))
        self.active[run.name] = (job, assigned)
        self.progress.set(run.name, "running",
                          f"job {job.job_id}" + (f", GPU {assigned}" if assigned else ""))
