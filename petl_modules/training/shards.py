"""Training, validation and test from tar shards (WebDataset format) instead of loose audio files.

``python -m petl_modules.shard RECIPE --data_folder=... OUT`` writes a recipe's prepared data once
(``petl_modules/shard.py``): per part (a split, or a fold of a multi-fold dataset) tar files of
``samples_per_shard`` clips, each clip a ``<key>.<audio extension>`` member (the file's bytes as
they came, or 16 kHz mono FLAC) and a ``<key>.json`` member (id, label, duration), readable by the
``webdataset`` package as any WebDataset; beside them ``samples.csv`` (one row per clip: shard,
key, id, label, duration) and the index ``shards.json`` (parts, which parts make each split of each
fold, class names, the data options). ``--shards=OUT`` makes any recipe read them
(``shard_datasets``), with no audio folder and no preparation.

How an epoch reads the shards (``EpochPlan``; a function of the seed, the epoch, the number of
processes, of DataLoader workers and the batch size, nothing else):

1. the clips drawn: every clip once (``sampling: random``), or ``sampling: class_balanced``'s
   draws (``petl_modules.training.sampling``: as many draws as clips, with replacement, by the
   clips' weights; a multinomial draw seeded by seed and epoch), less the clips ``few_shot_samples``
   leaves out;
2. the shards in a seeded order (training; validation and test in their written order), the
   drawn clips in that order (a clip drawn k times as k copies, one after the other);
3. that stream cut into equal shares, one per process (DDP rank), each cut into equal shares, one
   per DataLoader worker: no clip is read twice or skipped in an epoch (a clip drawn several times
   whose copies fall on both sides of a cut is read by both);
4. each worker's share shuffled by a buffer of ``shuffle_buffer`` clips (seeded by seed, epoch,
   rank, worker; training only), then cut into batches of ``batch_size`` (the last of a worker
   shorter). Every process gets the same number of batches (a few batches one clip shorter where
   the shares would differ), known before the epoch starts: ``len()`` is the progress bars' and
   the learning-rate schedule's epoch length.

The DataLoader takes the workers' batches in turn, so the batch order is known too: a run resumed
from a checkpoint taken mid-epoch skips exactly the batches it had trained on (nothing of them is
read; the clips of a partly read shard are skipped by their tar headers) and ends with the same
weights as an uninterrupted run (with the same number of processes and workers; otherwise a
warning says the rest of the epoch differs). Each worker reads its shards front to back, holding
at most ``shuffle_buffer`` clips (their compressed bytes) in memory.

Validation and test run in full on every process (as the recipes' loose-file evaluation),
``eval_windows: sliding`` included. ``mixup: waveform`` mixes each training clip with another clip
of its batch (from loose files the partner is any training clip: a stream cannot reach any clip).
Refused with shards, with the reason: ``cache_backbone_outputs`` (its cache is built from files).

The index and tables are ``petl_modules.training.shard_index``, the plan of an epoch
``petl_modules.training.shard_plan`` (both re-exported here); this module reads the shards.
"""

import io
import logging
import math
from pathlib import Path

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch

from petl_modules.model.clip import Clip
from petl_modules.model.task import Task
from petl_modules.training.mixup import RawClip, mix_waveforms, mixup_options
# The index and tables, and the plan of an epoch: their own modules, re-exported here.
from petl_modules.training.shard_index import (  # noqa: F401
    INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, MAX_INDEX_BYTES, PATH_OPTIONS, TABLE_COLUMNS, TABLE_FILE,
    SampleTable, ShardError, check_run_against_index, read_index, run_options_from_index, split_parts)
from petl_modules.training.shard_plan import (  # noqa: F401
    EpochPlan, batch_sizes, buffer_order, equal_batch_counts, equal_cuts, resumed_worker,
    round_robin_done)
from petl_modules.training.windows import WINDOW_KEYS, EvalProtocol, TrainCrop, clip_samples, window_starts

logger = logging.getLogger(__name__)


# ==================================================================== reading the shards
class NamedBytes(io.BytesIO):
    """A clip's bytes, named (in errors) by its shard and member."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name

    def __str__(self):
        return self.name


def read_clips(table, clips):
    """Yields ``(clip index, audio bytes)`` of ``clips`` (indices in shard order, each once),
    opening each shard once and skipping the other members by their tar headers."""
    import tarfile

    by_shard = {}
    for i in clips:
        by_shard.setdefault(int(table.shard[i]), []).append(int(i))
    for shard, wanted in by_shard.items():
        keys = {table.keys[i]: i for i in wanted}
        path = table.shard_files[shard]
        try:
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    key, _, extension = member.name.partition(".")
                    if key in keys and extension != "json" and member.isfile():
                        yield keys.pop(key), tar.extractfile(member).read()
                        if not keys:
                            break
        except (OSError, tarfile.TarError) as err:
            raise ShardError(f"Cannot read shard {path}: {err}. Write the shards again (python "
                             "-m petl_modules.shard ...).") from None
        if keys:
            raise ShardError(f"Shard {path} lacks the clip(s) {', '.join(sorted(keys)[:5])} that "
                             f"{TABLE_FILE} lists: write the shards again.")


class ShardDataset(torch.utils.data.IterableDataset):
    """One split read from tar shards: yields ``PaddedBatch``es like the loose-file datasets'
    (``id``, ``inputs``, ``label_index`` or multi-hot ``targets``; sliding windows add
    ``WINDOW_KEYS``).

    Arguments
    ---------
    table : SampleTable
    processor : callable
        The lobe's input processor.
    batch_size : int
    train : bool
        Training (shuffled shards and buffer, crops, sampling, DDP shares) or evaluation (every
        clip once in written order, on every process).
    seed, shuffle_buffer : int
    n_classes : int
    train_crop : TrainCrop, optional
    protocol : EvalProtocol, optional
        Evaluation: first clip or sliding windows.
    weights : array, optional
        ``sampling: class_balanced``'s drawing weights.
    keep : array of bool, optional
        The clips ``few_shot_samples`` keeps.
    mixup : tuple, optional
        ``(alpha, prob)`` of ``mixup: waveform``: each training clip's audio is mixed with another
        clip of its batch (a seeded draw per batch) before the features, and the batch gets
        ``mixed_targets``.
    """

    def __init__(self, table, processor, batch_size, train, seed, shuffle_buffer, n_classes,
                 train_crop=None, protocol=None, weights=None, keep=None, mixup=None):
        super().__init__()
        self.mixup = mixup
        self.table, self.processor, self.batch_size, self.train = table, processor, batch_size, train
        self.seed, self.shuffle_buffer, self.n_classes = int(seed), int(shuffle_buffer), n_classes
        self.train_crop, self.protocol, self.weights, self.keep = train_crop, protocol, weights, keep
        self.epoch, self.done = 1, 0
        self.held_peak_bytes = 0  # the most clip bytes held at once (this process's iterations)
        self.processes, self.rank = 1, 0
        if train and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.processes, self.rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        self.workers = 1
        self.epoch_hooks = [self] if train else []
        self._plans = {}

    # ---------------------------------------------------------------- the epoch
    def set_epoch(self, epoch, batches_done=0):
        """The epoch to read next, and how many of its batches were already trained on (a run
        resumed mid-epoch)."""
        self.epoch, self.done = int(epoch), int(batches_done)
        if self.train_crop is not None:
            self.train_crop.set_epoch(epoch)

    def plan(self, workers=None):
        key = (self.epoch, workers or self.workers)
        if key not in self._plans:
            self._plans = {key: self._make_plan(key[1])}
        return self._plans[key]

    def _make_plan(self, workers):
        return EpochPlan(self.table, self.seed, self.epoch if self.train else 0, self.batch_size,
                         self.processes if self.train else 1, workers, shuffle=self.train,
                         weights=self.weights if self.train else None,
                         keep=self.keep if self.train else None, buffer_size=self.shuffle_buffer)

    def __len__(self):
        """Batches per process this epoch (training: exact; evaluation with sliding windows: from
        the clips' recorded durations)."""
        if self.train or self.protocol is None or not self.protocol.sliding:
            return len(self.plan())
        rate = getattr(self.processor, "sample_rate", 16000)
        clip = clip_samples(self.processor)
        windows = sum(len(window_starts(int(round(d * rate)), clip, self.protocol.hop(self.processor)))
                      for d in self.table.duration)
        return math.ceil(windows / self.batch_size)

    def state(self):
        """What a mid-epoch checkpoint records of the stream (``check_state`` compares)."""
        return {"processes": self.processes, "workers": self.workers, "batch_size": self.batch_size}

    def check_state(self, saved):
        if saved and saved != self.state():
            logger.warning(
                f"This run resumes mid-epoch from a checkpoint taken with {saved}; it now runs "
                f"with {self.state()}: the rest of this epoch skips as many batches, but not "
                "exactly the clips the interrupted run had left (later epochs are as usual). Run "
                "with the checkpoint's numbers of processes and workers to resume exactly.")

    # ---------------------------------------------------------------- iteration
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        plan = self.plan(1 if info is None else info.num_workers)
        if self.train:
            worker = resumed_worker(plan.batches[self.rank], self.done, worker)
            batches = plan.worker_batches(self.rank, worker, self.done)
            return self._batches(batches, plan.worker_share(self.rank, worker))
        return self._eval_batches(plan.worker_share(0, worker))

    def _batches(self, batches, share):
        """The batches of clip indices ``batches`` as ``PaddedBatch``es, reading the worker's
        ``share`` in order (each needed clip once; copies of a clip drawn several times are kept
        until their last batch)."""
        needed = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        remaining = {int(i): int(n) for i, n in zip(*np.unique(needed, return_counts=True))}
        ordered = [int(i) for i in dict.fromkeys(share.tolist()) if int(i) in remaining]
        reader = read_clips(self.table, ordered)
        held, copies, held_bytes = {}, {}, 0
        processor = RawClip(self.processor) if self.mixup else self.processor
        for batch in batches:
            items = []
            for i in batch.tolist():
                while i not in held:
                    clip, data = next(reader)
                    held[clip] = data
                    held_bytes += len(data)
                    self.held_peak_bytes = max(self.held_peak_bytes, held_bytes)
                k = copies.get(i, 0)
                copies[i] = k + 1
                items.append(self._item(i, held[i], k, processor))
                remaining[i] -= 1
                if remaining[i] == 0:
                    held_bytes -= len(held.pop(i))
            if self.mixup:
                items = self._mixed(items, int(batch[0]), copies[int(batch[0])])
            yield PaddedBatch(items)

    def _mixed(self, items, first, copy):
        """``mixup: waveform`` from shards: each clip's audio mixed with another clip of the batch
        (partners and weights drawn from seed, epoch and the batch's first clip), then the
        features; ``mixed_targets`` with the same weights."""
        alpha, prob = self.mixup
        rng = np.random.default_rng([self.seed, self.epoch, 4, first, copy])
        partners = rng.permutation(len(items))
        lams = rng.beta(alpha, alpha, size=len(items))
        lams = np.where(rng.random(len(items)) < prob, lams, 1.0)
        task = self.table.task
        soft = [task.soft_targets(it[task.target_key][None], self.n_classes)[0] for it in items]
        mixed = []
        for k, item in enumerate(items):
            j, lam = int(partners[k]), float(lams[k])
            wav = mix_waveforms(item["inputs"], items[j]["inputs"], lam)
            mixed.append(dict(item, inputs=self.processor(wav),
                              mixed_targets=lam * soft[k] + (1.0 - lam) * soft[j]))
        return mixed

    def _eval_batches(self, clips):
        items = []
        for clip, data in read_clips(self.table, [int(i) for i in clips]):
            for item in self._eval_items(clip, data):
                items.append(item)
                if len(items) == self.batch_size:
                    yield PaddedBatch(items)
                    items = []
        if items:
            yield PaddedBatch(items)

    # ---------------------------------------------------------------- one clip
    def _source(self, i, data):
        member = f"{self.table.shard_files[self.table.shard[i]]}:{self.table.keys[i]}"
        return NamedBytes(data, member)

    def _clip(self, i, data):
        """The ``Clip`` of row ``i`` (its audio ``data``): the whole file, or its segment."""
        return Clip.of_segment(self._source(i, data), self.table.seg_start[i], self.table.seg_end[i],
                               self.table.duration[i], getattr(self.processor, "sample_rate", 16000))

    def _target(self, i):
        task = self.table.task
        return {task.target_key: task.target_of_classes(self.table.labels(i), self.n_classes)}

    def _item(self, i, data, copy, processor=None):
        processor = processor or self.processor
        uid = self.table.ids[i]
        clip = self._clip(i, data)
        if self.train_crop is not None:
            clip = clip.crop(self.train_crop(uid if copy == 0 else f"{uid}#{copy}"))
        return {"id": uid, "inputs": clip.read(processor), **self._target(i)}

    def _eval_items(self, i, data):
        uid, clip = self.table.ids[i], self._clip(i, data)
        if self.protocol is None or not self.protocol.sliding:
            yield {"id": uid, "inputs": clip.read(self.processor), **self._target(i)}
            return
        for k, window in enumerate(self.protocol.clips(clip, self.processor)):
            yield {"id": f"{uid}@{k}", "inputs": window.read(self.processor),
                   **dict(zip(WINDOW_KEYS, (uid, window.start, window.stop))), **self._target(i)}

    # ---------------------------------------------------------------- the loader
    def make_dataloader(self, stage, **loader_kwargs):
        """A DataLoader over this dataset's batches (``ClassificationBrain.make_dataloader``):
        ``num_workers``, ``pin_memory``, ``generator``, ``timeout``, ``prefetch_factor`` are
        honoured; batching and order are the plan's."""
        kept = {k: v for k, v in loader_kwargs.items()
                if k in ("num_workers", "pin_memory", "generator", "timeout", "prefetch_factor",
                         "multiprocessing_context")}
        self.workers = max(1, int(kept.get("num_workers", 0)))
        return torch.utils.data.DataLoader(self, batch_size=None, collate_fn=_as_is, **kept)


def _as_is(batch):
    """The DataLoader's collate function: batches are made by the dataset."""
    return batch


# ==================================================================== the datasets of a run
def shard_datasets(hparams, fold):
    """``({"train", "valid", "test"}: ShardDataset, class names)`` of ``fold`` from the run's
    ``--shards`` folder: the shards analogue of ``recipe.fold_datasets`` (labels from the index,
    few-shot subset, class weights, class-balanced sampling, random crops, evaluation windows).

    Raises
    ------
    ShardError
        Options the shards cannot serve (``mixup: waveform``), or shards that do not fit the run.
    """
    from petl_modules.training import sampling
    from petl_modules.training.manifests import few_shot_ids

    folder = Path(hparams["shards"])
    index = read_index(folder)
    kind, alpha, prob = mixup_options(hparams)
    class_names = list(index["class_names"])
    task = Task.of_options(hparams)
    parts = split_parts(index, fold)
    tables = {split: SampleTable(folder, index, names, class_names, task)
              for split, names in parts.items()}
    train = tables["train"]
    keep = None
    if int(hparams["few_shot_samples"]) > 0:
        label_text = [";".join(class_names[c] for c in train.labels(i)) for i in range(len(train))]
        kept = few_shot_ids(zip(train.ids.tolist(), label_text), int(hparams["few_shot_samples"]),
                            hparams["seed"])
        keep = np.asarray([uid in kept for uid in train.ids.tolist()])
    if hparams.get("class_weights") == "balanced":
        names = [[class_names[c] for c in train.labels(i)] for i in range(len(train))
                 if keep is None or keep[i]]
        hparams["loss_weights"] = task.class_weights(names, class_names)
    weights = None
    if hparams.get("sampling", "random") == "class_balanced":
        label_lists = train.label_lists()
        weights = sampling.class_balanced_weights(label_lists, len(class_names))
        sampling.log_balance(weights, label_lists, class_names)
    processor = hparams["backbone"].input_processor
    crop = TrainCrop(hparams["seed"], clip_samples(processor)) \
        if hparams.get("train_crop", "first") == "random" else None
    protocol = EvalProtocol.from_options(hparams)
    common = {"processor": processor, "batch_size": int(hparams["batch_size"]),
              "seed": hparams["seed"], "shuffle_buffer": int(hparams.get("shuffle_buffer", 1000)),
              "n_classes": len(class_names)}
    datasets = {"train": ShardDataset(train, train=True, train_crop=crop, weights=weights,
                                      keep=keep, mixup=(alpha, prob) if kind == "waveform" else None,
                                      **common)}
    for split in ("valid", "test"):
        datasets[split] = ShardDataset(tables[split], train=False, protocol=protocol, **common)
    logger.info(f"Reading {folder}: " + ", ".join(
        f"{split} {len(tables[split])} clips in {len(set(tables[split].shard.tolist()))} shards"
        for split in ("train", "valid", "test")))
    return datasets, class_names
