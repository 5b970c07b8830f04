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

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from urbansound8k_prepare import MANIFEST, METADATA, RELEASE, prepare_urbansound8k  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import rotating_fold_datasets  # noqa: E402

DATASET_YAML = Path(__file__).with_name("urbansound8k.yaml")


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
            brain = UrbanSound8KBrain(
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
