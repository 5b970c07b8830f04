"""Clips of recordings: what the input pipelines read for every way a row becomes a clip.

The golden figures were pinned on the code before segments, training crops and evaluation windows
became one ``Clip`` (issue 28, item 2): sha256 of every row's ``id``, window fields, ``inputs``
and mixed targets, read from 16 kHz files written from seeded draws (16-bit PCM: the samples read
are exact on every machine; the pass-through processor leaves them as read), so the refactored
pipeline must hand out the very same bits.
"""
import hashlib

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from petl_modules.training.mixup import WaveformMixup
from petl_modules.training.recipe import add_pipelines
from petl_modules.training.windows import EvalProtocol, TrainCrop, window_dataset

CLIP = 8000


class PassThrough:
    """An input processor handing the waveform through: ``CLIP`` samples, short clips padded."""

    sample_rate, min_samples, samples_needed = 16000, 400, CLIP

    def __call__(self, wav):
        return wav


def pcm(path, seconds, seed, channels=1):
    data = np.random.default_rng(seed).integers(-20000, 20000, (int(seconds * 16000), channels))
    sf.write(str(path), data.astype("int16"), 16000, subtype="PCM_16")
    return str(path)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Whole files (shorter than a clip, of one clip and a bit, long, stereo) and segments."""
    folder = tmp_path_factory.mktemp("clips")
    files = {"short": pcm(folder / "short.wav", 0.02, 1), "mid": pcm(folder / "mid.wav", 0.7, 2),
             "long": pcm(folder / "long.wav", 2.3, 3), "stereo": pcm(folder / "st.wav", 1.1, 4, 2)}
    whole = {uid: {"wav": path, "label": "ab"[k % 2], "seg_start": "", "seg_end": "",
                   "duration": "0"} for k, (uid, path) in enumerate(files.items())}
    segments = {
        "long_a": {"wav": files["long"], "label": "a", "seg_start": "0.25", "seg_end": "1.9",
                   "duration": "1.650"},
        "long_b": {"wav": files["long"], "label": "b", "seg_start": "", "seg_end": "0.3",
                   "duration": "0.300"},
        "long_c": {"wav": files["long"], "label": "b", "seg_start": "1.5", "seg_end": "",
                   "duration": "0.800"},
        "stereo_a": {"wav": files["stereo"], "label": "a", "seg_start": "0.1", "seg_end": "0.12",
                     "duration": "0.020"},
    }
    plain = {uid: {"wav": row["wav"], "label": row["label"]} for uid, row in whole.items()}
    return plain, {**whole, **segments}


def encoder():
    found = CategoricalEncoder()
    found.update_from_iterable(["a", "b"])
    return found


def digest(dataset, keys, epochs=(1,)):
    """sha256 of every row of every epoch (the dataset's ``train_crop``/``epoch_hooks`` set)."""
    sha = hashlib.sha256()
    count = 0
    for epoch in epochs:
        for hook in [getattr(dataset, "train_crop", None), *getattr(dataset, "epoch_hooks", [])]:
            if hook is not None:
                hook.set_epoch(epoch)
        with dataset.output_keys_as(keys):
            for item in dataset:
                count += 1
                for key in keys:
                    value = item[key]
                    if isinstance(value, torch.Tensor):
                        sha.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
                        sha.update(value.detach().contiguous().numpy().tobytes())
                    else:
                        sha.update(f"{key}={value}".encode())
    return count, sha.hexdigest()[:20]


def pipelines(split_rows, split, crop=False, mixup=False, windows=None):
    dataset = DynamicItemDataset({uid: dict(row) for uid, row in split_rows.items()})
    if windows:  # (the windows of a segment cover the segment: window_dataset reads its fields)
        dataset = window_dataset(dataset, PassThrough(), EvalProtocol("sliding", windows))
    waveform_mixup = WaveformMixup(dataset.data_ids, 7, 2.0, 0.8) if mixup else None
    add_pipelines({split: dataset}, PassThrough(), encoder(),
                  train_crop=TrainCrop(5, CLIP) if crop else None, waveform_mixup=waveform_mixup)
    return dataset


VARIANTS = {  # name: (rows (plain or with segments), split, options, keys)
    "plain": (0, "test", {}, ["id", "inputs", "label_index"]),
    "crop": (0, "train", {"crop": True}, ["id", "inputs"]),
    "segment": (1, "test", {}, ["id", "inputs"]),
    "segment_crop": (1, "train", {"crop": True}, ["id", "inputs"]),
    "windows": (0, "test", {"windows": 0.3}, ["id", "inputs", "utterance", "window_start",
                                              "window_end"]),
    "segment_windows": (1, "test", {"windows": 0.2},
                        ["id", "inputs", "utterance", "window_start", "window_end"]),
    "mixup": (0, "train", {"mixup": True}, ["id", "inputs", "mixed_targets"]),
    "mixup_segment_crop": (1, "train", {"mixup": True, "crop": True},
                           ["id", "inputs", "mixed_targets"]),
}
# (rows read over the epochs, sha256 prefix): computed on the code before the clips, pinned.
GOLDEN = {
    "plain": (4, "21fb29728aa8b939b4ba"),
    "crop": (12, "ded385c6a6f205c13a7d"),
    "segment": (8, "ae5113ffea2c3406eb82"),
    "segment_crop": (24, "554e948d1bf741687254"),
    "windows": (13, "f17d60ead62fee0d8853"),
    "segment_windows": (29, "34f4b61df7977c1a473e"),
    "mixup": (12, "edf20f84c0f5bc6fd6b0"),
    "mixup_segment_crop": (24, "350d3608ed0bd0fa01f4"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_pipeline_variant_reads_the_same_bits_as_before_the_clips(rows, name):
    which, split, options, keys = VARIANTS[name]
    dataset = pipelines(rows[which], split, **options)
    found = digest(dataset, keys, epochs=(1, 2, 3) if split == "train" else (1,))
    assert found == GOLDEN[name]


# ==================================================================== tar shards read the same clips
class OneShardTable:
    """What ``ShardDataset`` reads of a ``SampleTable``: the rows (NaN: no segment bound)."""

    def __init__(self, rows):
        from petl_modules.model.task import Task

        self.ids = np.asarray(list(rows))
        cell = [[float(row[key]) if row[key] else np.nan for row in rows.values()]
                for key in ("seg_start", "seg_end", "duration")]
        self.seg_start, self.seg_end, self.duration = (np.asarray(c) for c in cell)
        self.shard_files, self.shard, self.keys = ["one.tar"], [0] * len(rows), list(rows)
        self.task, self.names = Task.of("single_label"), [row["label"] for row in rows.values()]

    def labels(self, i):
        return ["ab".index(self.names[i])]


def test_shards_read_segments_crops_and_windows_as_the_loose_files_do(rows):
    """The shard reader makes the same clips of the same rows (its segment bounds are NaN where
    the manifest's are empty) as the pinned loose-file pipelines above."""
    from petl_modules.training.shards import ShardDataset

    segment_rows = rows[1]
    table = OneShardTable(segment_rows)
    data = [open(row["wav"], "rb").read() for row in segment_rows.values()]
    common = {"batch_size": 2, "seed": 5, "shuffle_buffer": 1, "n_classes": 2}
    train = ShardDataset(table, PassThrough(), train=True, train_crop=TrainCrop(5, CLIP), **common)
    loose = pipelines(segment_rows, "train", crop=True)
    for epoch in (1, 2):
        train.set_epoch(epoch)
        loose.train_crop.set_epoch(epoch)
        with loose.output_keys_as(["id", "inputs"]):
            expected = {item["id"]: item["inputs"] for item in loose}
        for i, uid in enumerate(table.ids):
            assert torch.equal(train._item(i, data[i], 0)["inputs"], expected[uid])
    test = ShardDataset(table, PassThrough(), train=False, protocol=EvalProtocol("sliding", 0.2),
                        **common)
    windows = pipelines(segment_rows, "test", windows=0.2)
    keys = ["id", "inputs", "utterance", "window_start", "window_end"]
    with windows.output_keys_as(keys):
        expected = [[item[k] for k in keys] for item in windows]
    found = [[item[k] for k in keys] for i in range(len(data)) for item in test._eval_items(i, data[i])]
    assert len(found) == len(expected) == GOLDEN["segment_windows"][0]
    for row, want in zip(found, expected):
        assert row[0] == want[0] and row[2:] == want[2:] and torch.equal(row[1], want[1])


# ==================================================================== the clip itself
def test_a_segment_clip_reads_empty_bounds_as_the_whole_file_or_its_start():
    from petl_modules.model.clip import Clip

    for empty in (None, "", float("nan")):
        assert Clip.of_segment("a.wav", empty, empty, "3.0") == Clip("a.wav")
    assert Clip.of_segment("a.wav", empty, "0.5", "0.5") == Clip("a.wav", 0, 8000)
    assert Clip.of_segment("a.wav", "1.0", None, "0.00001", rate=16000) == Clip("a.wav", 16000, 16001)
    assert Clip.of_segment("a.wav", 0.5, 2.0, 1.5, rate=8000) == Clip("a.wav", 4000, 16000)


def test_a_crop_of_a_whole_file_is_drawn_on_its_length_when_read(rows):
    from petl_modules.model.clip import Clip
    from petl_modules.model.audio import audio_length, load_audio
    from petl_modules.training.windows import crop_start

    path = rows[0]["long"]["wav"]
    crop = TrainCrop(5, CLIP)
    crop.set_epoch(4)
    start = crop_start(5, 4, "long", CLIP, audio_length(path))
    assert 0 < start
    read = Clip(path).crop(crop("long")).read(PassThrough())
    assert torch.equal(read, load_audio(path)[start: start + CLIP])
    later = Clip(path, 1000).crop(lambda length: length - CLIP)  # the last clip from sample 1000 on
    assert torch.equal(later.read(PassThrough()), load_audio(path)[-CLIP:])
