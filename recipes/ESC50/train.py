#!/usr/bin/env python3
"""ESC-50 environmental sound classification with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/ESC50/train.py hparams/linear.yaml --data_folder=/data/ESC-50-master
    python recipes/ESC50/train.py hparams/adapter.yaml --data_folder=/data/ESC-50-master --fold=2

All 5 folds run by default, each in <output_folder>/fold_<k> (fold k: test on fold k, validate on
the fold before it, train on the other three); results.json holds each fold and mean +- std.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esc50_prepare import MANIFEST, METADATA, RELEASE, prepare_esc50  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import rotating_fold_datasets  # noqa: E402

DATASET_YAML = Path(__file__).with_name("esc50.yaml")


class ESC50Brain(ClassificationBrain):
    """One category per clip: the shared classification Brain (SpecAugment from esc50.yaml)."""


def prepare(hparams):
    prepare_esc50(hparams["data_folder"], hparams["manifest_folder"], hparams["class_names"],
                  hparams["skip_bad_files"])


def make_datasets(hparams, fold):
    """Fold ``fold`` tests, the fold before it validates, the other three train."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, METADATA)
    manifest = Path(hparams["manifest_folder"]) / f"{MANIFEST}.csv"
    return rotating_fold_datasets(manifest, data_root, hparams["folds"], fold)


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
            brain = ESC50Brain(
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
