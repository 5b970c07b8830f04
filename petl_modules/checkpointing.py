"""What a checkpoint needs beyond SpeechBrain's defaults for a resumed run to equal an uninterrupted one.

SpeechBrain's Checkpointer already restores the modules, the optimiser and scheduler (registered
by the Brain), the epoch counter, the position in the training DataLoader and the Brain's step and
running loss. What it does not restore is the random state: after a resume, dropout masks and
SpecAugment masks would be drawn from the state the seed left at start-up instead of the state the
interrupted run had reached. ``RandomState`` checkpoints it, per process.

SpeechBrain also writes a checkpoint's meta file (which makes a folder a checkpoint) before its
parameter files: a run killed while saving would leave a checkpoint that cannot be loaded, and
the rerun would fail on it. ``Checkpointer`` writes the meta file last.
"""

import logging
import os
import random
import shutil

import numpy as np
import torch
from speechbrain.utils import checkpoints
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process, is_distributed_initialized

logger = logging.getLogger(__name__)


def _states():
    """The random states of this process: Python, NumPy, torch CPU and (if used) current CUDA device."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_states(states):
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomState:
    """Checkpoint recoverable for the random number generators of every process.

    Under DDP each process has drawn a different amount of randomness (e.g. dropout on batches of
    different lengths), so the states of all processes are gathered and saved by the main one; on
    loading, each process takes its own back. Listed in the checkpointer's ``recoverables``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "random_state.ckpt"
    >>> state = RandomState()
    >>> _ = torch.manual_seed(1)
    >>> state.save(path)
    >>> first = torch.rand(3)
    >>> state.load(path, end_of_epoch=False)
    >>> torch.equal(torch.rand(3), first)
    True
    """

    @mark_as_saver
    def save(self, path):
        states = _states()
        if is_distributed_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        if if_main_process():
            torch.save(gathered, path)

    @mark_as_loader
    def load(self, path, end_of_epoch):
        del end_of_epoch  # the state is restored exactly where it was saved
        gathered = torch.load(path)
        rank = torch.distributed.get_rank() if is_distributed_initialized() else 0
        world = torch.distributed.get_world_size() if is_distributed_initialized() else 1
        if len(gathered) != world:
            logger.warning(
                f"{path} holds the random state of {len(gathered)} process(es) but this run has "
                f"{world}: continuing, but not with the random draws the interrupted run would have "
                "made (resume with the same number of processes for identical results)."
            )
        _set_states(gathered[rank % len(gathered)])


# Every process takes part in saving (the states are gathered); only the main one writes the file.
register_checkpoint_hooks(RandomState, save_on_main_only=False)


class Checkpointer(checkpoints.Checkpointer):
    """SpeechBrain's ``Checkpointer`` whose checkpoints exist only once complete.

    The meta file is written under a temporary name and renamed when every parameter file is
    written, so a run killed while saving leaves a folder that is not a checkpoint: resuming
    ignores it and takes the previous checkpoint; the next save deletes such leftovers.
    """

    INCOMPLETE = ".incomplete"

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        return super()._save_checkpoint_metafile(
            fpath.with_name(fpath.name + self.INCOMPLETE), meta_to_include, end_of_epoch
        )

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        checkpoint = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        if if_main_process():
            meta_file = checkpoint.path / checkpoints.METAFNAME
            os.replace(meta_file.with_name(meta_file.name + self.INCOMPLETE), meta_file)
            for folder in self.checkpoints_dir.glob(f"{checkpoints.CKPT_PREFIX}+*"):
                if folder.is_dir() and not self._is_checkpoint_dir(folder):
                    logger.info(f"Deleting {folder}: a checkpoint left incomplete by a killed run.")
                    shutil.rmtree(folder)
        return checkpoint
