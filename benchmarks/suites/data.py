"""The ``data`` suite: time to the first batch, and reading tar shards against loose files."""

import contextlib
import os
import shutil
import time

import speechbrain as sb
import torch

from benchmarks.common import result, timed
from benchmarks.models import build_hparams, fsc_run, load_recipe, make_brain, start_training

def suite_data(args):
    """Data loading: time to the first batch (``first_batch_rows``), and reading tar shards
    against loose files (``shard_rows``)."""
    return first_batch_rows(args) + shard_rows(args)


def first_batch_rows(args):
    """Time from the start of training (manifests prepared) to the first batch, 1x and 10x data.

    The two sizes are measured in turn (1x, 10x, 1x, ...) so that a busy machine slows both alike.
    """
    recipe = load_recipe("FSC")
    base = 1 if args.quick else 2
    runs = {}
    for scale in (1, 10):
        data, out = fsc_run(args, base * scale, f"data{scale}x")
        hparams = build_hparams(args, "linear", data_folder=str(data), output_folder=str(out),
                                num_workers=2)
        recipe.prepare(hparams)  # manifests written once, before the clock
        runs[scale] = (hparams, make_brain(args, hparams))

    def first_batch(hparams, brain):
        datasets, _ = start_training(args, recipe, hparams)
        loader = brain.make_dataloader(datasets["train"], stage=sb.Stage.TRAIN,
                                       **hparams["train_loader_options"])
        iterator = iter(loader)
        next(iterator)
        del iterator

    times = {scale: [] for scale in runs}
    for _ in range(args.warmup + max(3, args.steps)):
        for scale, run in runs.items():
            times[scale] += timed(lambda: first_batch(*run), 1, 0, "cpu")
    rows = []
    for scale, (hparams, _) in runs.items():
        n_train = len(recipe.make_datasets(hparams, None)["train"])
        rows.append(result("data", f"first batch, {n_train} training utterances ({scale}x)",
                           times[scale][args.warmup:], None, None, utterances=n_train, scale=scale))
    return rows


SHARD_CLIPS, SHARD_SECONDS = 10000, 10.0  # --quick: 200 clips of 2 s


def _write_flac_clips(root, count, seconds):
    """``count`` different clips of ``seconds`` (16 kHz mono FLAC, noise and two tones: about
    290 KB per 10 s) in ten class folders (recipes/AudioFolder's layout); kept if present."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    paths = []
    for k in range(count):
        path = root / f"class{k % 10}" / f"{k:05d}.flac"
        paths.append(path)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tone = np.sin(2 * np.pi * (200 + 50 * (k % 10)) * t) + 0.5 * np.sin(2 * np.pi * 1234 * t)
        signal = 0.2 * tone + 0.05 * rng.standard_normal(len(t))
        sf.write(str(path), signal.astype("float32"), 16000, format="FLAC", subtype="PCM_16")
    return paths


def drop_page_cache(paths):
    """Drops the cached pages of ``paths`` from the page cache (``posix_fadvise(DONTNEED)``: no
    privilege needed, and other processes' cached files stay cached). Returns how: ``fadvise``,
    or ``none`` where the system has no fadvise (then the files may be read from memory)."""
    os.sync()
    how = "none"
    for path in paths:
        with contextlib.suppress(OSError, AttributeError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                how = "fadvise"
            finally:
                os.close(fd)
    return how


class OpenCounter:
    """Counts the audio files and tar shards our reading code opens (soundfile on a path, tarfile)."""

    def __init__(self):
        import tarfile

        import soundfile

        self.count = 0
        self.patches = [(soundfile, "SoundFile", soundfile.SoundFile), (tarfile, "open", tarfile.open)]
        counter = self

        class CountingSoundFile(soundfile.SoundFile):
            def __init__(self, file, *a, **k):
                if isinstance(file, (str, os.PathLike)):
                    counter.count += 1
                super().__init__(file, *a, **k)

        def counting_open(name=None, *a, **k):
            counter.count += 1
            return self.patches[1][2](name, *a, **k)

        soundfile.SoundFile, tarfile.open = CountingSoundFile, counting_open

    def close(self):
        for module, name, original in self.patches:
            setattr(module, name, original)


def _read_epoch(loader, limit=None):
    """Iterates a DataLoader; returns (clips, seconds, files opened)."""
    counter = OpenCounter()
    clips, start = 0, time.perf_counter()
    try:
        for batch in loader:
            clips += len(batch.id)
            if limit and clips >= limit:
                break
    finally:
        counter.close()
    return clips, time.perf_counter() - start, counter.count


def shard_rows(args):
    """Reading ``SHARD_CLIPS`` generated 10 s clips by one data-loading process (one DataLoader,
    no workers, one torch thread as in a DataLoader worker): from loose FLAC files (the recipes' DynamicItemDataset, shuffled) and from tar
    shards of 1000 clips (``--shards``: shuffled shard order, buffer of 1000), the page cache of
    those files dropped before each epoch where the machine allows it. Decoding only (the waveform)
    and with AST's 1024-frame fbank features, taken in turn. Also shard writing speed and the
    shuffle buffer's peak memory."""
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.dataio.sampler import ReproducibleRandomSampler

    from petl_modules.backbones.features import ASTFbank, Waveform
    from petl_modules.training.recipe import add_pipelines, load_manifest
    from petl_modules.model.task import Task
    from petl_modules.training.shards import SampleTable, ShardDataset

    count, seconds = (200, 2.0) if args.quick else (SHARD_CLIPS, SHARD_SECONDS)
    root = args.workdir / f"clips_{count}" / "sounds"
    started = time.perf_counter()
    files = _write_flac_clips(root, count, seconds)
    written_s = time.perf_counter() - started
    shards, index, shard_files, rows = _write_shards_timed(args, root, files, written_s)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"class{k}" for k in range(10)])
    encoder.expect_len(10)
    table = SampleTable(shards, index, index["splits"]["all"]["train"], index["class_names"],
                        Task.of("single_label"))
    processors = {"decode": Waveform(clip_samples=int(seconds * 16000), normalize=False),
                  "fbank": ASTFbank(max_frames=1024)}
    batch = 16

    def loose(processor):
        dataset = load_manifest(shards / "manifests" / "all.csv", root,
                                key_test={"split": lambda x: x == "train"})
        add_pipelines({"train": dataset}, processor, encoder)
        return torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=PaddedBatch,
                                           sampler=ReproducibleRandomSampler(dataset, seed=1))

    def sharded(processor):
        dataset = ShardDataset(table, processor, batch, train=True, seed=1, shuffle_buffer=1000,
                               n_classes=10)
        dataset.set_epoch(1)
        return dataset, dataset.make_dataloader(None, num_workers=0)

    limit = None if args.quick else 3000  # clips per timed epoch (the first 3000 of the epoch)
    cache = {}
    found = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (torch gives each one thread)
    for round_ in range(2 if not args.quick else 1):
        for kind, processor in processors.items():
            for source in ("files", "shards"):
                cache[source] = drop_page_cache(files if source == "files" else shard_files)
                if source == "files":
                    clips, took, opened = _read_epoch(loose(processor), limit)
                    peak = None
                else:
                    dataset, loader = sharded(processor)
                    clips, took, opened = _read_epoch(loader, limit)
                    peak = dataset.held_peak_bytes / 1e6
                found.setdefault((source, kind), []).append((clips, took, opened, peak))
    torch.set_num_threads(threads)
    for (source, kind), runs in found.items():
        clips, took, opened, peak = min(runs, key=lambda r: r[1] / r[0])
        rows.append(result("data", f"read {source}, {kind}: {clips} clips of {seconds:g} s", [took],
                           clips=clips, clips_per_s=clips / took, files_opened=opened,
                           opens_per_s=opened / took, opens_per_clip=opened / clips,
                           buffer_peak_mb=peak, page_cache=cache[source], kind=f"{source}/{kind}"))
    return rows


def _write_shards_timed(args, root, files, generated_s):
    """The recipe's preparation of ``files`` (one header read per file) then their shards of 1000
    clips (``--quick``: 50), timed: the shard folder, its index, its tar files and the row."""
    from petl_modules.shard import write_shards

    count = len(files)
    size = sum(p.stat().st_size for p in files)
    options = {"data_folder": str(root), "valid_fraction": 0.01, "test_fraction": 0.01}
    shards = args.workdir / f"clips_{count}" / "shards"
    shutil.rmtree(shards, ignore_errors=True)  # a kept --workdir: written again, timed
    start = time.perf_counter()  # the recipe's preparation (one header read per file), then the shards
    index = write_shards("AudioFolder", shards, options, audio="original", samples_per_shard=1000
                         if not args.quick else 50, workers=args.threads)
    write_s = time.perf_counter() - start
    shard_files = [shards / s["file"] for p in index["parts"].values() for s in p["shards"]]
    rows = [result("data", f"prepare and write shards: {count} clips, {size / 1e9:.2f} GB, "
                           f"{args.threads} processes",
                   [write_s], clips=count, clips_per_s=count / write_s, mb_per_s=size / 1e6 / write_s,
                   generated_s=generated_s, kind="write")]
    return shards, index, shard_files, rows
