"""ESC-50: one manifest from the official release, with the fold of every clip.

The release (``ESC-50-master``) holds ``meta/esc50.csv`` (header
``filename,fold,target,category,esc10,src_file,take``) and 5 s, 44.1 kHz clips under ``audio/``.
The label is the ``category``; the fold split (5 folds) is applied when the recipe loads the
manifest, so the manifest is written once for all folds.
"""

import logging
from pathlib import Path

from petl_modules.training.prepare import (
    MAX_LISTED,
    SKIPPED_FILE,
    DataError,
    prepare_once,
    read_release_csv,
)

logger = logging.getLogger(__name__)

RELEASE = "ESC-50-master"
METADATA = "meta/esc50.csv"
HEADER = "filename,fold,target,category,esc10,src_file,take"
COLUMNS = ("filename", "fold", "category")
FOLDS = range(1, 6)  # the release's folds
MANIFEST = "all"  # <save_folder>/all.csv


def fold_problem(value, folds):
    """``(fold, None)`` for a fold number of ``folds``, else ``(None, what is wrong)``."""
    try:
        fold = int(value.strip())
    except ValueError:
        return None, f"fold '{value}' is not a whole number"
    if fold not in folds:
        return None, f"fold '{value}' is outside the release's folds {folds[0]}-{folds[-1]}"
    return fold, None


def read_metadata(data_folder, bad_folds=None):
    """``{"all": rows}`` (ID, wav, label, fold) from ``meta/esc50.csv``.

    A row whose fold is not one of 1-5 is an error naming it (file, line, clip), or, with a
    ``bad_folds`` list, left out and described there."""
    path = Path(data_folder) / METADATA
    rows, bad = [], []
    for line, record in enumerate(read_release_csv(path, COLUMNS, HEADER), start=2):
        fold, problem = fold_problem(record["fold"], FOLDS)
        if problem:
            bad.append(f"{path} line {line} ({record['filename']}): {problem}")
            continue
        rows.append({"ID": Path(record["filename"]).stem, "wav": f"audio/{record['filename']}",
                     "label": record["category"], "fold": fold})
    if bad and bad_folds is None:
        raise DataError(bad_folds_message(path, bad, FOLDS))
    if bad_folds is not None:
        bad_folds += bad
    return {MANIFEST: rows}


def bad_folds_message(path, bad, folds):
    listed = "\n  ".join(bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return (f"{len(bad)} row(s) of {path} have no valid fold (the release's folds are "
            f"{folds[0]} to {folds[-1]}):\n  {listed}{more}\nRestore the file from the release, or "
            "rerun with --skip_bad_files=True to leave these rows out (they are then listed in "
            f"{SKIPPED_FILE} next to the manifests).")


def list_skipped_rows(save_folder, bad):
    """Adds the rows left out for their fold to ``skipped_files.txt`` (after the bad files)."""
    skipped = Path(save_folder) / SKIPPED_FILE
    before = skipped.read_text() if skipped.is_file() else ""
    skipped.write_text(before + "\n".join(bad) + "\n")
    logger.warning(f"Skipped {len(bad)} metadata row(s) without a valid fold "
                   f"(--skip_bad_files=True); listed in {skipped}:\n  " + "\n  ".join(bad[:MAX_LISTED]))


def prepare_esc50(data_folder, save_folder, class_names, skip_bad_files=False):
    """Writes ``all.csv`` (ID, duration, wav, label, fold) for ESC-50 after checking every clip.

    Arguments
    ---------
    data_folder : str
        The ``ESC-50-master`` folder (or its parent).
    save_folder : str
        Where the manifest goes; preparation is skipped when it exists for the same options.
    class_names : list of str
        The 50 categories (``class_names`` of ``esc50.yaml``); another category is an error.
    skip_bad_files : bool
        Leave out missing/unreadable/empty clips, unknown categories and metadata rows whose fold
        is not one of 1-5 (listed in ``skipped_files.txt``) instead of failing.

    Example
    -------
    >>> from petl_modules.synthetic import make_dataset, official_class_names
    >>> import tempfile
    >>> root = make_dataset("ESC50", tempfile.mkdtemp(), per_class=1, seconds=0.1)
    >>> save = tempfile.mkdtemp()
    >>> prepare_esc50(root, save, official_class_names("ESC50"))
    >>> sorted(p.name for p in Path(save).iterdir())
    ['all.csv', 'prepare_options.json']
    """
    bad_folds = [] if skip_bad_files else None
    prepare_once(data_folder, save_folder, RELEASE, METADATA, [MANIFEST],
                 lambda folder: read_metadata(folder, bad_folds), class_names, skip_bad_files)
    if bad_folds:  # read this time (not up to date): list them with the other skipped files
        list_skipped_rows(save_folder, bad_folds)
