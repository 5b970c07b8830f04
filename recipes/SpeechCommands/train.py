#!/usr/bin/env python3
"""Speech Commands v2 keyword spotting (35 words) with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/SpeechCommands/train.py hparams/linear.yaml --data_folder=/data/speech_commands_v0.02

The official validation and testing lists give the valid and test splits; results.json holds
their accuracies.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speechcommands_prepare import LISTS, RELEASE, SPLITS, prepare_speechcommands  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest  # noqa: E402

DATASET_YAML = Path(__file__).with_name("speechcommands.yaml")


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
            brain = SpeechCommandsBrain(
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
