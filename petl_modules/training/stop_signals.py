"""Stopping a run cleanly when a cluster asks: checkpoint at the next step boundary, then exit.

Slurm warns a job before its time limit with the signal ``--signal`` names (the sweep asks for
SIGUSR2, 120 s ahead) and stops it with SIGTERM on preemption, ``scontrol requeue`` and
``scancel``, then SIGKILL after its grace period (``KillWait``, 30 s by default). While the Brain
trains or evaluates, ``StopSignals`` turns either signal into a request: the training loop saves an
intra-epoch checkpoint at the next step boundary and the run exits (``RunInterrupted``, exit code
128 + the signal's number, as a shell reports a signal); in validation or testing it exits at the
next batch (the latest checkpoint is at most one epoch's intra-epoch interval old). Rerunning the
same command (or Slurm, requeueing the job) resumes from that checkpoint and ends as an
uninterrupted run would.

Example
-------
>>> import os, signal
>>> with StopSignals() as stop:
...     os.kill(os.getpid(), signal.SIGUSR2)
...     stop.signum == signal.SIGUSR2
True
"""

import signal
import threading

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class RunInterrupted(SystemExit):
    """The run stopped on a signal, its progress checkpointed where it could be: rerun to resume.
    The exit code is 128 + the signal's number (SIGTERM: 143, SIGUSR2: 140)."""

    def __init__(self, signum):
        super().__init__(128 + int(signum))
        self.signum = int(signum)


class StopSignals:
    """Catches SIGUSR2 and SIGTERM while active (a context manager, in the main thread; elsewhere
    it does nothing): ``signum`` is the first one caught, else None. The handlers in place
    before are put back on exit."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _catch(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._catch)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


def signal_name(signum):
    """``SIGTERM`` for 15, ..."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
