"""Synthetic data for the AudioFolder recipe: a folder per class (single-label) or a manifest with
several classes per file (multi-label).

Found and imported by ``petl_modules.synthetic.make_dataset("AudioFolder", ...)`` (see that
module); ``python -m petl_modules.demo --dataset=AudioFolder [--task=multilabel]``.
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import class_signal, write_csv, write_wav

RELEASE = "my_sounds"
MULTILABEL_RELEASE = "my_tags"
CLASSES = ["bird", "engine", "rain", "siren"]
SPLITS = ("train", "valid", "test")

# python -m petl_modules.demo: 2 s recordings (longer than the demo's 1 s clips: random crops in
# training, sliding windows in evaluation); --task=multilabel writes the manifest variant.
DEMO = {"per_class": 6, "release": RELEASE, "options": ["--time_mask=20"],
        "tasks": ["single_label", "multilabel"]}


def generate(root, per_class=1, seed=0, seconds=2.0, task="single_label"):
    """Writes ``per_class`` recordings per class and split under ``root/my_sounds`` (multilabel:
    ``root/my_tags``).

    single_label: ``<split>/<class>/<k>.wav`` (the folder-per-class layout with split folders).
    multilabel: ``audio/<split>_<k>.wav`` and ``metadata.csv`` (``file_name,labels,split``): each
    recording holds its class and, every other one, the next class too (``bird;engine``).
    Returns the top folder (``--data_folder``).
    """
    folder = Path(root) / (RELEASE if task == "single_label" else MULTILABEL_RELEASE)
    rng = np.random.default_rng(seed)
    n = len(CLASSES)
    rows = []
    for split in SPLITS:
        for index, name in enumerate(CLASSES):
            for k in range(per_class):
                signal = class_signal(index, n, seconds, rng=rng)
                if task == "single_label":
                    write_wav(folder / split / name / f"{name}_{k}.wav", signal)
                    continue
                labels = [name]
                if k % 2:
                    other = (index + 1) % n
                    signal = signal + class_signal(other, n, seconds, rng=rng)
                    labels.append(CLASSES[other])
                file_name = f"audio/{split}_{name}_{k}.wav"
                write_wav(folder / file_name, 0.5 * signal)
                rows.append([file_name, ";".join(labels), split])
    if task != "single_label":
        write_csv(folder / "metadata.csv", ["file_name", "labels", "split"], rows)
    return folder
