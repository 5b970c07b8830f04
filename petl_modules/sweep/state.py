"""The state of a sweep's runs: done, running or pending from each run folder, the Slurm job ids
recorded at submission, what a job's log says about its end, and the progress lines."""

import json
import os
import re
import sys
import time
from pathlib import Path

from petl_modules import results
from petl_modules.training.run_folder import lock_holder

STATE_FOLDER = ".sweep"  # inside the sweep's output folder: submitit logs, Slurm job ids
JOBS_FILE = "jobs.json"
STATES = ("done", "running", "queued", "failed", "pending")
POLL_S = {"local": 2.0, "slurm": 60.0}  # seconds between state checks (--poll_s)


def run_state(folder):
    """``done`` (a results.json the results tool reads: any metric), ``running`` (a live process
    holds its lock) or ``pending`` (never started, interrupted or failed: to be run or resumed)."""
    folder = Path(folder)
    path = folder / "results.json"
    if path.is_file():
        try:
            results.read_run(path)
            return "done"
        except results.ResultsError:
            pass  # partial or damaged: the recipe resumes it and writes it again
    return "running" if lock_holder(folder) else "pending"


def read_jobs(state_folder):
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
    lines = log_lines(path)
    ended = ""
    for line in lines:
        match = _SLURM_END.search(line)
        if match and match.group(1) != "JOB REQUEUE":  # a requeue is not an end
            ended = _SLURM_CAUSES.get(match.group(1) or "", f"cancelled ({(match.group(1) or '').lower()})")
    said = [line for line in lines if _ERROR.search(line) or _STOPPED.search(line)]
    message = re.sub(r"^[\w.]+ - (?=Stopped on )", "", said[-1]) if said else ""  # logger's name
    return message.rstrip(".")[:300], ended


def log_lines(path):
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


def last_line(path):
    """The recipe's error line in a job's log, else its last line, or ''."""
    lines = [line for line in log_lines(path) if not _SLURM_END.search(line)]
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
