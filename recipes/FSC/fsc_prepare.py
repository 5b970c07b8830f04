"""Fluent Speech Commands: manifests from the official release.

The release (``fluent_speech_commands_dataset``) holds ``data/{train,valid,test}_data.csv`` with the
header ``,path,speakerId,transcription,action,object,location`` and 16 kHz wavs under
``wavs/speakers/<speakerId>/``. The label is the intent: ``action,object,location`` (31 of them).
"""

from pathlib import Path

from petl_modules.training.prepare import prepare_once, read_release_csv

RELEASE = "fluent_speech_commands_dataset"
MARKER = "data/train_data.csv"
SPLITS = ("train", "valid", "test")
COLUMNS = ("path", "speakerId", "action", "object", "location")


def read_split(data_folder, split):
    """Rows (ID, wav, label, speaker) of one official split csv."""
    records = read_release_csv(Path(data_folder) / "data" / f"{split}_data.csv", COLUMNS,
                               ",path,speakerId,transcription,action,object,location")
    return [{"ID": Path(r["path"]).stem, "wav": r["path"],
             "label": ",".join(r[c] for c in ("action", "object", "location")),
             "speaker": r["speakerId"]} for r in records]


def read_splits(data_folder):
    """``{split: rows}`` of the three official splits."""
    return {split: read_split(data_folder, split) for split in SPLITS}


def prepare_fsc(data_folder, save_folder, skip_bad_files=False):
    """Writes ``train.csv``, ``valid.csv`` and ``test.csv`` manifests for FSC.

    Arguments
    ---------
    data_folder : str
        The ``fluent_speech_commands_dataset`` folder (or its parent).
    save_folder : str
        Where the manifests go; preparation is skipped when they exist for the same options.
    skip_bad_files : bool
        Leave out missing/unreadable/empty wavs (listed in ``skipped_files.txt``) instead of
        failing.

    Example
    -------
    >>> prepare_fsc("/data/fluent_speech_commands_dataset", "results/manifests")  # doctest: +SKIP
    """
    prepare_once(data_folder, save_folder, RELEASE, MARKER, SPLITS, read_splits,
                 skip_bad_files=skip_bad_files)
