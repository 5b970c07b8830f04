#!/usr/bin/env python3
"""IEMOCAP emotion recognition (neu, hap + exc, sad, ang) with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/IEMOCAP/train.py hparams/linear.yaml --data_folder=/data/IEMOCAP_full_release
    python recipes/IEMOCAP/train.py hparams/adapter.yaml --data_folder=/data/IEMOCAP_full_release --fold=1

All 10 folds run by default, each in <output_folder>/fold_<k>: fold 2s-1 trains on the other
four sessions, validates on session s's female speaker and tests on its male speaker; fold 2s
swaps the two speakers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iemocap_prepare import MANIFEST, MARKER, RELEASE, prepare_iemocap  # noqa: E402

from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest, run_recipe  # noqa: E402


class IEMOCAPBrain(ClassificationBrain):
    """One emotion per utterance: the shared classification Brain as it is."""


def prepare(hparams):
    prepare_iemocap(hparams["data_folder"], hparams["manifest_folder"], hparams["class_names"],
                    hparams["skip_bad_files"])


def fold_split(fold):
    """``(held-out session, valid speaker, test speaker)`` of fold 1..10."""
    session = (int(fold) + 1) // 2
    return (session, "F", "M") if int(fold) % 2 else (session, "M", "F")


def make_datasets(hparams, fold):
    """Train on four sessions; validate on one speaker of the fifth, test on the other."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, MARKER)
    manifest = Path(hparams["manifest_folder"]) / f"{MANIFEST}.csv"
    session, valid_speaker, test_speaker = fold_split(fold)

    def held_out(speaker):
        return {"session": lambda s: int(s) == session, "speaker": lambda s: s == speaker}

    return {
        "train": load_manifest(manifest, data_root, key_test={"session": lambda s: int(s) != session}),
        "valid": load_manifest(manifest, data_root, key_test=held_out(valid_speaker)),
        "test": load_manifest(manifest, data_root, key_test=held_out(test_speaker)),
    }


def main(argv=None):
    """Runs the recipe with the command line ``argv`` (default ``sys.argv[1:]``);
    returns the content of results.json."""
    return run_recipe(IEMOCAPBrain, Path(__file__).with_name("iemocap.yaml"), prepare,
                      make_datasets, argv)


if __name__ == "__main__":
    main()
