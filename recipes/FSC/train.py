#!/usr/bin/env python3
"""Fluent Speech Commands intent classification with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/FSC/train.py hparams/linear.yaml --data_folder=/data/fluent_speech_commands_dataset

The method file (hparams/<method>.yaml) says what trains, fsc.yaml the dataset defaults; any key
of either can be overridden with --key=value. Results land in <output_folder>/results.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsc_prepare import MARKER, RELEASE, prepare_fsc  # noqa: E402

from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest, run_recipe  # noqa: E402


class FSCBrain(ClassificationBrain):
    """One intent per utterance: the shared classification Brain as it is."""


def prepare(hparams):
    prepare_fsc(hparams["data_folder"], hparams["manifest_folder"], hparams["skip_bad_files"])


def make_datasets(hparams, fold):
    """The official splits (FSC has no folds)."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, MARKER)
    return {
        split: load_manifest(Path(hparams["manifest_folder"]) / f"{split}.csv", data_root)
        for split in ("train", "valid", "test")
    }


def main(argv=None):
    """Runs the recipe with the command line ``argv`` (default ``sys.argv[1:]``);
    returns the content of results.json."""
    return run_recipe(FSCBrain, Path(__file__).with_name("fsc.yaml"), prepare, make_datasets, argv)


if __name__ == "__main__":
    main()
