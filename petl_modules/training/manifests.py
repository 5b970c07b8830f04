"""A recipe's manifests as SpeechBrain datasets: reading them (once per file for all the splits and
folds taken from it), the class names of a run, checked against every split, and the few-shot
subset of the training split; the warning for a validation split too small to choose the best
epoch on."""

import functools
import logging
import math
import random
from pathlib import Path

from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.dataset import DynamicItemDataset

from petl_modules.model.task import Task
from petl_modules.training.prepare import DataError

logger = logging.getLogger(__name__)


def load_manifest(csv_path, data_folder, key_test=None):
    """A ``DynamicItemDataset`` from a manifest (``$data_root`` -> ``data_folder``), filtered. A
    manifest is parsed once for all the splits and folds taken from it (``manifest_rows``)."""
    path = Path(csv_path)
    stat = path.stat()
    data = manifest_rows(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(data_folder))
    dataset = DynamicItemDataset({uid: dict(row) for uid, row in data.items()})  # SpeechBrain
    # writes "id" into the rows it hands out: each dataset gets its own copies
    if key_test:
        dataset = dataset.filtered_sorted(key_test=key_test)
    return dataset


@functools.lru_cache(maxsize=2)
def manifest_rows(path, mtime_ns, size, data_folder):
    """``{id: row}`` of the manifest at ``path`` (SpeechBrain's ``load_data_csv``), kept for the
    datasets built from it (each copies the rows); the modification time and size key the cache,
    so a manifest written again is read again."""
    return load_data_csv(path, {"data_root": data_folder})


def checked_class_names(datasets, hparams):
    """The class names of a run: the dataset yaml's ``class_names``, or those of the training split.

    Raises
    ------
    DataError
        A validation/test example whose label the model cannot output (naming it), or a number
        of classes other than ``n_classes``.
    """
    given = hparams.get("class_names")
    task = Task.of_options(hparams)
    names = [str(n) for n in given] if given else class_names_of([datasets["train"]], task)
    known = set(names)
    strays = []
    for split, dataset in datasets.items():
        with dataset.output_keys_as(["id", "label"]):
            strays += [(split, item["id"], item["label"]) for item in dataset
                       if not set(task.labels_of(item["label"])) <= known]
    where = hparams.get("manifest_folder")
    if strays:
        listed = "\n  ".join(f"{split}: {uid} has label '{label}'" for split, uid, label in strays[:10])
        source = "the dataset yaml's class_names" if given else "any training example"
        raise DataError(
            f"{len(strays)} example(s) in the manifests in {where} have a label that is not in "
            f"{source}:\n  {listed}\nFix those rows in the dataset's metadata (or leave them "
            "out), then delete the manifests folder to prepare again."
        )
    if len(names) != int(hparams["n_classes"]):
        raise DataError(
            f"The training examples in {where} hold {len(names)} classes but the dataset yaml says "
            f"n_classes={hparams['n_classes']}: check the data (a class with no training example?) "
            "or pass --n_classes."
        )
    return names


def class_names_of(datasets, task=None):
    """Sorted class names found in the ``label`` field of ``datasets`` (as ``task`` reads a
    label: ``;``-separated names for multi-label; default single-label)."""
    task = task or Task.of("single_label")
    names = set()
    for dataset in datasets:
        with dataset.output_keys_as(["label"]):
            for item in dataset:
                names.update(task.labels_of(item["label"]))
    return sorted(names)


def few_shot_subset(dataset, samples_per_class, seed):
    """Keeps ``samples_per_class`` random items of each class (seeded, balanced)."""
    with dataset.output_keys_as(["id", "label"]):
        keep = few_shot_ids(((item["id"], item["label"]) for item in dataset), samples_per_class,
                            seed)
    return dataset.filtered_sorted(key_test={"id": lambda i: i in keep})


def few_shot_ids(examples, samples_per_class, seed):
    """The ids ``few_shot_subset`` keeps of ``(id, label)`` pairs: ``samples_per_class`` per
    label, drawn with ``seed`` (a label with fewer keeps all, with a warning)."""
    by_class = {}
    for uid, label in examples:
        by_class.setdefault(label, []).append(uid)
    rng = random.Random(seed)
    keep = []
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        if len(ids) < samples_per_class:
            logger.warning(
                f"few_shot_samples={samples_per_class}: class '{label}' has only {len(ids)} "
                "training examples; keeping all of them."
            )
        keep += rng.sample(ids, min(samples_per_class, len(ids)))
    return set(keep)


# Fewer validation clips than this make the choice of the best epoch a warning.
MIN_VALIDATION_CLIPS = 50


def small_validation_warning(clips, hparams, files=None):
    """None, or the warning for a validation split of ``clips`` files (fewer than
    ``MIN_VALIDATION_CLIPS``) from which the best of several epochs is chosen, saying how to
    enlarge it (own data: ``--valid_fraction`` of the ``files`` of all splits, when the recipe
    draws the split; else more files in it)."""
    if clips >= MIN_VALIDATION_CLIPS or int(hparams.get("number_of_epochs", 1)) <= 1:
        return None
    text = (f"The validation split has {clips} clips (fewer than {MIN_VALIDATION_CLIPS}): the best "
            "epoch is chosen on it, and on so few clips that choice is noisy (one clip moves the "
            f"accuracy by {100 / max(clips, 1):.1f} points). Enlarge it: ")
    more = "put more files in the validation split (its folder or its rows of the manifest)"
    if hparams.get("valid_fraction") and files:
        wanted = MIN_VALIDATION_CLIPS / files
        if wanted <= 0.5:
            more = (f"where the recipe draws the split, --valid_fraction="
                    f"{math.ceil(wanted * 100) / 100:g} (now {float(hparams['valid_fraction']):g}) "
                    f"puts about {MIN_VALIDATION_CLIPS} of the {files} files there; else " + more)
        else:
            more = (f"add files ({files} in all: a --valid_fraction large enough would leave too "
                    "few to train), or " + more)
    return text + more + "."
