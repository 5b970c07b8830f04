"""UrbanSound8K: one manifest from the official release, with the fold of every slice.

The release (``UrbanSound8K``) holds ``metadata/UrbanSound8K.csv`` (header
``slice_file_name,fsID,start,end,salience,fold,classID,class``) and slices of up to 4 s under
``audio/fold<k>/``, in many formats (8 to 96 kHz, mono or stereo, 8-bit unsigned to 24-bit PCM
and float): ``petl_modules.model.audio.load_audio`` reads them all as 16 kHz mono. The label is the
``class``; the fold split (10 folds) is applied when the recipe loads the manifest.
"""

from pathlib import Path

from petl_modules.training.prepare import prepare_fold_release, read_fold_csv

RELEASE = "UrbanSound8K"
METADATA = "metadata/UrbanSound8K.csv"
HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class"
COLUMNS = ("slice_file_name", "fsID", "fold", "class")
FOLDS = range(1, 11)  # the release's folds
MANIFEST = "all"  # <save_folder>/all.csv


def slice_row(record, fold):
    """The manifest row of one ``metadata/UrbanSound8K.csv`` record."""
    return {"ID": Path(record["slice_file_name"]).stem,
            "wav": f"audio/fold{fold}/{record['slice_file_name']}",
            "label": record["class"], "fold": fold, "fsID": record["fsID"]}


def read_metadata(data_folder, bad_folds=None):
    """The rows (ID, wav, label, fold, fsID) of ``metadata/UrbanSound8K.csv``.

    A row whose fold is not one of 1-10 is an error naming it (file, line, slice), or, with a
    ``bad_folds`` list, left out and described there."""
    return read_fold_csv(Path(data_folder) / METADATA, COLUMNS, HEADER, FOLDS, slice_row,
                         "slice_file_name", bad_folds)


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
        Leave out missing/unreadable/empty slices, unknown classes and metadata rows whose fold is
        not one of 1-10 (listed in ``skipped_files.txt``) instead of failing.

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
    prepare_fold_release(data_folder, save_folder, RELEASE, METADATA, MANIFEST, read_metadata,
                         class_names, skip_bad_files)
