"""What a checkpoint needs beyond SpeechBrain's defaults: exact resumes, safe and robust loading.

SpeechBrain's Checkpointer already restores the modules, the optimiser and scheduler (registered
by the Brain), the epoch counter, the position in the training DataLoader and the Brain's step and
running loss. What it does not restore is the random state: after a resume, dropout masks and
SpecAugment masks would be drawn from the state the seed left at start-up instead of the state the
interrupted run had reached. ``RandomState`` checkpoints it, per process.

SpeechBrain also writes a checkpoint's meta file (which makes a folder a checkpoint) before its
parameter files: a run killed while saving would leave a checkpoint that cannot be loaded, and
the rerun would fail on it. ``Checkpointer`` writes the meta file last.

A checkpoint folder may come from someone else, or be damaged (a full disk, a file copied in part
or edited by hand). ``Checkpointer`` therefore

- never unpickles anything but tensors and plain data: modules, optimisers, schedulers and
  GradScalers are read by our own load hooks with ``torch.load(..., weights_only=True)`` (which
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` does not override), and while a checkpoint loads every other
  ``torch.load`` is forced to ``weights_only`` too; meta files are read with YAML's safe loader;
- checks what it reads against the objects it loads into (every tensor present, shapes, optimiser
  groups, scheduler keys) before changing them;
- skips, with a warning, a checkpoint folder whose meta file cannot be read, and when a checkpoint
  cannot be loaded falls back to the next one in the same order (newest, or next-best for
  ``max_key``/``min_key``), saying which one failed and why. Every recoverable is loaded again from
  the checkpoint that is used, so nothing of a failed attempt remains. If none loads, a
  ``CheckpointError`` says so and how to start afresh.

The safe reading itself (load hooks, checks, ``load_tensors``) is
``petl_modules.training.safe_loading``.
"""

import logging
import os
import random
import shutil

import numpy as np
import torch
import yaml
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils import checkpoints
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import ddp_barrier, if_main_process, is_distributed_initialized

from petl_modules.training.safe_loading import (
    REPLACED_HOOKS,
    SAFE_LOAD_HOOKS,
    is_number,
    load_tensors,
    weights_only_loads,
)

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint (or every checkpoint of a folder) that cannot be loaded; the message says why."""


# ==================================================================== random state
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


def _numpy_state(saved):
    name, keys, pos, has_gauss, cached = saved
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _check_states(gathered):
    """Raises ValueError unless ``gathered`` is a list of states that ``_set_states`` accepts
    (tried on throw-away generators, so that nothing is half set)."""
    if not isinstance(gathered, (list, tuple)) or not gathered:
        raise ValueError(f"it should hold a list of random states, not a {type(gathered).__name__}")
    for states in gathered:
        try:
            random.Random().setstate(states["python"])
            np.random.RandomState().set_state(_numpy_state(states["numpy"]))
            torch.Generator().set_state(states["torch"])
            if "cuda" in states and not (isinstance(states["cuda"], torch.Tensor)
                                         and states["cuda"].dtype == torch.uint8):
                raise TypeError("the CUDA state is not a byte tensor")
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise ValueError(f"it holds no valid random state ({type(err).__name__}: {err})") from None


def _set_states(states):
    random.setstate(states["python"])
    np.random.set_state(_numpy_state(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomState:
    """Checkpoint recoverable for the random number generators of every process.

    Under DDP each process has drawn a different amount of randomness (e.g. dropout on batches of
    different lengths), so the states of all processes are gathered and saved by the main one; on
    loading, each process takes its own back. Listed in the checkpointer's ``recoverables``. The
    file holds plain data and tensors only and is read with ``weights_only=True``.

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
        gathered = load_tensors(path)
        _check_states(gathered)
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


# ==================================================================== the checkpointer
def read_meta(path):
    """Reads a checkpoint's meta file (``CKPT.yaml``) with YAML's safe loader and checks it.

    Raises
    ------
    ValueError
        It is not plain YAML (e.g. a ``!!python/...`` tag: refused, nothing is run), not a mapping,
        or lacks a number ``unixtime`` or a true/false ``end-of-epoch``.
    """
    if not os.path.isfile(path):  # e.g. a FIFO or a device, which reading would block on
        raise ValueError("it is not a regular file")
    try:
        with open(path, encoding="utf-8") as stream:
            meta = yaml.safe_load(stream)
    except yaml.constructor.ConstructorError as err:
        raise ValueError(
            f"it holds a YAML tag that is not plain data ({' '.join(str(err.problem).split())}): "
            "refused, nothing in it was run") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"it is not valid YAML ({' '.join(str(err).split())})") from None
    if meta is None:
        raise ValueError("it is empty")
    if not isinstance(meta, dict):
        raise ValueError(f"it should hold a mapping but holds {type(meta).__name__}")
    if not (is_number(meta.get("unixtime")) and not isinstance(meta.get("unixtime"), bool)):
        raise ValueError("it lacks the number 'unixtime'")
    if not isinstance(meta.get("end-of-epoch"), bool):
        raise ValueError("it lacks 'end-of-epoch' (true or false)")
    return meta


class Checkpointer(checkpoints.Checkpointer):
    """SpeechBrain's ``Checkpointer`` whose checkpoints exist only once complete, and whose loading
    runs nothing from the files and falls back past damaged checkpoints.

    The meta file is written under a temporary name and renamed when every parameter file is
    written, so a run killed while saving leaves a folder that is not a checkpoint: resuming
    ignores it and takes the previous checkpoint; the next save deletes such leftovers.

    Loading: see the module docstring. ``recover_if_possible`` (used by ``Brain.fit`` and
    ``Brain.evaluate``) tries the checkpoints in order and uses the first that loads completely;
    a checkpoint that failed is left out of ``find_checkpoints`` for the rest of the process (so
    ``find_checkpoint(max_key=...)`` afterwards names the one that was loaded), but is not
    deleted. Takes the arguments of SpeechBrain's.
    """

    INCOMPLETE = ".incomplete"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unloadable = set()  # checkpoint folders that failed to load in this process
        self.unreadable = {}  # folder -> why its meta file cannot be read (last listing)
        self._warned = set()

    def _warn_once(self, message):
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    # ---------------------------------------------------------------- saving
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
        # Under DDP every process lists the checkpoints next (SpeechBrain's delete_checkpoints,
        # which deletes through a main-process call per checkpoint): all must see this one.
        ddp_barrier()
        return checkpoint

    # ---------------------------------------------------------------- listing
    def _construct_checkpoint_objects(self, checkpoint_dirs):
        """As SpeechBrain's, reading meta files with the safe loader; a folder whose meta file
        cannot be read is skipped with a warning (and noted in ``unreadable``)."""
        found, self.unreadable = [], {}
        for folder in checkpoint_dirs:
            try:
                meta = read_meta(folder / checkpoints.METAFNAME)
                files = [f for f in folder.iterdir() if f.suffix == checkpoints.PARAMFILE_EXT]
            except (OSError, ValueError) as err:
                self.unreadable[folder] = str(err)
                self._warn_once(
                    f"Skipping checkpoint {folder}: its {checkpoints.METAFNAME} cannot be used: "
                    f"{err}.")
                continue
            found.append(checkpoints.Checkpoint(folder, meta, {f.stem: f for f in files}))
        return found

    def find_checkpoints(self, importance_key=None, max_key=None, min_key=None,
                         ckpt_predicate=None, max_num_checkpoints=None):
        """As SpeechBrain's, leaving out checkpoints that failed to load in this process and, with
        ``max_key``/``min_key``, those whose value for the key is not a number (with a warning)."""
        key = max_key or min_key

        def usable(ckpt, predicate=ckpt_predicate):
            if ckpt.path in self.unloadable:
                return False
            if key is not None and key in ckpt.meta and not is_number(ckpt.meta[key]):
                self._warn_once(f"Skipping checkpoint {ckpt.path}: its {key} in "
                                f"{checkpoints.METAFNAME} is {ckpt.meta[key]!r}, not a number.")
                return False
            return predicate is None or predicate(ckpt)

        return super().find_checkpoints(importance_key, max_key, min_key, usable, max_num_checkpoints)

    # ---------------------------------------------------------------- loading
    def load_hook(self, name, obj):
        """The load hook used for recoverable ``name``: a custom one, else the default for its
        type, where SpeechBrain's ``torch.load``-based defaults are replaced by ours."""
        hook = self.custom_load_hooks.get(name)
        if hook is None:
            hook = checkpoints.get_default_hook(obj, checkpoints.DEFAULT_LOAD_HOOKS)
        if hook is None or hook in REPLACED_HOOKS:
            hook = checkpoints.get_default_hook(obj, SAFE_LOAD_HOOKS) or hook
        if hook is None:
            raise CheckpointError(
                f"Don't know how to load {type(obj).__name__} (recoverable {name!r}): register a "
                "load hook for its class or give a custom_load_hook.")
        return hook

    def _load_plan(self, checkpoint):
        """``(name, object, hook, file)`` for every recoverable to load; raises ValueError for a
        missing file before anything is loaded."""
        plan = []
        for name, obj in self.recoverables.items():
            path = checkpoint.paramfiles.get(name)
            if path is None:
                if self.allow_partial_load or self.optional_recoverables.get(name):
                    continue
                if isinstance(obj, SaveableDataLoader) or "dataloader" in name:
                    logger.info(f"{checkpoint.path} has no position for {name}: it starts afresh.")
                    continue
                raise ValueError(f"{name}{checkpoints.PARAMFILE_EXT} is missing")
            if not path.is_file():  # a folder, a FIFO or a device (reading it could block)
                raise ValueError(f"{path.name} is not a regular file")
            plan.append((name, obj, self.load_hook(name, obj), path))
        return plan

    def load_checkpoint(self, checkpoint):
        """Loads every recoverable from ``checkpoint`` (no fallback: see ``recover_if_possible``).

        Raises
        ------
        CheckpointError
            Naming the checkpoint folder, the file and what is wrong with it.
        """
        logger.info(f"Loading a checkpoint from {checkpoint.path}")
        try:
            end_of_epoch = checkpoint.meta["end-of-epoch"]
            plan = self._load_plan(checkpoint)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"Checkpoint {checkpoint.path} cannot be loaded: {err}") from None
        # A DataLoader position set by an earlier (failed) attempt must not survive this one.
        for obj in self.recoverables.values():
            if isinstance(obj, SaveableDataLoader) and obj._speechbrain_iterator is None:
                obj._speechbrain_recovery_skip_to = None
        with weights_only_loads():
            for name, obj, hook, path in plan:
                try:
                    hook(obj, path, end_of_epoch)
                except Exception as err:  # any failure of any hook: this checkpoint is not usable
                    reason = str(err) or type(err).__name__
                    raise CheckpointError(
                        f"Checkpoint {checkpoint.path} cannot be loaded: {path.name} ({name}): "
                        f"{' '.join(reason.split())}") from err

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None,
                            ckpt_predicate=None):
        """Loads the first checkpoint, in SpeechBrain's order, that loads completely.

        Each one that fails is named in a warning with the reason; all recoverables are loaded
        again from the one that succeeds.

        Returns
        -------
        Checkpoint or None
            The checkpoint loaded; None if there is none (to load) yet.

        Raises
        ------
        CheckpointError
            Checkpoints (or unreadable checkpoint folders) exist but none can be loaded: the
            message lists why and how to start afresh.
        """
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        failures = []
        for checkpoint in candidates:
            try:
                self.load_checkpoint(checkpoint)
            except CheckpointError as err:
                self.unloadable.add(checkpoint.path)
                failures.append(str(err))
                logger.warning(f"{err}. Trying the next checkpoint.".replace(".. ", ". "))
                continue
            if failures:
                logger.warning(f"Loaded checkpoint {checkpoint.path} instead of the {len(failures)} "
                               "damaged one(s) named above (left in place, not used).")
            return checkpoint
        failures += [f"Checkpoint {folder}: {checkpoints.METAFNAME}: {why}"
                     for folder, why in self.unreadable.items()]
        if failures:
            listed = "\n  - ".join(failures)
            raise CheckpointError(
                f"No checkpoint in {self.checkpoints_dir} can be loaded:\n  - {listed}\n"
                "They are damaged (e.g. a disk that filled up, a file copied in part or changed) "
                "or were written for another setup. To start this run afresh, delete "
                f"{self.checkpoints_dir} (or move it away to keep it for inspection) and run the "
                "command again.")
        logger.info("Would load a checkpoint here, but none found yet.")
        return None
