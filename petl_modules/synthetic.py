"""Small synthetic datasets in the official on-disk layouts (a test, demo and benchmark utility).

The library names no dataset: each recipe owns its generator, ``recipes/<DATASET>/<name>_synthetic.py``
beside its ``<name>_prepare.py``. This module holds what the generators share (``class_signal``,
a learnable class-specific waveform; ``write_wav``; ``write_csv``; ``official_class_names``) and
finds the generators:

- where: the recipes are not an installed package, so they are found on disk through
  ``petl_modules.paths.recipes_folder()`` (``$PETL_AST_ROOT/recipes`` if that variable is set, else
  the ``recipes/`` of the first folder holding ``hparams/`` and ``recipes/`` above the current
  directory or the installed package);
- which: every ``recipes/<DATASET>/*_synthetic.py`` (one per folder); ``available_datasets()``
  lists those folders;
- how: ``generator_module(dataset)`` imports the file by its path with ``importlib`` under a
  module name of its own (``petl_recipe_<DATASET>_<file stem>``, so two recipes' files never clash
  and nothing is added to ``sys.path``); a file is imported once per process.

A generator module defines

- ``generate(root, per_class, seed, seconds)``: writes a few learnable utterances per class (the
  unit ``per_class`` counts is the generator's: per split, fold or speaker) in exactly the layout
  of the real release under ``root``, so that the real preparation script and recipe run on it
  unchanged; returns the release's top folder;
- ``DEMO``: the settings of ``python -m petl_modules.demo`` for that dataset: ``per_class``,
  ``release`` (the folder a user points ``--data_folder`` at), ``options`` (recipe options that keep
  a run on a tiny backbone short), for one dataset ``default: True``, and optionally ``tasks``
  (``["single_label", "multilabel"]``: ``generate`` then takes ``task=`` and the demo offers
  ``--task=multilabel``).

``make_dataset(dataset, root, per_class, seed, **options)`` calls the dataset's ``generate``.
"""

import csv
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import ruamel.yaml
import soundfile as sf

from petl_modules.paths import recipes_folder

SAMPLE_RATE = 16000
GENERATOR_PATTERN = "*_synthetic.py"  # a recipe's generator: recipes/<DATASET>/<name>_synthetic.py


class NoGeneratorError(ValueError):
    """No synthetic generator for the dataset asked for (no ``recipes/<DATASET>/*_synthetic.py``)."""


# -------------------------------------------------------------------------------- signal and files
def class_signal(index, n_classes, seconds, sample_rate=SAMPLE_RATE, rng=None, top_hz=6000.0):
    """A waveform that identifies class ``index`` among ``n_classes`` (float32, ``[S]``).

    Two tones at class-specific frequencies (log-spaced over 150 Hz - ``top_hz``) with a rising
    chirp, random gain, start offset and background noise: separable by a tiny model in a few
    epochs. Keep ``top_hz`` below the lowest sample rate / 2.5 of a dataset for the class
    frequencies not to depend on the file's rate.
    """
    rng = rng or np.random.default_rng(index)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    low, high = math.log(150.0), math.log(min(top_hz, sample_rate / 2.5))
    f1 = math.exp(low + (high - low) * index / max(1, n_classes - 1))
    f2 = f1 * (1.5 if index % 2 else 2.5)
    chirp = f1 * (1 + 0.2 * t / max(seconds, 1e-3))
    wave = np.sin(2 * np.pi * np.cumsum(chirp) / sample_rate) + 0.5 * np.sin(2 * np.pi * f2 * t)
    envelope = np.ones(n)
    start = int(rng.uniform(0, 0.2) * n)
    envelope[:start] = 0.0
    signal = rng.uniform(0.2, 0.5) * wave * envelope + 0.01 * rng.standard_normal(n)
    return signal.astype(np.float32)


def tagged_signal(indices, n_classes, seconds, sample_rate=SAMPLE_RATE, rng=None):
    """A waveform holding every class of ``indices`` (the sum of their ``class_signal``, scaled to
    stay within [-1, 1]): a clip with several tags, for multi-label data."""
    signal = sum(class_signal(int(k), n_classes, seconds, sample_rate, rng) for k in indices)
    return (signal / max(1, len(indices))).astype(np.float32)


def long_tail_counts(n_classes, rarest, head=4):
    """Clips per class of a long-tailed label distribution: ``head`` x ``rarest`` for class 0,
    falling as 1 / rank, never below ``rarest``.

    Example
    -------
    >>> long_tail_counts(4, 2)
    [8, 4, 3, 2]
    """
    return [max(int(rarest), round(head * int(rarest) / (1 + k))) for k in range(int(n_classes))]


def tag_sets(counts, rng, extra=0.35):
    """The classes of multi-label clips: ``counts[k]`` clips whose first class is ``k``, each with
    one more class (another one, at random) with probability ``extra``; shuffled. A list of sorted
    class-index lists."""
    n_classes = len(counts)
    clips = []
    for k, count in enumerate(counts):
        for _ in range(int(count)):
            tags = {k}
            if n_classes > 1 and rng.random() < extra:
                tags.add(int((k + 1 + rng.integers(n_classes - 1)) % n_classes))
            clips.append(sorted(tags))
    order = rng.permutation(len(clips))
    return [clips[i] for i in order]


def write_wav(path, signal, sample_rate=SAMPLE_RATE, subtype="PCM_16", channels=1):
    """Writes ``signal`` (mono float) to ``path``, duplicated over ``channels``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    sf.write(str(path), data, sample_rate, subtype=subtype)


def write_csv(path, header, rows):
    """Writes a csv file (``header`` then ``rows``), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def official_class_names(recipe):
    """The class names a recipe's dataset yaml lists (``class_names``), in its own order.

    ``recipe`` is the folder name under ``recipes/``.
    """
    path = next((recipes_folder() / recipe).glob("*.yaml"))
    with open(path) as stream:
        return [str(name) for name in ruamel.yaml.YAML().load(stream)["class_names"]]


# ------------------------------------------------------------------------------ finding generators
_MODULES = {}  # resolved path of a generator file -> its module


def generator_files():
    """``{dataset: path}`` of every ``recipes/<DATASET>/*_synthetic.py``, sorted by dataset."""
    files = {}
    for path in sorted(recipes_folder().glob(f"*/{GENERATOR_PATTERN}")):
        dataset = path.parent.name
        if dataset in files:
            raise NoGeneratorError(
                f"recipes/{dataset}/ holds more than one {GENERATOR_PATTERN}: "
                f"{files[dataset].name} and {path.name}; keep one."
            )
        files[dataset] = path
    return files


def available_datasets():
    """The recipe folders that have a synthetic generator, sorted (case-insensitively)."""
    return sorted(generator_files(), key=str.lower)


def generator_module(dataset):
    """The module of ``recipes/<dataset>/*_synthetic.py``, imported by path (once per process)."""
    files = generator_files()
    if dataset not in files:
        known = ", ".join(sorted(files, key=str.lower)) or "none"
        raise NoGeneratorError(
            f"No synthetic generator for '{dataset}': no {recipes_folder() / str(dataset)}/"
            f"{GENERATOR_PATTERN}. Known: {known}."
        )
    path = files[dataset].resolve()
    if path not in _MODULES:
        name = re.sub(r"\W", "_", f"petl_recipe_{dataset}_{path.stem}")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it, as a normal import does
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        for attribute in ("generate", "DEMO"):
            if not hasattr(module, attribute):
                raise NoGeneratorError(f"{path} defines no '{attribute}' (see petl_modules.synthetic).")
        _MODULES[path] = module
    return _MODULES[path]


def demo_settings(dataset):
    """The ``DEMO`` dict of a dataset's generator (per_class, release, options, default)."""
    return generator_module(dataset).DEMO


def make_dataset(name, root, per_class=2, seed=0, **options):
    """Writes the synthetic copy of dataset ``name`` (a recipe folder) under ``root``.

    ``options`` go to the generator (e.g. ``seconds``). Returns the release's top folder.
    """
    return generator_module(name).generate(root, per_class=per_class, seed=seed, **options)
