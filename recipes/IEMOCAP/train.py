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

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iemocap_prepare import MANIFEST, MARKER, RELEASE, prepare_iemocap  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest  # noqa: E402

DATASET_YAML = Path(__file__).with_name("iemocap.yaml")


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
    """The recipe, in SpeechBrain's template order, on the command line ``argv`` (default
    ``sys.argv[1:]``); returns the content of results.json."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    run = recipe.load_run(hparams_file, DATASET_YAML, overrides, run_opts)  # compose, check, build
    with recipe.claimed_output_folder(run):  # this run's alone; errors as one line
        run.prepare(prepare)  # on the main process; nothing to prepare with --shards
        for fold in run.unfinished_folds():
            hparams = run.fold_hparams(fold)
            datasets, class_names = run.datasets(make_datasets, hparams, fold)
            brain = IEMOCAPBrain(
                modules=hparams["modules"],
                opt_class=hparams["opt_class"],
                hparams=hparams,
                run_opts=run_opts,
                checkpointer=hparams["checkpointer"],
            )
            brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"],
                      train_loader_kwargs=hparams["train_loader_options"],
                      valid_loader_kwargs=hparams["eval_loader_options"])
            brain.evaluate(datasets["test"], max_key="valid_acc",
                           test_loader_kwargs=hparams["eval_loader_options"])
            run.finish_fold(fold, hparams, brain, class_names)
        return run.write_results()


if __name__ == "__main__":
    main()
