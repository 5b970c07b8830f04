#!/usr/bin/env python3
"""Your own audio classification data with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/AudioFolder/train.py hparams/adapter.yaml --data_folder=/data/my_sounds
    python recipes/AudioFolder/train.py hparams/lora.yaml --data_folder=/data/tags \
        --manifest=/data/tags/metadata.csv --task=multilabel
    python recipes/AudioFolder/train.py hparams/linear.yaml --data_folder=/data/my_sounds --num_folds=5

The layout (a folder per class, or a CSV/JSONL manifest), the splits or folds and the classes come
from the data (audiofolder_prepare.py; recipes/AudioFolder/README.md). With folds, all run by
default, each in <output_folder>/fold_<k>: fold k tests, the fold before it validates.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audiofolder_prepare import MANIFEST, detect_layout, options_from_data, prepare_audiofolder  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain, selection_key  # noqa: E402
from petl_modules.training.compose import scalar_hparams  # noqa: E402
from petl_modules.training.recipe import load_manifest, rotating_fold_datasets  # noqa: E402

DATASET_YAML = Path(__file__).with_name("audiofolder.yaml")


class AudioFolderBrain(ClassificationBrain):
    """The shared classification Brain: single-label or, with --task=multilabel, multi-label."""


def prepare(hparams):
    prepare_audiofolder(scalar_hparams(hparams), hparams["manifest_folder"])


def make_datasets(hparams, fold):
    """The given or seeded splits, or with folds: fold ``fold`` tests, the one before validates."""
    data_root = detect_layout(hparams["data_folder"], hparams["manifest"]).root
    manifest = Path(hparams["manifest_folder"]) / f"{MANIFEST}.csv"
    if fold is not None:
        return rotating_fold_datasets(manifest, data_root, hparams["folds"], fold)
    return {split: load_manifest(manifest, data_root, key_test={"split": lambda s, x=split: s == x})
            for split in ("train", "valid", "test")}


def main(argv=None):
    """The recipe, in SpeechBrain's template order, on the command line ``argv`` (default
    ``sys.argv[1:]``); returns the content of results.json."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    # compose, read the classes and folds of the data (no audio read), check, build
    run = recipe.load_run(hparams_file, DATASET_YAML, overrides, run_opts, options_from_data)
    with recipe.claimed_output_folder(run):  # this run's alone; errors as one line
        run.prepare(prepare)  # on the main process; nothing to prepare with --shards
        for fold in run.unfinished_folds():
            hparams = run.fold_hparams(fold)
            datasets, class_names = run.datasets(make_datasets, hparams, fold)
            brain = AudioFolderBrain(
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
