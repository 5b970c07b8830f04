"""An output folder belongs to one run: its identity is recorded, and one process tree at a time.

Rerunning a command resumes its run from the latest checkpoint (SpeechBrain style). That is only
right when the command describes the same run, so the first start records the run's identity in
``<output_folder>/run_identity.json`` and every later start compares. Options fall in three classes:

- model-defining (the method, every method and dataset option, the seed, the backbone's weights
  fingerprint, ...): a different value is an error naming the option and both values;
- schedule (``lr``, ``head_lr``, ``number_of_epochs``): the optimiser state and the cosine schedule
  in the checkpoints were made with the recorded values, so a change is refused too;
- plumbing (paths, workers, checkpoint interval, tracking): free.

``RunLock`` is an OS lock (``filelock`` on ``fcntl``/``flock``) on ``<output_folder>/.run.lock``,
taken by the main process: a second run on the same folder is refused, naming the holder. The OS
releases it when its process dies, so a killed run never blocks its own resume.

Example
-------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with RunLock(folder):
...     check_run_identity(folder, {"method": "lora", "options": {"seed": 1}, "schedule": {}})
"""

import json
import logging
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from petl_modules.files import current_umask, write_json_atomic  # noqa: F401 (also used from here)

logger = logging.getLogger(__name__)

IDENTITY_FILE = "run_identity.json"
LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.lock.holder.json"

# Options that never change what a run computes.
PLUMBING = {
    "data_folder", "output_folder", "experiment_folder", "save_folder", "train_log",
    "manifest_folder", "num_workers", "skip_bad_files", "ckpt_interval_minutes",
    "ckpt_interval_steps", "use_wandb", "wandb_project", "wandb_entity", "wandb_run_name",
    "backbone_source",  # a local copy of the same checkpoint is the same run: the fingerprint decides
    "fold",  # each fold has its own experiment folder (fold_<k>/): folds of one run share the output
    "window_results",  # an extra file of the test; the results are the same
    "dataset_name",  # the data's name in results tables: a label
}
# Options the optimiser state and learning-rate schedule in the checkpoints were made with.
SCHEDULE = {"lr", "head_lr", "number_of_epochs"}


class RunFolderError(ValueError):
    """An output folder that belongs to another run, or is in use."""


def run_identity(options, fingerprint=None):
    """``{"options": model-defining, "schedule": ..., "backbone_fingerprint": ...}`` of a run.

    Arguments
    ---------
    options : dict
        The run's plain options (``petl_modules.training.compose.scalar_hparams``).
    fingerprint : str, optional
        sha256 of the base checkpoint's weights (``petl_modules.backbones.base.Backbone.fingerprint``).
    """
    return {
        "options": {k: v for k, v in sorted(options.items())
                    if k not in PLUMBING and k not in SCHEDULE and not k.startswith("__")},
        "schedule": {k: options[k] for k in sorted(SCHEDULE) if k in options},
        "backbone_fingerprint": fingerprint,
    }


def _has_run(folder):
    """True when ``folder`` holds what a run leaves (checkpoints, fold results)."""
    folder = Path(folder)
    return any(folder.glob("save/CKPT+*")) or any(folder.glob("fold_*/save/CKPT+*")) \
        or any(folder.glob("**/fold_result.json"))


def check_run_identity(folder, identity, write=True):
    """Compares ``identity`` with the one recorded in ``folder`` (records it when there is none).

    Raises
    ------
    RunFolderError
        Naming the option, its recorded and its new value, and how to start afresh.
    """
    folder = Path(folder)
    path = folder / IDENTITY_FILE
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as stream:
                recorded = json.load(stream)
            if not isinstance(recorded, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as err:
            err = "nested too deeply" if isinstance(err, RecursionError) else err
            raise RunFolderError(
                f"{path} cannot be read ({err}): the output folder's record of its run is damaged. "
                f"Start afresh with another --output_folder (or delete {folder})."
            ) from None
        differences = _differences(recorded, identity)
        if differences:
            kind, key, old, new = differences[0]
            listed = "; ".join(f"{k} {o!r} -> {n!r}" for _, k, o, n in differences[:6])
            if kind == "schedule":
                why = (f"the checkpoints there were trained with --{key}={old!r} (optimiser state "
                       "and learning-rate schedule); changing it on resume is not supported")
            elif key == "backbone_fingerprint":
                why = "the backbone checkpoint's weights differ from those the run started with"
            else:
                why = f"it was made by a run with --{key}={old!r}, this command says {new!r}"
            raise RunFolderError(
                f"The output folder {folder} belongs to another run: {why} ({listed}). Rerun with "
                f"the recorded values to resume it, or start afresh with a new --output_folder "
                f"(or delete {folder})."
            )
        return
    if _has_run(folder):
        logger.warning(
            f"{folder} holds a run but no {IDENTITY_FILE} (made by an older version): its options "
            "cannot be compared with this command's; recording this command's."
        )
    if write:
        write_json_atomic(path, identity)


def _differences(recorded, identity):
    """``[(kind, key, recorded value, new value)]`` of every model-defining or schedule change."""
    found = []
    if recorded.get("backbone_fingerprint") and identity.get("backbone_fingerprint") \
            and recorded["backbone_fingerprint"] != identity["backbone_fingerprint"]:
        found.append(("model", "backbone_fingerprint", recorded["backbone_fingerprint"][:12],
                      identity["backbone_fingerprint"][:12]))
    for kind in ("options", "schedule"):
        old, new = recorded.get(kind) or {}, identity.get(kind) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                entry = ("schedule" if kind == "schedule" else "model", key,
                         old.get(key, "<unset>"), new.get(key, "<unset>"))
                found.append(entry)
    found.sort(key=lambda d: (d[1] != "method", d[0] == "schedule"))  # the method first
    return found


class RunLock:
    """An OS lock on ``<folder>/.run.lock`` for the lifetime of a run (a context manager).

    Acquired without waiting: when another live process holds it, ``RunFolderError`` names that
    process (host, pid, start time, command line), read from ``.run.lock.holder.json``.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.lock = FileLock(str(self.folder / LOCK_FILE), blocking=False, fallback_to_soft=False,
                             thread_local=False)

    def acquire(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise RunFolderError(
                f"The output folder {self.folder} is in use by another run ({self._holder()}). "
                "Wait for it to finish (or stop it), or use another --output_folder."
            ) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _shareable_command()}
        write_json_atomic(self.folder / HOLDER_FILE, holder)
        return self

    def _holder(self):
        try:
            if not (self.folder / HOLDER_FILE).is_file():  # e.g. a FIFO: reading would block
                raise ValueError("not a regular file")
            with open(self.folder / HOLDER_FILE, encoding="utf-8") as stream:
                holder = json.load(stream)
            return (f"process {holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}: {holder.get('command')}")
        except (OSError, ValueError, AttributeError, RecursionError):
            return "a process that has not recorded itself yet"

    def release(self):
        if self.lock.is_locked:
            try:
                (self.folder / HOLDER_FILE).unlink()
            except OSError:
                pass
            self.lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _shareable_command():
    """This process's command line without the paths of this machine (as metrics.json's), for the
    holder file: a run folder may be shared or copied whole."""
    from petl_modules.model.metrics_file import run_command
    from petl_modules.paths import ProjectRootError, project_root

    try:
        root = project_root()
    except ProjectRootError:
        root = None
    return run_command(root=root)


def lock_holder(folder):
    """Who holds the run lock of ``folder``: the holder's description (as ``RunLock`` names it in
    its error) while a live process holds it, else None (never run, finished or killed: the OS
    released the lock with its process). Probes by taking the lock for an instant, so it is
    meant for folders of runs that are not being started by the caller at the same moment."""
    folder = Path(folder)
    if not (folder / LOCK_FILE).is_file():
        return None
    probe = RunLock(folder)
    try:
        probe.lock.acquire()
    except Timeout:
        return probe._holder()
    probe.lock.release()
    return None
