"""The output folder of a run, claimed for the block of its folds (``claimed_output_folder``):
locked, its run identity checked, and every error a user can fix turned into one line."""

import contextlib
import errno
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from petl_modules.model.audio import AudioError
from petl_modules.training.checkpointing import CheckpointError
from petl_modules.training.compose import scalar_hparams
from petl_modules.training.prepare import DataError
from petl_modules.training.run_folder import RunFolderError, RunLock, check_run_identity, run_identity


@contextlib.contextmanager
def claimed_output_folder(run):
    """Within the block the output folder is this run's: locked (one process tree at a time), its
    recorded run identity checked (or recorded) and the experiment directory made. An error a user
    can fix (output folder, data, checkpoints, full disk) leaves the block as one line
    (``sys.exit``); the lock is released either way."""
    lock = RunLock(run.output_folder)
    try:
        _on_main_then_everywhere(_claim_output_folder, lock, run.hparams)
        sb.create_experiment_directory(experiment_directory=str(run.output_folder))
        yield run.output_folder
        if _distributed():
            torch.distributed.barrier()  # every process is done before the group goes
    except RunFolderError as err:
        sys.exit(f"Error with the output folder: {err}")
    except (DataError, AudioError) as err:
        sys.exit(f"Error in the data: {_worker_message(err)}")
    except CheckpointError as err:
        sys.exit(f"Error in the checkpoints: {err}")
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        sys.exit(
            f"Error: no space left on the disk while writing to {run.output_folder} ({err}). "
            "Free some space (or pass --output_folder on another disk) and rerun the same command: "
            "it resumes from the last complete checkpoint."
        )
    finally:
        lock.release()
        if _distributed():
            # An explicit end: gloo aborts a process that exits with its group still alive.
            torch.distributed.destroy_process_group()


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _worker_message(err):
    """The message of an error raised in a DataLoader worker, without the worker's traceback."""
    message = str(err).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def _disk_full(err):
    """True for the errors a full disk gives (Python's ENOSPC, torch.save's failed write)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left" in str(err) or "file write failed" in str(err)


def _claim_output_folder(lock, hparams):
    """Locks the output folder for this run and checks (or records) the run's identity (with the
    fingerprint the lobe took of its checkpoint while loading it)."""
    lock.acquire()
    identity = run_identity(scalar_hparams(hparams), hparams["backbone"].fingerprint()["sha256"])
    check_run_identity(hparams["output_folder"], identity)


def _on_main_then_everywhere(function, *args):
    """Runs ``function`` on the main process; under DDP every process then raises its
    ``RunFolderError`` (if any), so that no process goes on alone."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return function(*args)
    message = [None]
    if if_main_process():
        try:
            function(*args)
        except RunFolderError as err:
            message = [str(err)]
    torch.distributed.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RunFolderError(message[0])
