"""ESC-50: one manifest from the official release, with the fold of every clip.

The release (``ESC-50-master``) holds ``meta/esc50.csv`` (header
``filename,fold,target,category,esc10,src_file,take``) and 5 s, 44.1 kHz clips under ``audio/``.
The label is the ``category``; the fold split (5 folds) is applied when the recipe loads the
manifest, so the manifest is written once for all folds.
"""

import csv
from pathlib import Path

from petl_modules.prepare import DataError, manifests_up_to_date, write_manifests
from petl_modules.recipe import resolve_data_folder

RELEASE = "ESC-50-master"
METADATA = "meta/esc50.csv"
COLUMNS = ("filename", "fold", "category")
MANIFEST = "all"  # <save_folder>/all.csv


def read_metadata(data_folder):
    """Rows (ID, wav, label, fold) of ``meta/esc50.csv``."""
    path = Path(data_folder) / METADATA
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}; expected the release's header "
                            "'filename,fold,target,category,esc10,src_file,take'.")
        rows, bad = [], []
        for line, record in enumerate(reader, start=2):
            if not record["fold"].strip().isdigit():
                bad.append(f"line {line}: fold '{record['fold']}' is not a fold number")
                continue
            rows.append({"ID": Path(record["filename"]).stem, "wav": f"audio/{record['filename']}",
                         "label": record["category"], "fold": int(record["fold"])})
    if bad:
        raise DataError(f"{path} has malformed rows (restore it from the release):\n  " + "\n  ".join(bad))
    return rows


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
        Leave out missing/unreadable/empty clips and unknown categories (listed in
        ``skipped_files.txt``) instead of failing.

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
    data_folder = resolve_data_folder(data_folder, RELEASE, METADATA)
    options = {"data_folder": str(data_folder.resolve()), "skip_bad_files": bool(skip_bad_files),
               "class_names": list(class_names)}
    if manifests_up_to_date(save_folder, [MANIFEST], options):
        return
    rows = read_metadata(data_folder)
    write_manifests(save_folder, {MANIFEST: rows}, data_folder, options, skip_bad_files,
                    labels=set(class_names))
