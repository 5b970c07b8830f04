"""UrbanSound8K: one manifest from the official release, with the fold of every slice.

The release (``UrbanSound8K``) holds ``metadata/UrbanSound8K.csv`` (header
``slice_file_name,fsID,start,end,salience,fold,classID,class``) and slices of up to 4 s under
``audio/fold<k>/``, in many formats (8 to 96 kHz, mono or stereo, 8-bit unsigned to 24-bit PCM
and float): ``petl_modules.audio.load_audio`` reads them all as 16 kHz mono. The label is the
``class``; the fold split (10 folds) is applied when the recipe loads the manifest.
"""

import csv
from pathlib import Path

from petl_modules.prepare import DataError, manifests_up_to_date, write_manifests
from petl_modules.recipe import resolve_data_folder

RELEASE = "UrbanSound8K"
METADATA = "metadata/UrbanSound8K.csv"
COLUMNS = ("slice_file_name", "fsID", "fold", "class")
MANIFEST = "all"  # <save_folder>/all.csv


def read_metadata(data_folder):
    """Rows (ID, wav, label, fold, fsID) of ``metadata/UrbanSound8K.csv``."""
    path = Path(data_folder) / METADATA
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}; expected the release's header "
                            "'slice_file_name,fsID,start,end,salience,fold,classID,class'.")
        rows, bad = [], []
        for line, record in enumerate(reader, start=2):
            if not record["fold"].strip().isdigit():
                bad.append(f"line {line}: fold '{record['fold']}' is not a fold number")
                continue
            fold = int(record["fold"])
            rows.append({"ID": Path(record["slice_file_name"]).stem,
                         "wav": f"audio/fold{fold}/{record['slice_file_name']}",
                         "label": record["class"], "fold": fold, "fsID": record["fsID"]})
    if bad:
        raise DataError(f"{path} has malformed rows (restore it from the release):\n  " + "\n  ".join(bad))
    return rows


def prepare_urbansound8k(data_folder, save_folder, class_names, skip_bad_files=False):
    """Writes ``all.csv`` (ID, duration, wav, label, fold, fsID) for UrbanSound8K.

    Arguments
    ---------
    data_folder : str
        The ``UrbanSound8K`` folder (or its parent).
    save_folder : str
        Where the manifest goes; preparation is skipped when it exists for the same options.
    class_names : list of str
        The 10 classes (``class_names`` of ``urbansound8k.yaml``); another class is an error.
    skip_bad_files : bool
        Leave out missing/unreadable/empty slices and unknown classes (listed in
        ``skipped_files.txt``) instead of failing.

    Example
    -------
    >>> from petl_modules.synthetic import make_dataset, official_class_names
    >>> import tempfile
    >>> root = make_dataset("UrbanSound8K", tempfile.mkdtemp(), per_class=1, seconds=0.1)
    >>> save = tempfile.mkdtemp()
    >>> prepare_urbansound8k(root, save, official_class_names("UrbanSound8K"))
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
