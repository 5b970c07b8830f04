"""A synthetic FSD50K in the release layout (tests, demo): multi-label clips of varying length,
with a long-tailed label distribution.

Found and imported by ``petl_modules.synthetic.make_dataset("FSD50K", ...)`` (see that module).
"""

import csv
from pathlib import Path

import numpy as np

from petl_modules.synthetic import long_tail_counts, tag_sets, tagged_signal, write_csv, write_wav

RELEASE = "FSD50K"
RATE = 44100  # the release's clips: 44.1 kHz mono 16-bit PCM

# Labels spelt as the release's vocabulary spells them (underscores, parentheses); more classes
# than listed get numbered names.
LABELS = ["Accelerating_and_revving_and_vroom", "Accordion", "Acoustic_guitar", "Bark",
          "Bathtub_(filling_or_washing)", "Bell", "Bicycle_bell", "Church_bell", "Music",
          "Rain", "Speech", "Walk_and_footsteps"]

# python -m petl_modules.demo: 2 s clips on average (0.6-3 s), random 1 s crops in training,
# sliding windows in evaluation; a time mask that fits the demo's 1 s clips.
DEMO = {"per_class": 2, "release": RELEASE, "options": ["--time_mask=20", "--freq_mask=24"]}


def vocabulary(n_classes):
    """``[(label, mid)]`` of ``n_classes`` synthetic classes."""
    labels = LABELS[:n_classes] + [f"Sound_{k:03d}" for k in range(len(LABELS), n_classes)]
    return [(label, f"/m/0syn{k:03d}") for k, label in enumerate(labels)]


def generate(root, per_class=1, seed=0, seconds=2.0, n_classes=len(LABELS)):
    """The release layout under ``root/FSD50K``: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``,
    ``FSD50K.dev_audio/<fname>.wav`` and ``FSD50K.eval_audio/<fname>.wav``.

    Each class has at least ``per_class`` clips in each of dev's train and val splits and in eval,
    the first classes up to 4 times as many (a long tail); about a third of the clips hold a second
    class. Clips last 0.3 to 1.5 x ``seconds`` (the release: 0.3 to 30 s). Returns the top folder.
    """
    folder = Path(root) / RELEASE
    rng = np.random.default_rng(seed)
    vocab = vocabulary(n_classes)
    write_csv_rows(folder / "FSD50K.ground_truth" / "vocabulary.csv",
                   [[k, label, mid] for k, (label, mid) in enumerate(vocab)])
    fname = 1000
    dev, test = [], []
    for split, rows, audio in (("train", dev, "FSD50K.dev_audio"), ("val", dev, "FSD50K.dev_audio"),
                               (None, test, "FSD50K.eval_audio")):
        for tags in tag_sets(long_tail_counts(n_classes, per_class), rng):
            length = float(rng.uniform(0.3, 1.5)) * seconds
            write_wav(folder / audio / f"{fname}.wav",
                      tagged_signal(tags, n_classes, length, RATE, rng), RATE)
            labels = ",".join(vocab[k][0] for k in tags)
            mids = ",".join(vocab[k][1] for k in tags)
            rows.append([fname, labels, mids] + ([split] if split else []))
            fname += 1
    write_csv(folder / "FSD50K.ground_truth" / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    write_csv(folder / "FSD50K.ground_truth" / "eval.csv", ["fname", "labels", "mids"], test)
    return folder


def write_csv_rows(path, rows):
    """A CSV without a header line (the release's vocabulary.csv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
