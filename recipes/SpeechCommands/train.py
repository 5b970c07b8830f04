#!/usr/bin/env python3
"""Speech Commands v2 keyword spotting (35 words) with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/SpeechCommands/train.py hparams/linear.yaml --data_folder=/data/speech_commands_v0.02

The official validation and testing lists give the valid and test splits; results.json holds
their accuracies.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speechcommands_prepare import LISTS, RELEASE, SPLITS, prepare_speechcommands  # noqa: E402

from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest, run_recipe  # noqa: E402


class SpeechCommandsBrain(ClassificationBrain):
    """One word per clip: the shared classification Brain as it is."""


def prepare(hparams):
    prepare_speechcommands(hparams["data_folder"], hparams["manifest_folder"],
                           hparams["class_names"], hparams["skip_bad_files"])


def make_datasets(hparams, fold):
    """The official splits (Speech Commands has no folds)."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, LISTS["test"])
    return {
        split: load_manifest(Path(hparams["manifest_folder"]) / f"{split}.csv", data_root)
        for split in SPLITS
    }


def main(argv=None):
    """Runs the recipe with the command line ``argv`` (default ``sys.argv[1:]``);
    returns the content of results.json."""
    return run_recipe(SpeechCommandsBrain, Path(__file__).with_name("speechcommands.yaml"), prepare,
                      make_datasets, argv)


if __name__ == "__main__":
    main()
