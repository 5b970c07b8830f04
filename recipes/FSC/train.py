#!/usr/bin/env python3
"""Fluent Speech Commands intent classification with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/FSC/train.py hparams/linear.yaml --data_folder=/data/fluent_speech_commands_dataset

The method file (hparams/<method>.yaml) says what trains, fsc.yaml the dataset defaults; any key
of either can be overridden with --key=value. Results land in <output_folder>/results.json.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsc_prepare import MARKER, RELEASE, prepare_fsc  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest  # noqa: E402

DATASET_YAML = Path(__file__).with_name("fsc.yaml")


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
            brain = FSCBrain(
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
