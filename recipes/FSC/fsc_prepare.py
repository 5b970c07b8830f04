"""Fluent Speech Commands: manifests from the official release.

The release (``fluent_speech_commands_dataset``) holds ``data/{train,valid,test}_data.csv`` with the
header ``,path,speakerId,transcription,action,object,location`` and 16 kHz wavs under
``wavs/speakers/<speakerId>/``. The label is the intent: ``action,object,location`` (31 of them).
"""

import csv
import logging
from pathlib import Path

from petl_modules.prepare import DataError, manifests_up_to_date, write_manifests
from petl_modules.recipe import resolve_data_folder

logger = logging.getLogger(__name__)

RELEASE = "fluent_speech_commands_dataset"
SPLITS = ("train", "valid", "test")
COLUMNS = ("path", "speakerId", "action", "object", "location")


def read_split(data_folder, split):
    """Rows (ID, wav, label, speaker) of one official split csv."""
    path = Path(data_folder) / "data" / f"{split}_data.csv"
    if not path.is_file():
        raise DataError(f"Missing {path}: the FSC release has data/{split}_data.csv.")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}; expected the header "
                            "',path,speakerId,transcription,action,object,location'.")
        rows = []
        for record in reader:
            wav = record["path"]
            rows.append({
                "ID": Path(wav).stem,
                "wav": wav,
                "label": ",".join(record[c] for c in ("action", "object", "location")),
                "speaker": record["speakerId"],
            })
    return rows


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
    data_folder = resolve_data_folder(data_folder, RELEASE, "data/train_data.csv")
    options = {"data_folder": str(data_folder.resolve()), "skip_bad_files": bool(skip_bad_files)}
    if manifests_up_to_date(save_folder, SPLITS, options):
        return
    splits = {split: read_split(data_folder, split) for split in SPLITS}
    write_manifests(save_folder, splits, data_folder, options, skip_bad_files)
