"""Small synthetic datasets in the official on-disk layouts (a test and demo utility).

Each generator writes a few learnable utterances per class (a class-specific pair of tones with a
chirp, random gain, offset and noise) in exactly the layout of the real release, so that the real
preparation scripts and recipes run on them unchanged. Tests and ``python -m petl_modules.demo``
use these same functions.

Example
-------
>>> import tempfile
>>> folder = make_dataset("FSC", tempfile.mkdtemp(), per_class=1)
>>> folder.name
'fluent_speech_commands_dataset'
"""

import csv
import math
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def class_signal(index, n_classes, seconds, sample_rate=SAMPLE_RATE, rng=None):
    """A waveform that identifies class ``index`` among ``n_classes`` (float32, ``[S]``).

    Two tones at class-specific frequencies (log-spaced over 150 Hz - 6 kHz) with a rising chirp,
    random gain, start offset and background noise: separable by a tiny model in a few epochs.
    """
    rng = rng or np.random.default_rng(index)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    low, high = math.log(150.0), math.log(min(6000.0, sample_rate / 2.5))
    f1 = math.exp(low + (high - low) * index / max(1, n_classes - 1))
    f2 = f1 * (1.5 if index % 2 else 2.5)
    chirp = f1 * (1 + 0.2 * t / max(seconds, 1e-3))
    wave = np.sin(2 * np.pi * np.cumsum(chirp) / sample_rate) + 0.5 * np.sin(2 * np.pi * f2 * t)
    envelope = np.ones(n)
    start = int(rng.uniform(0, 0.2) * n)
    envelope[:start] = 0.0
    signal = rng.uniform(0.2, 0.5) * wave * envelope + 0.01 * rng.standard_normal(n)
    return signal.astype(np.float32)


def write_wav(path, signal, sample_rate=SAMPLE_RATE, subtype="PCM_16", channels=1):
    """Writes ``signal`` (mono float) to ``path``, duplicated over ``channels``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    sf.write(str(path), data, sample_rate, subtype=subtype)


# ------------------------------------------------------------------------------------------ FSC
FSC_INTENTS = (
    [(a, o, loc) for a in ("activate", "deactivate") for o in ("lights", "music", "lamp")
     for loc in ("kitchen", "bedroom", "washroom", "none")]
    + [(a, o, "none") for a in ("increase", "decrease") for o in ("volume", "heat")]
    + [("change language", lang, "none") for lang in ("Chinese", "Korean", "English")]
)
assert len(FSC_INTENTS) == 31


def make_fsc(root, per_class=2, seed=0, seconds=1.0):
    """Fluent Speech Commands layout: ``data/{train,valid,test}_data.csv`` + ``wavs/speakers/``.

    ``per_class`` utterances per intent in train, and one per intent in valid and test; speakers
    are disjoint across splits, as in the release.
    """
    folder = Path(root) / "fluent_speech_commands_dataset"
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "valid": 1, "test": 1}
    for split, count in counts.items():
        rows = []
        for index, (action, obj, location) in enumerate(FSC_INTENTS):
            for k in range(count):
                speaker = f"{split}Spk{k % 3}"
                uid = f"{split}-{index:02d}-{k}"
                rel = f"wavs/speakers/{speaker}/{uid}.wav"
                write_wav(folder / rel, class_signal(index, len(FSC_INTENTS), seconds, rng=rng))
                text = f"{action} {obj} {location}"
                rows.append([len(rows), rel, speaker, text, action, obj, location])
        csv_path = folder / "data" / f"{split}_data.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows(rows)
    return folder


GENERATORS = {"FSC": make_fsc}


def make_dataset(name, root, per_class=2, seed=0, **options):
    """Writes the synthetic copy of dataset ``name`` under ``root``; returns its top folder."""
    if name not in GENERATORS:
        raise ValueError(f"No synthetic generator for '{name}'. Known: {', '.join(GENERATORS)}.")
    return GENERATORS[name](root, per_class=per_class, seed=seed, **options)
