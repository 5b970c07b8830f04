"""The ``batching`` suite: batches by duration against fixed-count batches."""

import time

import speechbrain as sb
import torch
import transformers

from benchmarks.common import result, synchronize
from benchmarks.models import build_hparams, make_brain

# The batching suite: seconds of audio per batch and length buckets of dynamic_batching.
BATCHING_SECONDS, BATCHING_BUCKETS = 120, 8


def _utterance_set(count, seed=0):
    """``count`` generated utterances of 0.5-30 s (uniform): a ``DynamicItemDataset`` whose
    ``inputs`` are noise of that length (made when read) and whose ``label_index`` cycles
    through 31 classes; with each one's seconds."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    generator = torch.Generator().manual_seed(seed)
    seconds = (0.5 + 29.5 * torch.rand(count, generator=generator)).tolist()
    data = {f"u{i}": {"duration": f"{s:.3f}", "index": i} for i, s in enumerate(seconds)}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("duration", "index")
    @sb.utils.data_pipeline.provides("inputs", "label_index")
    def pipeline(duration, index):
        yield 0.1 * torch.randn(round(float(duration) * 16000))
        yield torch.tensor([int(index) % 31])

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "inputs", "label_index"])
    return dataset, seconds


def _padding_fraction(loader, brain):
    """The share of padded samples in the training batches of ``loader`` (one epoch, read without
    running the model), and the number of batches."""
    real = padded = batches = 0
    for batch in loader:
        lengths = batch.inputs.lengths * batch.inputs.data.shape[1]
        real += float(lengths.sum())
        padded += batch.inputs.data.numel()
        batches += 1
    return 1 - real / padded, batches


def suite_batching(args):
    """Training epochs on utterances of 0.5-30 s (``clip_seconds: null``, the conformer adapter on
    the wav2vec2-base shape, random weights; ``--quick``: a tiny wav2vec2): batches by duration
    (``dynamic_batching: True``, ``BATCHING_SECONDS`` per batch, ``BATCHING_BUCKETS`` buckets)
    against fixed-count batches of the same mean size, epochs taken in turn. Padding fraction of
    each, epoch times; ``dynamic_batching_padding`` and ``dynamic_vs_fixed_batches_epoch``."""
    from speechbrain.utils.epoch_loop import EpochCounter

    from petl_modules.tiny import tiny_waveform_config

    folder = args.workdir / ("tiny_wav2vec2" if args.quick else "wav2vec2_base")
    if not folder.is_dir():
        torch.manual_seed(0)
        config = tiny_waveform_config() if args.quick else transformers.Wav2Vec2Config()
        transformers.Wav2Vec2Model(config).save_pretrained(folder)
    dataset, seconds = _utterance_set(args.batching_utterances)
    options = {"backbone_source": str(folder), "clip_seconds": None, "num_workers": 0,
               "max_batch_seconds": BATCHING_SECONDS, "num_buckets": BATCHING_BUCKETS}
    extra = {"reduction_rate": 8} if args.quick else {}
    brains, padding = {}, {}
    hparams = build_hparams(args, "adapter", dict(options, dynamic_batching=True), **extra)
    brains["dynamic"] = (make_brain(args, hparams), hparams)
    loader = brains["dynamic"][0].make_dataloader(dataset, sb.Stage.TRAIN, ckpt_prefix=None,
                                                  **hparams["train_loader_options"])
    padding["dynamic"], count = _padding_fraction(loader, brains["dynamic"][0])
    mean_size = max(1, round(len(dataset) / count))
    hparams = build_hparams(args, "adapter", dict(options, batch_size=mean_size), **extra)
    brains["fixed"] = (make_brain(args, hparams), hparams)
    loader = brains["fixed"][0].make_dataloader(dataset, sb.Stage.TRAIN, ckpt_prefix=None,
                                                **hparams["train_loader_options"])
    padding["fixed"], _ = _padding_fraction(loader, brains["fixed"][0])
    times = {name: [] for name in brains}
    for _ in range(args.warmup + args.steps):
        for name, (brain, hparams) in brains.items():
            start = time.perf_counter()
            brain.fit(EpochCounter(1), dataset, train_loader_kwargs=hparams["train_loader_options"])
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, measured in times.items():
        what = (f"{BATCHING_SECONDS:g} s per batch, {BATCHING_BUCKETS} buckets" if name == "dynamic"
                else f"{mean_size} utterances per batch")
        rows.append(result("batching", f"adapter epoch, {len(dataset)} utterances of 0.5-30 s "
                           f"({sum(seconds):.0f} s), {name} batches ({what})",
                           measured[args.warmup:], None, None, kind=name, padding=padding[name],
                           round_s=measured[args.warmup:], mean_batch=mean_size))
    return rows
