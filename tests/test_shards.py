"""Tar shards (petl_modules/shard.py, petl_modules/training/shards.py): what is written, and how an
epoch reads it: every clip once over processes and DataLoader workers, seeded order, known length,
exact resume, class-balanced draws, refusals. End-to-end runs are in test_shards_runs.py."""

import json
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import REPO
from petl_modules.model.task import Task
from petl_modules.shard import write_shards
from petl_modules.synthetic import make_dataset
from petl_modules.training import recipe
from petl_modules.training.shards import (
    EpochPlan,
    SampleTable,
    ShardDataset,
    ShardError,
    batch_sizes,
    buffer_order,
    equal_batch_counts,
    read_index,
    round_robin_done,
)


class FakeTable:
    """``shard_bounds`` and ``len`` of a table of ``sizes[s]`` clips in shard ``s``."""

    def __init__(self, sizes):
        self.shard = np.repeat(np.arange(len(sizes)), sizes)
        self.shard_files = list(range(len(sizes)))

    def __len__(self):
        return len(self.shard)

    def shard_bounds(self):
        ends = np.cumsum([np.sum(self.shard == s) for s in self.shard_files])
        return ends - np.asarray([np.sum(self.shard == s) for s in self.shard_files]), ends


def all_batches(plan, processes, workers):
    return [[b.tolist() for b in plan.worker_batches(r, w)] for r in range(processes)
            for w in range(workers)]


# ==================================================================== the plan of an epoch
@pytest.mark.parametrize("processes,workers,batch", [(1, 1, 4), (1, 2, 4), (2, 1, 4), (2, 2, 3),
                                                     (3, 2, 5), (2, 3, 1)])
def test_every_clip_is_read_once_per_epoch_over_processes_and_workers(processes, workers, batch):
    table = FakeTable([7, 10, 3, 10, 1, 9])  # 40 clips, shards of unequal size
    plan = EpochPlan(table, seed=3, epoch=2, batch_size=batch, processes=processes,
                     workers=workers, buffer_size=5)
    read = [i for worker in all_batches(plan, processes, workers) for b in worker for i in b]
    assert sorted(read) == list(range(40))
    # Every process has the same number of batches (DDP steps together), none empty or too big.
    per_rank = [sum(plan.batches[r]) for r in range(processes)]
    assert len(set(per_rank)) == 1 and per_rank[0] == len(plan)
    assert all(1 <= len(b) <= batch for worker in all_batches(plan, processes, workers) for b in worker)


def test_order_is_a_function_of_seed_and_epoch_and_its_length_of_neither():
    table = FakeTable([10] * 8)

    def order(seed, epoch):
        return [i for b in EpochPlan(table, seed, epoch, 4, 2, 2, buffer_size=6).worker_batches(0, 1)
                for i in b.tolist()]

    assert order(1, 1) == order(1, 1)
    assert order(1, 1) != order(1, 2) and order(1, 1) != order(2, 1)
    lengths = {len(EpochPlan(table, s, e, 4, 2, 2)) for s in (1, 2) for e in (1, 2, 3)}
    assert len(lengths) == 1


def test_shuffle_buffer_is_a_seeded_permutation_that_never_reaches_beyond_the_buffer():
    order = buffer_order(50, 8, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(50))
    assert order.tolist() == buffer_order(50, 8, np.random.default_rng(0)).tolist()
    # Item k can only come out once it has been read: at output position p, at most p + 8 read.
    assert all(item < position + 8 for position, item in enumerate(order.tolist()))


def test_batch_sizes_fill_batches_first_and_never_leave_one_empty():
    assert batch_sizes(10, 3, 4) == [4, 4, 2]
    assert batch_sizes(8, 3, 4) == [4, 3, 1]
    assert equal_batch_counts([[5, 4], [4, 4]], 4) == [[2, 1], [1, 2]] or \
        sum(equal_batch_counts([[5, 4], [4, 4]], 4)[1]) == 3
    with pytest.raises(ShardError, match="cannot fill"):
        equal_batch_counts([[3], [1]], 1)


def test_round_robin_counts_the_batches_each_worker_delivered_and_who_is_next():
    assert round_robin_done([3, 2], 0) == ([0, 0], 0)
    assert round_robin_done([3, 2], 3) == ([2, 1], 1)
    assert round_robin_done([3, 1], 3) == ([2, 1], 0)
    assert round_robin_done([3, 1], 4) == ([3, 1], 0)
    assert round_robin_done([2, 2, 2], 4) == ([2, 1, 1], 1)


def test_class_balanced_draws_as_many_clips_as_there_are_favouring_rare_ones():
    table = FakeTable([50, 50])
    weights = np.where(np.arange(100) < 90, 1.0, 9.0)  # the last 10 clips: a rare class
    plan = EpochPlan(table, 0, 1, 8, weights=weights)
    drawn = Counter(plan.stream.tolist())
    assert len(plan.stream) == 100
    assert sum(n for i, n in drawn.items() if i >= 90) > 30  # about half the draws
    keep = np.arange(100) % 2 == 0
    assert set(EpochPlan(table, 0, 1, 8, keep=keep).stream.tolist()) == set(np.flatnonzero(keep).tolist())


# ==================================================================== written shards, read back
@pytest.fixture(scope="module")
def fsd_shards(tmp_path_factory):
    """A synthetic FSD50K release (multi-label) written as shards of 4 clips."""
    root = tmp_path_factory.mktemp("fsd_shards")
    data = make_dataset("FSD50K", root / "data", per_class=2, seconds=0.3, n_classes=6)
    write_shards("FSD50K", root / "shards", {"data_folder": str(data)}, samples_per_shard=4,
                 workers=1)
    return data, root / "shards"


class Fbank:
    """A stand-in input processor: the first 800 samples, padded."""
    sample_rate, samples_needed, min_samples = 16000, 800, 0

    def __call__(self, wav):
        return torch.nn.functional.pad(wav, (0, 800 - wav.shape[0]))


def shard_dataset(folder, split="train", **options):
    index = read_index(folder)
    table = SampleTable(folder, index, index["splits"]["all"][split], index["class_names"],
                        Task.of("multilabel"))
    return ShardDataset(table, Fbank(), batch_size=options.pop("batch_size", 3),
                        train=split == "train", seed=options.pop("seed", 7), shuffle_buffer=4,
                        n_classes=len(index["class_names"]), **options)


def epoch(dataset, workers, epoch=1, done=0):
    dataset.set_epoch(epoch, done)
    loader = dataset.make_dataloader(None, num_workers=workers)
    return [(list(b.id), b.inputs.data.clone(), b.targets.data.clone()) for b in loader]


def test_index_and_tables_describe_the_shards_and_webdataset_reads_them(fsd_shards):
    import webdataset as wds

    data, folder = fsd_shards
    index = read_index(folder)
    assert index["dataset"] == "FSD50K" and index["task"] == "multilabel"
    assert index["splits"] == {"all": {"train": ["train"], "valid": ["valid"], "test": ["test"]}}
    train = index["parts"]["train"]
    assert train["samples"] == sum(s["samples"] for s in train["shards"])
    assert all(s["samples"] <= 4 for s in train["shards"])
    urls = [str(folder / s["file"]) for s in train["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == train["samples"]
    meta = json.loads(samples[0]["json"])
    assert (data / "FSD50K.dev_audio" / f"{meta['id']}.wav").read_bytes() == samples[0]["wav"]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_an_epoch_yields_every_training_clip_once_in_a_seeded_order(fsd_shards, workers):
    _, folder = fsd_shards
    dataset = shard_dataset(folder)
    first = epoch(dataset, workers)
    ids = [i for batch in first for i in batch[0]]
    assert sorted(ids) == sorted(dataset.table.ids.tolist()) and len(first) == len(dataset)
    again = epoch(shard_dataset(folder), workers)
    assert [b[0] for b in again] == [b[0] for b in first]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert [b[0] for b in epoch(dataset, workers, epoch=2)] != [b[0] for b in first]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers,done", [(1, 2), (2, 2), (2, 3), (3, 1), (3, 5)])
def test_resumed_epoch_yields_exactly_the_batches_left(fsd_shards, workers, done):
    _, folder = fsd_shards
    full = epoch(shard_dataset(folder, batch_size=2), workers, epoch=3)
    rest = epoch(shard_dataset(folder, batch_size=2), workers, epoch=3, done=done)
    assert len(full) > done + 2
    assert [b[0] for b in rest] == [b[0] for b in full[done:]]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(rest, full[done:]))


def test_a_resumed_epoch_does_not_read_the_shards_it_finished(fsd_shards, monkeypatch):
    from petl_modules.training import shards as shards_module

    _, folder = fsd_shards
    opened = []
    original = tarfile.open

    def counting_open(name=None, *args, **kwargs):
        opened.append(str(name))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(tarfile, "open", counting_open)
    dataset = shard_dataset(folder, batch_size=1)
    dataset.shuffle_buffer = 1  # no shuffling: clips come in shard order
    total = len(dataset)
    epoch(dataset, 0, epoch=1, done=total - 1)
    assert len(set(opened)) == 1  # only the last clip's shard
    assert shards_module.read_index(folder)  # the module is the one patched above


def test_evaluation_reads_every_clip_in_written_order_with_any_number_of_workers(fsd_shards):
    _, folder = fsd_shards
    dataset = shard_dataset(folder, split="test")
    ids = dataset.table.ids.tolist()
    for workers in (0, 2):
        got = [i for batch in epoch(dataset, workers) for i in batch[0]]
        assert sorted(got) == sorted(ids)
    assert [i for b in epoch(dataset, 0) for i in b[0]] == ids


def test_written_shards_are_kept_by_a_rerun_and_other_options_are_refused(fsd_shards, tmp_path):
    from petl_modules.shard import ShardWriteError

    data, folder = fsd_shards
    before = {p: p.stat().st_mtime_ns for p in folder.glob("*/*.tar")}
    write_shards("FSD50K", folder, {"data_folder": str(data)}, samples_per_shard=4, workers=1)
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/*.tar")} == before
    with pytest.raises(ShardWriteError, match="other data or options"):
        write_shards("FSD50K", folder, {"data_folder": str(data)}, samples_per_shard=3, workers=1)


def test_flac_shards_hold_16khz_mono_clips(fsd_shards, tmp_path):
    import io

    import soundfile as sf

    data, _ = fsd_shards
    out = tmp_path / "flac"
    index = write_shards("FSD50K", out, {"data_folder": str(data)}, audio="flac",
                         samples_per_shard=50, workers=1)
    with tarfile.open(out / index["parts"]["test"]["shards"][0]["file"]) as tar:
        member = next(m for m in tar if m.name.endswith(".flac"))
        info = sf.info(io.BytesIO(tar.extractfile(member).read()))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")


def test_fold_recipe_shards_each_fold_once_and_its_splits_are_unions_of_folds(tmp_path):
    data = make_dataset("ESC50", tmp_path / "esc", per_class=1, seconds=0.1)
    index = write_shards("ESC50", tmp_path / "shards", {"data_folder": str(data)},
                         samples_per_shard=30, workers=1)
    assert sorted(index["parts"]) == [f"fold{k}" for k in range(1, 6)]
    assert index["splits"]["1"] == {"train": ["fold2", "fold3", "fold4"], "valid": ["fold5"],
                                    "test": ["fold1"]}
    assert sum(p["samples"] for p in index["parts"].values()) == 250


def test_values_an_index_gives_the_run_stay_plain_strings_never_yaml_tags(fsd_shards, tiny_ast,
                                                                           tmp_path):
    """shards.json is data (shards may come from someone else): the class names and data folder
    it gives the run reach the composed configuration as the strings they are."""
    _, folder = fsd_shards
    copy = tmp_path / "shards"
    shutil.copytree(folder, copy)
    marker = tmp_path / "touched"
    index = json.loads((copy / "shards.json").read_text())
    tag = f"!apply:pathlib.Path.touch ['{marker}']"
    names = [tag, "!ref <output_folder>", "*alias", "&anchor x", "a: b", *index["class_names"][5:]]
    index.update(class_names=names, data_folder=tag)
    (copy / "shards.json").write_text(json.dumps(index))
    run = recipe.load_run(str(REPO / "hparams" / "linear.yaml"),
                          REPO / "recipes" / "FSD50K" / "fsd50k.yaml",
                          {"shards": str(copy), "backbone_source": str(tiny_ast),
                           "output_folder": str(tmp_path / "out")}, {})
    assert run.hparams["class_names"] == names and run.hparams["data_folder"] == tag
    assert not marker.exists()
