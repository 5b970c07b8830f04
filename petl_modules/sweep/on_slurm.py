"""A sweep's runs as Slurm job arrays: submitted (the runs neither done, queued nor running),
then followed until each ends, with the cause of every failure."""

import re
import sys
import time

from petl_modules.files import write_json_atomic
from petl_modules.paths import project_root
from petl_modules.sweep.plan import recipe_command
from petl_modules.sweep.state import (
    JOBS_FILE,
    POLL_S,
    STATE_FOLDER,
    STATES,
    Progress,
    last_line,
    read_jobs,
    read_log,
    run_state,
)
from petl_modules.sweep.sweep_file import SweepError
from petl_modules.training import launch, slurm

SACCT_POLLS = 5  # polls to wait for sacct to record the end of a job that left the queue


def job_name(sweep):
    """The Slurm job name of the sweep's arrays (``squeue -n <name>``): ``sweep-<folder name>``."""
    return "sweep-" + (re.sub(r"[^A-Za-z0-9._-]", "-", sweep["root"].name) or "runs")


def slurm_params(sweep, resources):
    return launch.slurm_parameters(resources, job_name(sweep), sweep.get("setup"))


def setup_lines(sweep):
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
    tracker = SlurmRuns(sweep, cluster, Progress(out), out)
    if not tracker.accounting:
        print("[sweep] Slurm accounting (sacct) is not available here: states come from squeue; a "
              "run that ends without results.json is reported failed with its log, and its cause "
              "(cancelled, time limit, ...) is read from that log where Slurm wrote it.",
              file=out, flush=True)
    to_submit = tracker.sort(runs, int(resources["gpus_per_run"] or 0))
    if to_submit:
        tracker.submit(to_submit, sweep, resources, max_array)
    if not wait:
        print(f"[sweep] Not waiting (--no_wait): squeue -n {tracker.name} shows the jobs; rerun the "
              "same command to follow them and write the report.", file=out, flush=True)
        return None
    if tracker.follow:
        print(f"[sweep] Following {len(tracker.follow)} run(s): squeue every {POLL_S['slurm']:g} s "
              f"(--poll_s); squeue -n {tracker.name} shows them too.", file=out, flush=True)
    by_name = {run.name: run for run in runs}
    while tracker.follow:
        time.sleep(POLL_S["slurm"])
        tracker.poll(by_name)
    return tracker.ended


class SlurmRuns:
    """The runs of a sweep on Slurm: ``follow`` (run name -> job id, None: followed by its lock)
    and ``ended`` (``{name: (state, note)}``), with the job ids recorded in ``jobs.json``."""

    def __init__(self, sweep, cluster, progress, out):
        self.cluster, self.progress, self.out = cluster, progress, out
        self.state_folder = sweep["root"] / STATE_FOLDER
        self.folder = self.state_folder / "submitit"
        self.name = job_name(sweep)
        self.accounting = cluster.accounting()
        self.follow, self.ended, self.left_queue, self.squeue_failed = {}, {}, {}, False

    def sort(self, runs, gpus_per_run):
        """Sorts the runs into done, followed (queued, running) and to submit (returned)."""
        try:
            queue = self.cluster.queue(self.name)
        except slurm.SlurmError as err:
            raise SweepError(f"squeue failed, so the sweep cannot tell which runs are queued: {err}") from None
        self.recorded = read_jobs(self.state_folder)
        to_submit = []
        for run in runs:
            run.gpus = gpus_per_run
            state = run_state(run.folder)
            job = self.recorded.get(run.name)
            if state == "done":
                self.ended[run.name] = ("done", "")
            elif job in queue:
                self.follow[run.name] = job
                state = slurm.queue_state(queue[job][0])
            elif state == "running":
                self.follow[run.name] = None
            else:
                to_submit.append(run)
            self.progress.set(run.name, state, quiet=True)
        counts = {s: sum(v == s for v in self.progress.state.values()) for s in STATES}
        by_lock = sum(job is None for job in self.follow.values())
        print(f"[sweep] {len(runs)} runs: {counts['done']} done, {counts['queued']} queued, "
              f"{counts['running']} running" + (f" ({by_lock} held by a process outside this "
                                                "sweep's jobs: followed by its lock)" if by_lock else "")
              + f", {len(to_submit)} to submit", file=self.out, flush=True)
        return to_submit

    def submit(self, to_submit, sweep, resources, max_array):
        """Submits ``to_submit`` as job arrays; their job ids are recorded, then followed."""
        sizes = slurm.array_sizes(len(to_submit), max_array)
        setup = setup_lines(sweep)
        if setup:
            print("[sweep] setup from the sweep file, in every job:\n" + "\n".join(setup),
                  file=self.out, flush=True)
        executor = launch.slurm_executor(self.folder, slurm_params(sweep, resources))
        commands = [launch.RecipeRun(recipe_command(run), project_root(), {"PYTHONUNBUFFERED": "1"})
                    for run in to_submit]
        try:
            ids = launch.submit_arrays(executor, commands, sizes)
        except launch.SubmissionError as err:
            for run, job in zip(to_submit, err.submitted):
                self.recorded[run.name] = job
            write_json_atomic(self.state_folder / JOBS_FILE, self.recorded)
            raise SweepError(f"sbatch refused the job array: {err} (check resources.partition, "
                             "account, qos, constraint and gres in the sweep file or on the command "
                             "line; --dry_run shows the sbatch file)") from None
        for run, job in zip(to_submit, ids):
            self.recorded[run.name] = job
            self.follow[run.name] = job
            self.progress.set(run.name, "queued", f"Slurm job {job}", quiet=True)
        write_json_atomic(self.state_folder / JOBS_FILE, self.recorded)
        arrays = sorted({job.split("_")[0] for job in ids}, key=int)
        print(f"[sweep] {len(to_submit)} run(s) submitted as {len(arrays)} job array(s) "
              f"({', '.join(arrays)}) named {self.name}; logs in {self.folder}", file=self.out, flush=True)

    def poll(self, by_name):
        """One look at the queue: the state of every followed run; those whose job left the
        queue without results.json end as failed (once sacct has recorded their end)."""
        try:
            queue = self.cluster.queue(self.name)
        except slurm.SlurmError as err:
            if not self.squeue_failed:
                print(f"[sweep] squeue failed ({err}); trying again at the next poll.",
                      file=self.out, flush=True)
            self.squeue_failed = True
            return
        self.squeue_failed = False
        gone = []
        for name, job in list(self.follow.items()):
            if job in queue:
                self.show_queued(name, job, *queue[job])
                continue
            state = run_state(by_name[name].folder)
            if state == "done":
                self.ended[name] = ("done", "")
                self.progress.set(name, "done")
                del self.follow[name]
            elif state == "running":
                self.progress.set(name, "running", "its lock is held" + (f"; Slurm job {job}" if job else ""))
            else:
                gone.append(name)
        self.end_gone(gone)

    def show_queued(self, name, job, state, reason):
        note = f"Slurm job {job}"
        if state in slurm.QUEUED and reason and reason != "None":
            note += f", {reason}"
            if reason in slurm.NEVER_STARTS:
                note += (f": it will not start, {slurm.NEVER_STARTS[reason]}; scancel it and "
                         "change the resources")
        self.progress.set(name, slurm.queue_state(state), note, force=reason in slurm.NEVER_STARTS)

    def end_gone(self, gone):
        """Runs whose job left the queue without results.json: failed, with the cause."""
        causes = {}
        if self.accounting and any(self.follow[n] for n in gone):
            try:
                causes = self.cluster.ended([self.follow[n] for n in gone if self.follow[n]])
            except slurm.SlurmError:
                causes = {}
        for name in gone:
            job = self.follow[name]
            sacct_state, code = causes.get(job, (None, ""))
            final = sacct_state is not None and sacct_state not in slurm.QUEUED | slurm.RUNNING
            if job and self.accounting and not final and self.left_queue.get(job, 0) < SACCT_POLLS:
                self.left_queue[job] = self.left_queue.get(job, 0) + 1  # sacct lags behind squeue
                continue
            note = failure_note(self.folder, job, sacct_state if final else None, code)
            self.ended[name] = ("failed", note)
            self.progress.set(name, "failed", note.split("; log ")[0])
            del self.follow[name]


def failure_note(folder, job, sacct_state, exit_code):
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
        message = last_line(stderr)  # no error line: the recipe's last words
    return f"Slurm job {job} {cause}" + (f": {message}" if message else "") + f"; log {stderr}"
