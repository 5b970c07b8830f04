"""Your own data: a folder of audio files, one sub-folder per class, or a manifest (CSV or JSONL).

Layouts (detected, in this order):

- a manifest: ``--manifest=path`` (CSV or JSONL), else ``metadata.csv`` or ``metadata.jsonl`` in
  ``data_folder`` (the Hugging Face ``audiofolder`` names). Columns: ``file_name`` (or ``file``,
  ``path``; relative to the manifest's folder, which is the data root), ``label`` (or ``labels``;
  several classes ``;``-separated for ``--task=multilabel``; a JSONL list too), and optional
  ``split`` (train, valid or validation, test), ``fold`` (a whole number), ``group`` (speaker or
  source recording: never in two splits), ``start``/``end`` (seconds: a segment of a long file);
- a folder per class: ``<data_folder>/<label>/*.wav|flac|mp3|ogg`` (any depth below the class
  folder), optionally under ``train/``, ``valid/`` (or ``validation/``) and ``test/``.

Splits: the given ones (a ``split`` column or split folders; a missing valid or test split is
taken from train); else a seeded split stratified by class (``valid_fraction``,
``test_fraction``) that keeps each ``group`` in one split; or k-fold cross-validation, from a
``fold`` column or ``--num_folds=k`` (stratified, group-aware), run as the other multi-fold recipes
(fold k tests, the fold before it validates). The classes are those of the training data, sorted,
or ``--class_names=a,b,c`` (their order; a subset leaves the other classes' examples out).

Reading the rows (``dataset_rows``) touches no audio: the recipe calls it before building the
model, for the classes and folds. ``prepare_audiofolder`` then reads each file's header once
(``soundfile.info``, in parallel, with a progress bar: ``petl_modules.training.prepare``), logs
the examples per class and split, warns on strong imbalance and writes ``all.csv``.
"""

import csv
import functools
import hashlib
import json
import logging
import math
from collections import Counter
from pathlib import Path

from petl_modules.model.task import LABEL_SEPARATOR, Task
from petl_modules.training.prepare import (
    MAX_LISTED,
    SKIPPED_FILE,
    DataError,
    check_files,
    manifests_up_to_date,
    stratified_group_folds,
    stratified_group_split,
    write_manifests,
)

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
MANIFEST_NAMES = ("metadata.csv", "metadata.jsonl")
FILE_COLUMNS = ("file_name", "file", "path")
LABEL_COLUMNS = ("label", "labels")
SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
MANIFEST = "all"  # <manifest_folder>/all.csv
IMBALANCE_RATIO = 10  # warn when a class has this many times the training examples of another


class Layout:
    """Where the data is: ``kind`` (``manifest`` | ``folders``), ``root`` (the data root: paths
    are relative to it) and ``manifest`` (the manifest file, or None)."""

    def __init__(self, kind, root, manifest=None):
        self.kind, self.root, self.manifest = kind, Path(root), manifest

    def __repr__(self):
        return f"{self.kind} layout at {self.manifest or self.root}"


def detect_layout(data_folder, manifest=None):
    """The ``Layout`` of ``data_folder`` (or of ``manifest`` when given)."""
    if manifest:
        path = Path(manifest)
        if not path.is_absolute() and not path.is_file():
            path = Path(data_folder) / path
        if not path.is_file():
            raise DataError(f"--manifest={manifest}: no such file (nor {path}). Give the path of "
                            "a CSV or JSONL manifest.")
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise DataError(f"--manifest={manifest}: a manifest is a .csv or .jsonl file.")
        return Layout("manifest", path.parent, path)
    folder = Path(data_folder)
    if not folder.is_dir():
        raise DataError(f"--data_folder={data_folder} is not a folder. Pass the folder of your "
                        "audio files (one sub-folder per class) or of its metadata.csv.")
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder} holds both {found[0].name} and {found[1].name}: pass "
                        "--manifest=<the one to use>.")
    if found:
        return Layout("manifest", folder, found[0])
    return Layout("folders", folder)


# ==================================================================== reading rows
def _audio_files(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def read_folder_rows(layout, problems):
    """Rows of a folder-per-class layout (``split`` set when split folders exist). An empty class
    folder is a problem (appended to ``problems``)."""
    root = layout.root
    split_folders = {SPLITS[p.name]: p for p in sorted(root.iterdir())
                     if p.is_dir() and p.name in SPLITS}
    parts = split_folders.items() if split_folders else [(None, root)]
    rows = []
    for split, folder in parts:
        class_folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_folders:
            raise DataError(f"{folder} has no class folders: the layout is "
                            f"{folder}/<class name>/<file>.wav (or a metadata.csv manifest).")
        for class_folder in class_folders:
            files = _audio_files(class_folder)
            if not files:
                problems.append(f"{class_folder}: empty class folder (no "
                                f"{'/'.join(AUDIO_EXTENSIONS)} file)")
            for path in files:
                relative = path.relative_to(root).as_posix()
                rows.append({"ID": relative.rsplit(".", 1)[0], "wav": relative,
                             "label": class_folder.name, "split": split, "fold": None,
                             "group": None, "start": None, "end": None, "where": str(path)})
    return rows


def _manifest_records(path):
    """``(line, record)`` of a CSV (header line 1) or JSONL manifest."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as stream:
            for line, text in enumerate(stream, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except ValueError as err:
                    raise DataError(f"{path} line {line} is not a JSON object ({err}).") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path} line {line} is not a JSON object.")
                yield line, record
        return
    with open(path, newline="", encoding="utf-8") as stream:
        for line, record in enumerate(csv.DictReader(stream), start=2):
            yield line, record


def _number(value, what, where, problems):
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{where}: {what} '{value}' is not a number of seconds")
        return False
    if not math.isfinite(number) or number < 0:
        problems.append(f"{where}: {what} '{value}' is not a time in seconds >= 0")
        return False
    return number


def read_manifest_rows(layout, problems):
    """Rows of a manifest (see the module docstring); a bad row is a problem naming its line. The
    file is read once per start (``load_run`` reads the classes, preparation the rows): a copy of
    the rows it gave is returned while its modification time and size stay the same."""
    stat = Path(layout.manifest).stat()
    rows, found = _parsed_manifest(str(layout.manifest), str(layout.root), stat.st_mtime_ns, stat.st_size)
    problems.extend(found)
    return [dict(row) for row in rows]


@functools.lru_cache(maxsize=2)
def _parsed_manifest(path, root, mtime_ns, size):
    """``(rows, problems)`` of the manifest at ``path`` (paths relative to ``root``), kept for the
    start's second reading (``read_manifest_rows``); its modification time and size key it."""
    problems = []
    return tuple(_manifest_rows(Layout("manifest", root, Path(path)), problems)), tuple(problems)


def _manifest_rows(layout, problems):
    path, root = layout.manifest, layout.root.resolve()
    rows, columns = [], None
    for line, record in _manifest_records(path):
        if columns is None:
            columns = set(record)
            file_column = next((c for c in FILE_COLUMNS if c in columns), None)
            label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
            if file_column is None or label_column is None:
                raise DataError(
                    f"{path} needs a file column ({' or '.join(FILE_COLUMNS)}) and a label column "
                    f"({' or '.join(LABEL_COLUMNS)}); found {sorted(columns)}.")
        name = str(record.get(file_column) or "").strip()
        where = f"{path} line {line} ({file_column} '{name}')"
        if not name:
            problems.append(f"{where}: empty {file_column}")
            continue
        target = (layout.root / name).resolve()
        if not target.is_relative_to(root):
            problems.append(f"{where}: points outside the manifest's folder {layout.root} (paths "
                            "are relative to it; move the manifest or the files)")
            continue
        label = record.get(label_column)
        labels = [str(x).strip() for x in label] if isinstance(label, list) else \
            [x.strip() for x in str(label if label is not None else "").split(LABEL_SEPARATOR)]
        labels = [x for x in labels if x]
        if not labels:
            problems.append(f"{where}: empty {label_column} cell (every row needs a class)")
            continue
        split = str(record.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            problems.append(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}")
            continue
        fold = str(record.get("fold") if record.get("fold") is not None else "").strip() or None
        if fold is not None:
            try:
                fold = int(fold)
            except ValueError:
                problems.append(f"{where}: fold '{fold}' is not a whole number")
                continue
        start = _number(record.get("start"), "start", where, problems)
        end = _number(record.get("end"), "end", where, problems)
        if start is False or end is False:
            continue
        if start is not None and end is not None and end <= start:
            problems.append(f"{where}: end {end} is not after start {start}")
            continue
        relative = target.relative_to(root).as_posix()
        uid = relative.rsplit(".", 1)[0]
        if start is not None or end is not None:
            uid += f"@{start or 0:g}-{'' if end is None else f'{end:g}'}"
        group = str(record.get("group") or "").strip() or None
        rows.append({"ID": uid, "wav": relative, "label": LABEL_SEPARATOR.join(labels),
                     "split": SPLITS[split] if split else None, "fold": fold, "group": group,
                     "start": start, "end": end, "where": where})
    if columns is None:
        raise DataError(f"{path} has no rows.")
    return rows


# ==================================================================== checks across rows
def _labels(row):
    return row["label"].split(LABEL_SEPARATOR)


def _report(problems, skip, what, layout=None, rows=()):
    """Raises ``DataError`` listing ``problems`` unless ``skip`` (then they are exclusions). The
    error also lists the problems of the audio files of ``rows`` (headers only, as preparation
    checks them), so that bad layout and bad files are reported in one pass."""
    if problems and not skip:
        problems = problems + _file_problems(layout, rows) if layout is not None else problems
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in {what}:\n  {listed}{more}\nFix the data, or "
                        f"rerun with --skip_bad_files=True to leave these out (they are then listed "
                        f"in {SKIPPED_FILE} next to the manifests).")


def _file_problems(layout, rows):
    """``<path>: <problem>`` of the rows' audio files that are missing, unreadable or empty."""
    checked = check_files([layout.root / row["wav"] for row in rows], samples=False)
    return [f"{path}: {problem}" for path, (_, problem) in checked.items() if problem]


def _one_split_per(rows, key, what, problems):
    """Rows whose ``key`` (file or group) is also in an earlier split (train < valid < test) are
    problems; they are dropped (the first split keeps the file or group)."""
    order = {"train": 0, "valid": 1, "test": 2}
    first = {}
    for row in sorted(rows, key=lambda r: order[r["split"]]):
        value = row[key]
        if value is None:
            continue
        first.setdefault(value, row["split"])
    kept = []
    for row in rows:
        owner = first.get(row[key])
        if row[key] is not None and owner != row["split"]:
            problems.append(f"{row['where']}: {what} '{row[key]}' is in the {owner} and the "
                            f"{row['split']} split (it would leak between them)")
            continue
        kept.append(row)
    return kept


def _class_names(options, rows):
    """``--class_names`` (a list, or one comma-separated string) or the training rows' classes."""
    given = options.get("class_names")
    if isinstance(given, str):
        given = [name.strip() for name in given.split(",") if name.strip()]
    if given:
        names = [str(n) for n in given]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DataError(f"--class_names lists {', '.join(repeated)} more than once.")
        return names
    found = {name for row in rows if row["split"] in ("train", None) for name in _labels(row)}
    return sorted(found)


def _keep_classes(rows, names, multilabel):
    """Rows restricted to the classes ``names`` (a subset leaves the others out); returns the
    rows and how many were left out."""
    known, kept, dropped = set(names), [], 0
    for row in rows:
        labels = [x for x in _labels(row) if x in known]
        if not labels or (not multilabel and len(labels) < len(_labels(row))):
            dropped += 1
            continue
        kept.append(dict(row, label=LABEL_SEPARATOR.join(labels)))
    return kept, dropped


def _strata(rows):
    """One stratum per row for stratified splitting: its class, or for several its rarest one."""
    counts = Counter(name for row in rows for name in _labels(row))
    return [min(_labels(row), key=lambda n: (counts[n], n)) for row in rows]


def _groups(rows):
    """The row's group, or its file (segments of one file stay together)."""
    return [row.get("group") or f"file:{row['wav']}" for row in rows]


def dataset_rows(options):
    """Reads the data's rows, splits and classes without opening an audio file.

    Arguments
    ---------
    options : dict
        Plain options of the run: ``data_folder``, ``manifest``, ``task``, ``class_names``,
        ``num_folds``, ``valid_fraction``, ``test_fraction``, ``split_seed``, ``skip_bad_files``.

    Returns
    -------
    dict
        ``layout``, ``rows`` (dicts with ``ID``, ``wav``, ``label``, ``split`` or ``fold``,
        ``group``, ``start``, ``end``), ``class_names``, ``folds`` (None for splits),
        ``excluded`` (descriptions of what ``--skip_bad_files=True`` left out).

    Raises
    ------
    DataError
        Naming the file, row or class and the fix.
    """
    skip = bool(options.get("skip_bad_files"))
    multilabel = Task.of_options(options).several_classes
    fractions = float(options.get("valid_fraction", 0.1)) + float(options.get("test_fraction", 0.1))
    if fractions >= 1:
        raise DataError(f"--valid_fraction + --test_fraction = {fractions:g} leaves nothing to train "
                        "on: their sum must be below 1.")
    layout = detect_layout(options["data_folder"], options.get("manifest"))
    problems = []
    rows = read_manifest_rows(layout, problems) if layout.kind == "manifest" else \
        read_folder_rows(layout, problems)
    _report(problems, skip, str(layout), layout, rows)
    if not multilabel:
        several = [r for r in rows if len(_labels(r)) > 1]
        if several:
            raise DataError(f"{several[0]['where']} has several classes ('{several[0]['label']}'): "
                            "for multi-label data pass --task=multilabel.")
    excluded = list(problems)
    num_folds = int(options.get("num_folds") or 0)
    given_folds = [r for r in rows if r.get("fold") is not None]
    given_splits = [r for r in rows if r.get("split")]
    if given_folds and given_splits:
        raise DataError(f"{layout.manifest} has both a split and a fold column: keep one.")
    if num_folds and (given_folds or given_splits):
        raise DataError(f"--num_folds={num_folds}, but {layout} already gives the "
                        f"{'folds' if given_folds else 'splits'}: drop --num_folds.")
    if given_folds and len(given_folds) != len(rows):
        missing = next(r for r in rows if r.get("fold") is None)
        raise DataError(f"{missing['where']}: no fold (every row needs one when the fold column is "
                        "used).")
    if given_splits and len(given_splits) != len(rows):
        missing = next(r for r in rows if not r.get("split"))
        raise DataError(f"{missing['where']}: no split (every row needs one when the split column "
                        "is used).")

    names = _class_names(options, rows)
    if options.get("class_names"):  # else a class seen only outside train is reported below
        rows, dropped = _keep_classes(rows, names, multilabel)
        if dropped:
            logger.info(f"--class_names: {dropped} example(s) of other classes left out.")
    folds = None
    if given_folds or num_folds:
        rows, folds, fold_problems = _assign_folds(rows, names, num_folds, options)
        _report(fold_problems, skip, "the folds", layout, rows)
        excluded += fold_problems
    else:
        rows, split_problems = _assign_splits(rows, names, options)
        _report(split_problems, skip, "the splits", layout, rows)
        excluded += split_problems
    trained = {name for row in rows if row.get("split") in ("train", None) for name in _labels(row)}
    if not options.get("class_names"):  # a class whose examples were all left out (listed)
        names = [name for name in names if name in trained]
    unseen = [name for name in names if name not in trained]
    if unseen:
        raise DataError(f"--class_names lists {', '.join(unseen)}, with no training example in "
                        f"{layout}: check the names (the data's classes are "
                        f"{', '.join(sorted(trained))}).")
    if len(names) < 2:
        raise DataError(f"{layout} has {len(names)} class(es) ({', '.join(names) or 'none'}): "
                        "a classifier needs at least 2.")
    return {"layout": layout, "rows": rows, "class_names": names, "folds": folds,
            "excluded": excluded}


def _assign_splits(rows, names, options):
    """``split`` of every row: the given splits checked (one file, one group, classes of train),
    the missing valid/test split taken from train, or a seeded stratified group-aware split."""
    problems = []
    seed = int(options.get("split_seed", 0))
    fractions = {"test": float(options.get("test_fraction", 0.1)),
                 "valid": float(options.get("valid_fraction", 0.1))}
    if all(row["split"] is None for row in rows):
        for row in rows:
            row["split"] = "train"
    else:
        rows = _one_split_per(rows, "wav", "the file", problems)
        rows = _one_split_per(rows, "group", "group", problems)
        if not any(row["split"] == "train" for row in rows):
            raise DataError("The data gives valid/test splits but no train split: name the "
                            "training examples' split 'train'.")
        trained = {name for row in rows if row["split"] == "train" for name in _labels(row)}
        kept = []
        for row in rows:
            unseen = [n for n in _labels(row) if n not in trained]
            if unseen:
                problems.append(f"{row['where']}: class '{unseen[0]}' is in the {row['split']} "
                                "split but has no training example")
                continue
            kept.append(row)
        rows = kept
    carved = []
    for split in ("test", "valid"):
        if any(row["split"] == split for row in rows):
            continue
        train = [row for row in rows if row["split"] == "train"]
        # A fraction of all the examples: of what train keeps once test is taken from it.
        fraction = fractions[split] / (1 - sum(fractions[c] for c in carved))
        held = stratified_group_split(_strata(train), _groups(train), fraction, seed)
        carved.append(split)
        for k in held:
            train[k]["split"] = split
    # A class whose examples all went to valid/test: they go back to train (one of a kind).
    trained = {name for row in rows if row["split"] == "train" for name in _labels(row)}
    for name in names:
        if name not in trained:
            moved = [row for row in rows if name in _labels(row)]
            groups = {g for g, row in zip(_groups(moved), moved)}
            for row, group in zip(rows, _groups(rows)):
                if group in groups:
                    row["split"] = "train"
            if moved:
                logger.warning(f"Class '{name}' has too few examples to be in every split: all "
                               f"{len(moved)} are in train.")
    return rows, problems


def _assign_folds(rows, names, num_folds, options):
    """``fold`` of every row (given, or ``num_folds`` stratified group-aware folds); a class with
    fewer examples than folds is a problem (its rows are left out with --skip_bad_files)."""
    if num_folds:
        if num_folds < 3:
            raise DataError(f"--num_folds={num_folds}: k-fold cross-validation here needs at "
                            "least 3 folds (one tests, one validates, the others train).")
        folds = stratified_group_folds(_strata(rows), _groups(rows), num_folds,
                                       int(options.get("split_seed", 0)))
        for row, fold in zip(rows, folds):
            row["fold"] = fold + 1
    fold_ids = sorted({row["fold"] for row in rows})
    if len(fold_ids) < 3:
        raise DataError(f"The fold column gives {len(fold_ids)} fold(s) ({fold_ids}): k-fold "
                        "cross-validation needs at least 3.")
    counts = Counter(name for row in rows for name in _labels(row))
    few = {name for name in names if counts[name] < len(fold_ids)}
    problems = [f"class '{name}' has {counts[name]} example(s), fewer than the {len(fold_ids)} "
                "folds (every fold's training folds need it)" for name in sorted(few)]
    by_group = {}
    for row, group in zip(rows, _groups(rows)):
        by_group.setdefault(group, set()).add(row["fold"])
    split_groups = sorted(g for g, f in by_group.items() if len(f) > 1 and not g.startswith("file:"))
    problems += [f"group '{g}' is in folds {sorted(by_group[g])} (it would leak between them)"
                 for g in split_groups]
    rows = [row for row, group in zip(rows, _groups(rows))
            if not (few & set(_labels(row))) and group not in split_groups]
    return rows, fold_ids, problems


def options_from_data(options):
    """The options the data decides (``recipe.load_run``): ``class_names``, ``n_classes``,
    ``folds`` (a list for k-fold data, else null)."""
    found = dataset_rows(dict(options))
    return {"class_names": found["class_names"], "n_classes": len(found["class_names"]),
            "folds": found["folds"]}


# ==================================================================== preparation
def class_table(rows, names, splits):
    """The examples per class and split, as text lines (a table for the log)."""
    counts = Counter((split, name) for row in rows for name in _labels(row)
                     for split in [row["split"]])
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in splits)]
    for name in names:
        lines.append(f"{name:<{width}} " + " ".join(f"{counts[(s, name)]:>7}" for s in splits))
    return lines


def prepare_audiofolder(options, save_folder):
    """Writes ``all.csv`` (ID, duration, wav, label, split or fold, group, seg_start, seg_end).

    Arguments
    ---------
    options : dict
        The run's plain options (see ``dataset_rows``); ``class_names`` as the recipe set them.
    save_folder : str
        Where the manifest goes; skipped when it exists for the same options and rows.

    Example
    -------
    >>> import tempfile
    >>> from petl_modules.synthetic import make_dataset
    >>> root = make_dataset("AudioFolder", tempfile.mkdtemp(), per_class=3, seconds=0.1)
    >>> save = tempfile.mkdtemp()
    >>> prepare_audiofolder({"data_folder": str(root), "split_seed": 0}, save)
    >>> sorted(p.name for p in Path(save).iterdir())
    ['all.csv', 'prepare_options.json']
    """
    found = dataset_rows(options)
    rows, names, layout = found["rows"], found["class_names"], found["layout"]
    digest = hashlib.sha256(json.dumps(
        [[r["ID"], r["label"], r.get("split"), r.get("fold"), r.get("group")] for r in rows]
    ).encode()).hexdigest()
    keys = ("manifest", "task", "num_folds", "valid_fraction", "test_fraction", "split_seed")
    prepare_options = {"data_folder": str(layout.root.resolve()), "rows": digest,
                       "class_names": names, "skip_bad_files": bool(options.get("skip_bad_files")),
                       **{k: options.get(k) for k in keys}}
    if manifests_up_to_date(save_folder, [MANIFEST], prepare_options):
        return
    part = "fold" if found["folds"] else "split"
    manifest_rows = [{"ID": r["ID"], "wav": r["wav"], "label": r["label"], part: r[part],
                      "group": r.get("group") or "", "seg_start": r.get("start"),
                      "seg_end": r.get("end")} for r in rows]
    write_manifests(save_folder, {MANIFEST: manifest_rows}, layout.root, prepare_options,
                    options.get("skip_bad_files"), excluded=found["excluded"], headers_only=True,
                    fix="Fix or replace these files in your data")
    written = _read_written(Path(save_folder) / f"{MANIFEST}.csv", part)
    splits = [f"fold {f}" for f in found["folds"]] if found["folds"] else ["train", "valid", "test"]
    for row in written:
        row["split"] = f"fold {row['fold']}" if found["folds"] else row["split"]
    logger.info("Examples per class and split:\n  " + "\n  ".join(class_table(written, names, splits)))
    warn_imbalance(written, names, "train" if not found["folds"] else None)


def _read_written(path, part):
    with open(path, newline="") as stream:
        return [{"label": r["label"], part: r[part]} for r in csv.DictReader(stream)]


def warn_imbalance(rows, names, split=None):
    """Warns when the most frequent class has ``IMBALANCE_RATIO`` times the examples of the least
    frequent one (in ``split``, or in all rows)."""
    counts = Counter(name for row in rows if split is None or row["split"] == split
                     for name in _labels(row))
    present = {name: counts[name] for name in names}
    most, least = max(present, key=present.get), min(present, key=present.get)
    if present[least] == 0 or present[most] / present[least] >= IMBALANCE_RATIO:
        logger.warning(
            f"Strong class imbalance: '{most}' has {present[most]} training examples, '{least}' "
            f"{present[least]}. Consider --class_weights=balanced (weights the loss by inverse "
            "class frequency), more data for the small classes, or macro F1 over accuracy.")
