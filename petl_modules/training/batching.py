"""Training batches by duration: ``dynamic_batching: True``.

By default a training batch holds ``batch_size`` examples, and a batch of utterances of unequal
length (waveform backbones with ``clip_seconds: null``) is padded to its longest one. With
``dynamic_batching: True`` the batches are SpeechBrain's ``DynamicBatchSampler``'s instead: the
examples are sorted into ``num_buckets`` buckets by length (boundaries at the quantiles of the
training split's lengths: buckets of equal counts), and a batch takes examples of one bucket,
as many as fit in ``max_batch_seconds`` at the bucket's longest length (each example counted as
the model sees it: ``min(duration, clip)``), so short utterances travel in large batches and
long ones in small batches, with little padding. The order is shuffled per epoch from ``seed`` and the epoch, so a
run resumed mid-epoch (SpeechBrain's DataLoader position) sees the batches an uninterrupted one
sees; under DDP, SpeechBrain's ``Brain`` deals the batches out to the processes
(``DistributedSamplerWrapper``). Off by default (the papers' protocols fix the batch size; clips of
one fixed length gain nothing).
"""

import numpy as np
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler

from petl_modules.model.windows import clip_samples


class BatchingError(ValueError):
    """``dynamic_batching`` asked where it cannot work."""


def check_dynamic_batching(hparams):
    """Raises ``BatchingError`` for options ``dynamic_batching: True`` cannot work with."""
    if not hparams.get("dynamic_batching"):
        return
    if hparams.get("sampling", "random") == "class_balanced":
        raise BatchingError(
            "--dynamic_batching=True makes batches of every training example once, by length; "
            "--sampling=class_balanced draws examples by class weight, with replacement: one "
            "sampler cannot do both. Drop one of them.")
    if hparams.get("shards"):
        raise BatchingError(
            "--dynamic_batching=True needs every training example's length up front to bucket "
            "them; --shards streams the examples from tar shards in a shuffle buffer: train "
            "from the prepared manifests (without --shards), or without --dynamic_batching.")
    if hparams.get("cache_backbone_outputs"):
        raise BatchingError(
            "--dynamic_batching=True batches the audio by duration, but with "
            "--cache_backbone_outputs=True every training example is one cached vector of the "
            "same size: drop one of them.")


def example_seconds(dataset, input_processor):
    """Each example's length as the model sees it, in seconds: the manifest's ``duration`` (a
    segment's, for segments of long files), cut to the processor's clip when it has one."""
    if not isinstance(dataset, DynamicItemDataset):
        raise BatchingError(
            f"--dynamic_batching=True needs a dataset read from a manifest (a "
            f"DynamicItemDataset with a 'duration' column), not a {type(dataset).__name__}.")
    samples = clip_samples(input_processor)
    clip = samples / getattr(input_processor, "sample_rate", 16000) if samples else None
    lengths = []
    for uid in dataset.data_ids:
        duration = dataset.data[uid].get("duration")
        if duration in (None, ""):
            raise BatchingError(
                f"--dynamic_batching=True batches by duration, but the training manifest has no "
                f"'duration' for '{uid}': prepare the data again (every preparation script writes "
                "it).")
        lengths.append(min(float(duration), clip) if clip else float(duration))
    return lengths


def bucket_boundaries(lengths, num_buckets):
    """The upper bounds of ``num_buckets`` buckets of (about) equal counts of ``lengths``: their
    quantiles, the longest length last (a length equal to a bound falls in that bucket)."""
    quantiles = np.quantile(np.asarray(lengths, dtype=float), np.arange(1, num_buckets + 1) / num_buckets)
    return sorted(set(float(q) for q in quantiles))


def duration_batch_sampler(dataset, hparams):
    """SpeechBrain's ``DynamicBatchSampler`` over ``dataset`` (the training split) with the run's
    ``max_batch_seconds``, ``num_buckets`` (``bucket_boundaries``) and ``seed``; an example
    longer than ``max_batch_seconds`` makes a batch of its own."""
    lengths = example_seconds(dataset, hparams["backbone"].input_processor)
    return DynamicBatchSampler(
        dataset,
        max_batch_length=float(hparams["max_batch_seconds"]),
        bucket_boundaries=bucket_boundaries(lengths, int(hparams["num_buckets"])),
        lengths_list=lengths,
        shuffle=True,
        batch_ordering="random",
        seed=int(hparams["seed"]),
    )
