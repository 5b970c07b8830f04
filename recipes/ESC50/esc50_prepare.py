"""ESC-50: one manifest from the official release, with the fold of every clip.

The release (``ESC-50-master``) holds ``meta/esc50.csv`` (header
``filename,fold,target,category,esc10,src_file,take``) and 5 s, 44.1 kHz clips under ``audio/``.
The label is the ``category``; the fold split (5 folds) is applied when the recipe loads the
manifest, so the manifest is written once for all folds.
"""

from pathlib import Path

from petl_modules.training.prepare import prepare_fold_release, read_fold_csv

RELEASE = "ESC-50-master"
METADATA = "meta/esc50.csv"
HEADER = "filename,fold,target,category,esc10,src_file,take"
COLUMNS = ("filename", "fold", "category")
FOLDS = range(1, 6)  # the release's folds
MANIFEST = "all"  # <save_folder>/all.csv


def clip_row(record, fold):
    """The manifest row of one ``meta/esc50.csv`` record."""
    return {"ID": Path(record["filename"]).stem, "wav": f"audio/{record['filename']}",
            "label": record["category"], "fold": fold}


def read_metadata(data_folder, bad_folds=None):
    """The rows (ID, wav, label, fold) of ``meta/esc50.csv``.

    A row whose fold is not one of 1-5 is an error naming it (file, line, clip), or, with a
    ``bad_folds`` list, left out and described there."""
    return read_fold_csv(Path(data_folder) / METADATA, COLUMNS, HEADER, FOLDS, clip_row,
                         "filename", bad_folds)


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
    prepare_fold_release(data_folder, save_folder, RELEASE, METADATA, MANIFEST, read_metadata,
                         class_names, skip_bad_files)
