#!/usr/bin/env python3
"""AudioSet sound event tagging (527 classes, multi-label) with a PETL method on a pre-trained encoder.

Usage (from the repository root):
    python recipes/AudioSet/train.py hparams/adapter.yaml --data_folder=/data/audioset
    python recipes/AudioSet/train.py hparams/lora.yaml --data_folder=/data/audioset --subset=full \
        --shards=/data/audioset_full_shards

--subset=balanced (default) or full trains, a seeded share of the balanced set validates, eval
tests (audioset_prepare.py); results.json holds mAP, micro/macro F1, d-prime and the missing clips.
"""

import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audioset_prepare import LABELS_FILE, RELEASE, SPLITS, options_from_data, prepare_audioset  # noqa: E402

from petl_modules.training import recipe  # noqa: E402
from petl_modules.training.arguments import parse_arguments  # noqa: E402
from petl_modules.training.brain import ClassificationBrain, selection_key  # noqa: E402
from petl_modules.training.compose import scalar_hparams  # noqa: E402
from petl_modules.training.prepare import resolve_data_folder  # noqa: E402
from petl_modules.training.recipe import load_manifest  # noqa: E402

DATASET_YAML = Path(__file__).with_name("audioset.yaml")


class AudioSetBrain(ClassificationBrain):
    """Several classes per clip: the shared Brain with task: multilabel (audioset.yaml)."""


def prepare(hparams):
    prepare_audioset(scalar_hparams(hparams), hparams["manifest_folder"], hparams["class_names"])


def make_datasets(hparams, fold):
    """The training subset, the validation share of the balanced set, the eval set."""
    data_root = resolve_data_folder(hparams["data_folder"], RELEASE, LABELS_FILE)
    return {split: load_manifest(Path(hparams["manifest_folder"]) / f"{split}.csv", data_root)
            for split in SPLITS}


def main(argv=None):
    """The recipe, in SpeechBrain's template order, on the command line ``argv`` (default
    ``sys.argv[1:]``); returns the content of results.json."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    # compose, read the classes of class_labels_indices.csv (no audio read), check, build
    run = recipe.load_run(hparams_file, DATASET_YAML, overrides, run_opts, options_from_data)
    with recipe.claimed_output_folder(run):  # this run's alone; errors as one line
        run.prepare(prepare)  # on the main process; nothing to prepare with --shards
        for fold in run.unfinished_folds():
            hparams = run.fold_hparams(fold)
            datasets, class_names = run.datasets(make_datasets, hparams, fold)
            brain = AudioSetBrain(
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
