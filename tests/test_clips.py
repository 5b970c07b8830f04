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
from petl_modules.training.recipe import add_pipelines, segment_span
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


def pipelines(split_rows, split, crop=False, mixup=False, windows=None, span=False):
    dataset = DynamicItemDataset({uid: dict(row) for uid, row in split_rows.items()})
    if windows:
        dataset = window_dataset(dataset, PassThrough(), EvalProtocol("sliding", windows),
                                 span=segment_span if span else None)
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
    "segment_windows": (1, "test", {"windows": 0.2, "span": True},
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
