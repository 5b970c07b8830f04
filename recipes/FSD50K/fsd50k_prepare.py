"""FSD50K: manifests of the official release (Fonseca et al., 2022; Zenodo record 4060432).

The release, unzipped into one folder (``--data_folder``, usually named ``FSD50K``)::

    FSD50K.dev_audio/<fname>.wav       40,966 clips (train + val), 44.1 kHz mono 16-bit, 0.3-30 s
    FSD50K.eval_audio/<fname>.wav      10,231 clips
    FSD50K.ground_truth/dev.csv        fname,labels,mids,split   (split: train | val)
    FSD50K.ground_truth/eval.csv       fname,labels,mids
    FSD50K.ground_truth/vocabulary.csv index,label,mid   (no header line; 200 classes)

``labels`` and ``mids`` hold a clip's classes, comma-separated and quoted
(``"Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music"``); the labels
include every ancestor of a class in the AudioSet ontology. Other folders of the release
(``FSD50K.metadata``, ``FSD50K.doc``) are not read.

Protocol (the release's): train on dev's ``train`` split, select the model on dev's ``val`` split,
test on eval. The classes are the vocabulary's, in its index order (``class_names``); the manifest
``label`` column holds a clip's class names ``;``-separated (``--task=multilabel``).
"""

import csv
from pathlib import Path

from petl_modules.training.metrics import LABEL_SEPARATOR
from petl_modules.training.prepare import (
    DataError,
    manifests_up_to_date,
    read_release_csv,
    resolve_data_folder,
    write_manifests,
)

RELEASE = "FSD50K"
GROUND_TRUTH = "FSD50K.ground_truth"
MARKER = f"{GROUND_TRUTH}/dev.csv"
VOCABULARY = f"{GROUND_TRUTH}/vocabulary.csv"
DEV_HEADER = "fname,labels,mids,split"
EVAL_HEADER = "fname,labels,mids"
AUDIO = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}
SPLITS = ("train", "valid", "test")  # dev train, dev val, eval


def read_vocabulary(data_folder):
    """``[(label, mid)]`` of ``FSD50K.ground_truth/vocabulary.csv`` in index order.

    Raises
    ------
    DataError
        Missing file, a line that is not ``index,label,mid``, indices that are not 0..C-1, a
        label holding the manifest's separator.
    """
    path = Path(resolve_data_folder(data_folder, RELEASE, MARKER)) / VOCABULARY
    if not path.is_file():
        raise DataError(f"Missing {path}: the release has this file (FSD50K.ground_truth.zip); "
                        "restore it.")
    entries = {}
    with open(path, newline="", encoding="utf-8") as stream:
        for line, record in enumerate(csv.reader(stream), start=1):
            if not record:
                continue
            if len(record) != 3 or not record[0].strip().isdigit():
                raise DataError(f"{path} line {line} is not 'index,label,mid' (the release's "
                                f"vocabulary has no header line): {','.join(record)[:80]}")
            entries[int(record[0])] = (record[1].strip(), record[2].strip())
    if sorted(entries) != list(range(len(entries))) or len(entries) < 2:
        raise DataError(f"{path}: the indices must run from 0 to the number of classes - 1.")
    labels = [entries[k][0] for k in range(len(entries))]
    bad = [name for name in labels if LABEL_SEPARATOR in name]
    if bad or len(set(labels)) != len(labels):
        raise DataError(f"{path}: class labels must be distinct and hold no "
                        f"'{LABEL_SEPARATOR}' ({', '.join(bad) or 'a label repeats'}).")
    return [entries[k] for k in range(len(entries))]


def options_from_data(options):
    """The classes of the release's vocabulary (``recipe.load_run``): ``class_names`` (index
    order) and ``n_classes``; no audio is read."""
    names = [label for label, _ in read_vocabulary(options["data_folder"])]
    return {"class_names": names, "n_classes": len(names)}


def _clip_rows(path, header, audio_folder, split_of, problems):
    """Manifest rows of one ground-truth CSV; a row without a usable split or labels is a
    problem (appended to ``problems``)."""
    columns = header.split(",")
    rows = {}
    for line, record in enumerate(read_release_csv(path, columns, header), start=2):
        split = split_of(record)
        labels = [name.strip() for name in record["labels"].split(",") if name.strip()]
        where = f"{path} line {line} (fname {record['fname']})"
        if split is None:
            problems.append(f"{where}: split '{record.get('split')}' is not train or val")
            continue
        if not labels:
            problems.append(f"{where}: no labels")
            continue
        fname = record["fname"].strip()
        rows.setdefault(split, []).append({"ID": fname, "wav": f"{audio_folder}/{fname}.wav",
                                           "label": LABEL_SEPARATOR.join(labels)})
    return rows


def prepare_fsd50k(data_folder, save_folder, class_names, skip_bad_files=False):
    """Writes ``train.csv``, ``valid.csv`` and ``test.csv`` (ID, duration, wav, label) after
    checking every clip (its header) and every label against the vocabulary.

    Arguments
    ---------
    data_folder : str
        The folder holding ``FSD50K.dev_audio``, ``FSD50K.eval_audio`` and
        ``FSD50K.ground_truth`` (or its parent, when that folder is named ``FSD50K``).
    save_folder : str
        Where the manifests go; skipped when they exist for the same options.
    class_names : list of str
        The vocabulary's labels (``options_from_data``); another label is a problem.
    skip_bad_files : bool
        Leave out missing/unreadable clips and rows with unknown labels (listed in
        ``skipped_files.txt``) instead of failing.

    Example
    -------
    >>> import tempfile
    >>> from petl_modules.synthetic import make_dataset
    >>> root = make_dataset("FSD50K", tempfile.mkdtemp(), per_class=1, seconds=0.2)
    >>> save = tempfile.mkdtemp()
    >>> prepare_fsd50k(root, save, options_from_data({"data_folder": root})["class_names"])
    >>> sorted(p.name for p in Path(save).iterdir())
    ['prepare_options.json', 'test.csv', 'train.csv', 'valid.csv']
    """
    folder = resolve_data_folder(data_folder, RELEASE, MARKER)
    options = {"data_folder": str(folder.resolve()), "skip_bad_files": bool(skip_bad_files),
               "class_names": list(class_names)}
    if manifests_up_to_date(save_folder, SPLITS, options):
        return
    problems = []
    dev_splits = {"train": "train", "val": "valid"}
    dev = _clip_rows(folder / GROUND_TRUTH / "dev.csv", DEV_HEADER, AUDIO["dev"],
                     lambda r: dev_splits.get(r["split"].strip()), problems)
    test = _clip_rows(folder / GROUND_TRUTH / "eval.csv", EVAL_HEADER, AUDIO["eval"],
                      lambda r: "test", problems)
    splits = {"train": dev.get("train", []), "valid": dev.get("valid", []),
              "test": test.get("test", [])}
    known = set(class_names)
    for name, rows in splits.items():
        kept = []
        for row in rows:
            unknown = [x for x in row["label"].split(LABEL_SEPARATOR) if x not in known]
            if unknown:
                problems.append(f"{row['wav']}: label '{unknown[0]}' is not in {VOCABULARY} "
                                f"({name} split, ID {row['ID']})")
                continue
            kept.append(row)
        splits[name] = kept
    if problems and not skip_bad_files:
        listed = "\n  ".join(problems[:20])
        raise DataError(f"{len(problems)} problem(s) in the ground truth of {folder}:\n  {listed}\n"
                        "Restore the files from the release, or rerun with --skip_bad_files=True "
                        "to leave these rows out.")
    write_manifests(save_folder, splits, folder, options, skip_bad_files, excluded=problems)
