"""What every ``<dataset>_prepare.py`` shares: checking the files, writing manifests once.

A preparation script reads its release's own layout into rows (``ID``, ``wav`` relative to the
dataset folder, ``label``, any extra columns such as ``fold``) and hands them to
``write_manifests``, which checks every referenced file once, in parallel threads with a progress
bar (missing, unreadable, empty, NaN/Inf samples in float files, unknown label, a segment past the
end of its file), reports all problems together, and writes SpeechBrain CSV manifests with
``$data_root`` paths. ``manifests_up_to_date`` lets the script return early when the manifests
already exist for the same options. ``stratified_group_split`` and ``stratified_group_folds`` make
seeded splits of data that comes without them.
"""

import csv
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

logger = logging.getLogger(__name__)

OPTIONS_FILE = "prepare_options.json"
SKIPPED_FILE = "skipped_files.txt"
PROBLEMS_FILE = "bad_files.txt"
# What a preparation found that results.json should say (e.g. clips missing from a copy of the
# data): a JSON object next to the manifests, copied into results.json under "data".
DATA_REPORT_FILE = "data_report.json"
MAX_LISTED = 20
# Only float files can hold NaN or Inf: their samples are read once here; integer PCM files are
# checked by their header alone.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


class DataError(RuntimeError):
    """The dataset on disk does not match what the recipe expects."""


def manifests_up_to_date(save_folder, names, options):
    """True when every ``<name>.csv`` exists in ``save_folder`` and was written with ``options``."""
    save_folder = Path(save_folder)
    try:
        with open(save_folder / OPTIONS_FILE) as stream:
            saved = json.load(stream)
    except (OSError, ValueError):
        return False
    if saved != json.loads(json.dumps(options)):
        return False
    if all((save_folder / f"{name}.csv").is_file() for name in names):
        logger.info(f"Manifests in {save_folder} are up to date; skipping preparation.")
        return True
    return False


def peak_memory_mb():
    """This process's peak resident memory so far, in MB (Linux ``VmHWM``; elsewhere
    ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check(path, samples=True):
    """``(duration_s, problem)`` of one audio file: its header, and the samples of a float file
    (which only can hold NaN or Inf) unless ``samples`` is False."""
    if not Path(path).is_file():
        return None, "missing file"
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile.LibsndfileError and friends
        reason = getattr(err, "error_string", None) or str(err).strip() or type(err).__name__
        return None, f"unreadable as audio ({reason})"
    if info.frames == 0 or info.samplerate == 0:
        return None, "empty (zero samples)"
    if samples and info.subtype in FLOAT_SUBTYPES and not _all_finite(path):
        return None, "non-finite samples (NaN or Inf)"
    return info.frames / info.samplerate, None


def _all_finite(path):
    """True when every sample of a float audio file is finite (read in blocks)."""
    try:
        return all(np.isfinite(block).all()
                   for block in sf.blocks(str(path), blocksize=1 << 16, dtype="float32"))
    except Exception:  # noqa: BLE001 (unreadable data: the training read names it)
        return True


def _write_csv(path, rows, fields):
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def check_files(paths, samples=True, workers=None):
    """``{path: (duration_s, problem)}`` of every distinct file of ``paths`` (see ``_check``),
    each read once, by ``workers`` threads (default: up to 8; soundfile releases the GIL while
    it reads), with a progress bar."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda p: _check(p, samples), unique, chunksize=64),
                            total=len(unique), desc="checking audio files", unit="file",
                            disable=len(unique) < 200, mininterval=1.0))
    return dict(zip(unique, results))


SEGMENT_TOLERANCE_S = 0.01  # an end this close past the end of the file is its end


def _segment_problem(row, duration):
    """What is wrong with the ``seg_start``/``seg_end`` seconds of ``row`` in a file of
    ``duration`` seconds (None if nothing), and the segment's duration."""
    start, end = row.get("seg_start"), row.get("seg_end")
    if start in (None, "") and end in (None, ""):
        return None, duration
    start = float(start or 0.0)
    end = duration if end in (None, "") else float(end)
    if end > duration + SEGMENT_TOLERANCE_S or start >= duration:
        return (f"segment {start:g}-{end:g} s is past the end of the file ({duration:.3f} s)",
                None)
    return None, min(end, duration) - start


RELEASE_FIX = "Fix or restore these files from the release"


def label_problem(label):
    """Why ``label`` cannot be a class name (None when it can): any text is a class name, except
    one that no output format carries (empty, a line break, a NUL character)."""
    if not isinstance(label, str) or not label.strip():
        return f"empty label {label!r}"
    if any(c in label for c in "\n\r\x00"):
        return f"label {label!r} holds a line break or a NUL character, which no output format carries"
    return None


def write_manifests(save_folder, splits, data_folder, options, skip_bad_files=False, labels=None,
                    excluded=(), headers_only=False, fix=RELEASE_FIX):
    """Checks the files of ``splits`` and writes one ``<split>.csv`` manifest each.

    Arguments
    ---------
    save_folder : str or Path
        Where the manifests go.
    splits : dict
        ``{name: [row, ...]}``; a row is a dict with ``ID``, ``wav`` (path relative to
        ``data_folder``), ``label`` and optional extra columns (the same for every row).
    data_folder : str or Path
        The dataset's top folder (``$data_root`` in the manifests).
    options : dict
        The preparation options; saved next to the manifests so that a rerun with the same options
        skips preparation and one with other options redoes it.
    skip_bad_files : bool
        False: any problem raises ``DataError`` listing every problem. True: problem files are left
        out, listed in ``skipped_files.txt`` next to the manifests, and counted in the log.
    labels : collection, optional
        The known class labels; a row with another label is a problem.
    excluded : list of str
        Problems the caller found in the rows (already left out with ``skip_bad_files``): listed
        first in ``skipped_files.txt``.
    headers_only : bool
        Read only each file's header: NaN/Inf samples of float files are then caught when their
        batch is read (``petl_modules.model.audio.check_finite``), not here.
    fix : str
        What the error tells the user to do with the files (a release: restore them from it).

    Returns
    -------
    dict
        ``{name: number of rows written}``.
    """
    save_folder = Path(save_folder)
    data_folder = Path(data_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    kept, problems = _kept_rows(splits, data_folder, labels, headers_only)
    _report_problems([*excluded, *problems], save_folder, data_folder, skip_bad_files, fix)
    for name, rows in kept.items():
        if not rows:
            raise DataError(f"The {name} split of {data_folder} has no usable audio file.")
        fields = list(rows[0])
        _write_csv(save_folder / f"{name}.csv", rows, fields)
    with open(save_folder / OPTIONS_FILE, "w") as stream:
        json.dump(options, stream, indent=2)
    counts = {name: len(rows) for name, rows in kept.items()}
    logger.info(f"Wrote manifests to {save_folder}: {counts}")
    return counts


def _kept_rows(splits, data_folder, labels, headers_only):
    """``({split: [manifest row, ...]}, [problem, ...])``: every row of ``splits`` checked (its
    file, a duplicate ID, its label, its segment); a row with a problem is left out."""
    problems, kept = [], {}
    checked = check_files([data_folder / row["wav"] for rows in splits.values() for row in rows],
                          samples=not headers_only)
    for name, rows in splits.items():
        kept[name] = []
        first = {}  # ID -> (row number, file) of its first row in this split
        for number, row in enumerate(rows, 1):
            duration, problem = checked[str(data_folder / row["wav"])]
            if row["ID"] in first:
                problem = (f"duplicate ID '{row['ID']}' (row {number}; row {first[row['ID']][0]}, "
                           f"{first[row['ID']][1]}, has it too)")
            first.setdefault(row["ID"], (number, data_folder / row["wav"]))
            if problem is None:
                problem = label_problem(row["label"])
            if problem is None and labels is not None and row["label"] not in labels:
                problem = f"unknown label '{row['label']}'"
            if problem is None:
                problem, duration = _segment_problem(row, duration)
            if problem:
                problems.append(f"{data_folder / row['wav']}: {problem} ({name} split, ID {row['ID']})")
                continue
            kept[name].append({"ID": row["ID"], "duration": f"{duration:.3f}",
                               "wav": f"$data_root/{row['wav']}", "label": row["label"],
                               **{k: v for k, v in row.items() if k not in ("ID", "wav", "label")}})
    return kept, problems


def _report_problems(problems, save_folder, data_folder, skip_bad_files, fix):
    """Raises ``DataError`` listing ``problems`` (all of them in ``problems.txt``); with
    ``skip_bad_files``, lists them in ``skipped_files.txt`` and warns instead."""
    if problems and not skip_bad_files:
        (save_folder / PROBLEMS_FILE).write_text("\n".join(problems) + "\n")
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(
            f"{len(problems)} problem(s) in the dataset at {data_folder}:\n  {listed}{more}\n"
            f"The full list is in {save_folder / PROBLEMS_FILE}. {fix}, or rerun with "
            "--skip_bad_files=True to leave them out (they are then listed in "
            f"{save_folder / SKIPPED_FILE})."
        )
    if problems:
        (save_folder / SKIPPED_FILE).write_text("\n".join(problems) + "\n")
        logger.warning(
            f"Skipped {len(problems)} bad file(s) (--skip_bad_files=True); the list is in "
            f"{save_folder / SKIPPED_FILE}:\n  " + "\n  ".join(problems[:MAX_LISTED])
        )
    else:
        (save_folder / SKIPPED_FILE).unlink(missing_ok=True)


def resolve_data_folder(data_folder, release_name, marker):
    """Returns the dataset's top folder: ``data_folder`` itself or its child ``release_name``.

    ``marker`` is a path inside the release that must exist (e.g. ``data/train_data.csv``).
    """
    folder = Path(data_folder)
    for candidate in (folder, folder / release_name):
        if (candidate / marker).exists():
            return candidate
    raise DataError(
        f"'{data_folder}' is not a {release_name} folder: {marker} was not found in it nor in "
        f"{folder / release_name}. Pass --data_folder=/path/to/{release_name} (the folder of the "
        "official release, or its parent)."
    )


def read_release_csv(path, columns, header):
    """The records (dicts) of one of the release's csv files, checked to have ``columns``.

    ``header`` is the release's header line, quoted in the error when a column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Missing {path}: the release has this file; restore it.")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}; expected the release's header "
                            f"'{header}'.")
        return list(reader)


def fold_problem(value, folds):
    """``(fold, None)`` for a fold number of ``folds``, else ``(None, what is wrong)``."""
    try:
        fold = int(str(value).strip())
    except ValueError:
        return None, f"fold '{value}' is not a whole number"
    if fold not in folds:
        return None, f"fold '{value}' is outside the release's folds {folds[0]}-{folds[-1]}"
    return fold, None


def read_fold_csv(path, columns, header, folds, make_row, name_column, bad_folds=None):
    """Rows of a release's metadata csv with a ``fold`` column: ``make_row(record, fold)`` per
    record whose fold is one of ``folds``.

    A record with another fold (or none) is an error naming the file, the line and the record's
    ``name_column``; with a ``bad_folds`` list (``--skip_bad_files=True``) it is left out and
    described there instead, never silently dropped.
    """
    rows, bad = [], []
    for line, record in enumerate(read_release_csv(path, columns, header), start=2):
        fold, problem = fold_problem(record["fold"], folds)
        if problem:
            bad.append(f"{path} line {line} ({record[name_column]}): {problem}")
            continue
        rows.append(make_row(record, fold))
    if bad and bad_folds is None:
        listed = "\n  ".join(bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(
            f"{len(bad)} row(s) of {path} have no valid fold (the release's folds are "
            f"{folds[0]} to {folds[-1]}):\n  {listed}{more}\nRestore the file from the release, "
            "or rerun with --skip_bad_files=True to leave these rows out (they are then listed "
            f"in {SKIPPED_FILE} next to the manifests)."
        )
    if bad_folds is not None:
        bad_folds += bad
    return rows


def prepare_fold_release(data_folder, save_folder, release, marker, manifest, read_rows,
                         class_names=None, skip_bad_files=False):
    """``prepare_once`` for a release whose metadata gives each clip a fold: ``read_rows(folder,
    bad_folds)`` reads the rows (``read_fold_csv``); with ``skip_bad_files`` the rows without a
    valid fold are listed in ``skipped_files.txt`` after the bad files."""
    bad_folds = [] if skip_bad_files else None
    prepare_once(data_folder, save_folder, release, marker, [manifest],
                 lambda folder: {manifest: read_rows(folder, bad_folds)}, class_names,
                 skip_bad_files)
    if bad_folds:  # read this time (not up to date): list them with the other skipped files
        skipped = Path(save_folder) / SKIPPED_FILE
        before = skipped.read_text() if skipped.is_file() else ""
        skipped.write_text(before + "\n".join(bad_folds) + "\n")
        logger.warning(f"Skipped {len(bad_folds)} metadata row(s) without a valid fold "
                       f"(--skip_bad_files=True); listed in {skipped}:\n  "
                       + "\n  ".join(bad_folds[:MAX_LISTED]))


def prepare_once(data_folder, save_folder, release, marker, names, read_splits, class_names=None,
                 skip_bad_files=False):
    """The body of every ``prepare_<dataset>``: find the release, return early when the manifests
    ``names`` exist for the same options, else read ``read_splits(data_folder)`` (``{name: rows}``)
    and write them with ``write_manifests``."""
    data_folder = resolve_data_folder(data_folder, release, marker)
    options = {"data_folder": str(data_folder.resolve()), "skip_bad_files": bool(skip_bad_files)}
    if class_names is not None:
        options["class_names"] = list(class_names)
    if manifests_up_to_date(save_folder, names, options):
        return
    labels = set(class_names) if class_names is not None else None
    write_manifests(save_folder, read_splits(data_folder), data_folder, options, skip_bad_files,
                    labels=labels)


# ==================================================================== seeded splits
def stratified_group_folds(strata, groups, k, seed):
    """The fold (0 .. k-1) of each example: ``k`` folds stratified by ``strata`` (one class per
    example) that never share a group, seeded (scikit-learn's ``StratifiedGroupKFold``, or its
    much faster ``StratifiedKFold`` when every example is a group of its own)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    folds = np.zeros(len(strata), dtype=int)
    grouped = len(set(groups)) < len(groups)
    splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(
        n_splits=int(k), shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():  # a class rarer than k: the caller reports it by name
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
            folds[held] = fold
    return folds.tolist()


def stratified_group_split(strata, groups, fraction, seed):
    """Indices of about ``fraction`` of the examples, stratified by ``strata`` and by whole
    groups, seeded: one of ``round(1 / fraction)`` stratified group folds."""
    if not 0 < float(fraction) < 1:
        raise DataError(f"A split fraction must be between 0 and 1 (exclusive), got {fraction}.")
    # No more folds than groups, nor than examples of the largest class (scikit-learn needs it).
    k = min(max(2, round(1 / float(fraction))), len(set(groups)), max(Counter(strata).values()))
    if k < 2:
        return []
    folds = stratified_group_folds(strata, groups, k, seed)
    return [i for i, fold in enumerate(folds) if fold == 0]
