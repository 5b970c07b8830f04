#!/usr/bin/env python3
"""FSD50K sound event tagging (200 classes, multi-label) with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/FSD50K/train.py hparams/adapter.yaml --data_folder=/data/FSD50K
    python recipes/FSD50K/train.py hparams/lora.yaml --data_folder=/data/FSD50K --shards=/data/fsd50k_shards

Train on dev's train split, select on its val split, test on eval (fsd50k_prepare.py);
results.json holds mAP, micro/macro F1 and d-prime, test_per_class.csv every class's AP.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsd50k_prepare import MARKER, RELEASE, SPLITS, options_from_data, prepare_fsd50k  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain, selection_key  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest  # noqa: E402

DATASET_YAML = Path(__file__).with_name("fsd50k.yaml")


class FSD50KBrain(ClassificationBrain):
    """Several classes per clip: the shared Brain with task: multilabel (fsd50k.yaml)."""


def prepare(hparams):
    prepare_fsd50k(hparams["data_folder"], hparams["manifest_folder"], hparams["class_names"],
                   hparams["skip_bad_files"])


def make_datasets(hparams, fold):
    """The official splits (FSD50K has no folds)."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, MARKER)
    return {split: load_manifest(Path(hparams["manifest_folder"]) / f"{split}.csv", data_root)
            for split in SPLITS}


def main(argv=None):
    """The recipe, in SpeechBrain's template order, on the command line ``argv`` (default
    ``sys.argv[1:]``); returns the content of results.json."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    # compose, read the classes of the vocabulary (no audio read), check, build
    run = recipe.load_run(hparams_file, DATASET_YAML, overrides, run_opts, options_from_data)
    with recipe.claimed_output_folder(run):  # this run's alone; errors as one line
        run.prepare(prepare)  # on the main process; nothing to prepare with --shards
        for fold in run.unfinished_folds():
            hparams = run.fold_hparams(fold)
            datasets, class_names = run.datasets(make_datasets, hparams, fold)
            brain = FSD50KBrain(
                modules=hparams["modules"],
                opt_class=hparams["opt_class"],
                hparams=hparams,
                run_opts=run_opts,
                checkpointer=hparams["checkpointer"],
            )
            brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"],
                      train_loader_kwargs=hparams["train_loader_options"],
                      valid_loader_kwargs=hparams["eval_loader_options"])
            brain.evaluate(datasets["test"], max_key=selection_key(hparams),
                           test_loader_kwargs=hparams["eval_loader_options"])
            run.finish_fold(fold, hparams, brain, class_names)
        return run.write_results()


if __name__ == "__main__":
    main()
