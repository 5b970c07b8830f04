#!/usr/bin/env python3
"""UrbanSound8K urban sound classification with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/UrbanSound8K/train.py hparams/linear.yaml --data_folder=/data/UrbanSound8K
    python recipes/UrbanSound8K/train.py hparams/adapter.yaml --data_folder=/data/UrbanSound8K --fold=10

All 10 folds run by default, each in <output_folder>/fold_<k>. Fold k: test on fold k, validate
on the fold before it, train on the other eight (the reference selected on the test fold).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from urbansound8k_prepare import MANIFEST, METADATA, RELEASE, prepare_urbansound8k  # noqa: E402

from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import rotating_fold_datasets, run_recipe  # noqa: E402


class UrbanSound8KBrain(ClassificationBrain):
    """One class per slice: the shared classification Brain (SpecAugment from urbansound8k.yaml)."""


def prepare(hparams):
    prepare_urbansound8k(hparams["data_folder"], hparams["manifest_folder"],
                         hparams["class_names"], hparams["skip_bad_files"])


def make_datasets(hparams, fold):
    """Fold ``fold`` tests, the fold before it validates, the other eight train."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, METADATA)
    manifest = Path(hparams["manifest_folder"]) / f"{MANIFEST}.csv"
    return rotating_fold_datasets(manifest, data_root, hparams["folds"], fold)


def main(argv=None):
    """Runs the recipe with the command line ``argv`` (default ``sys.argv[1:]``);
    returns the content of results.json."""
    return run_recipe(UrbanSound8KBrain, Path(__file__).with_name("urbansound8k.yaml"), prepare,
                      make_datasets, argv)


if __name__ == "__main__":
    main()
