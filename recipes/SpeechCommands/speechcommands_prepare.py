"""Speech Commands v2: train/valid/test manifests from the official lists.

The release (``speech_commands_v0.02``) holds one folder per word with 16 kHz clips of at most
1 s (``<word>/<speaker>_nohash_<k>.wav``), and ``validation_list.txt`` / ``testing_list.txt``
listing ``<word>/<file>.wav``. Training = every other clip of the word folders; folders whose
name starts with ``_`` (``_background_noise_``) are not classes. The label is the word.
"""

from pathlib import Path

from petl_modules.training.prepare import DataError, prepare_once

RELEASE = "speech_commands_v0.02"
LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "valid", "test")


def _row(rel):
    word, name = rel.split("/", 1)
    return {"ID": f"{word}_{Path(name).stem}", "wav": rel, "label": word}


def read_splits(data_folder):
    """``{split: rows}`` (ID, wav, label) from the official lists and the word folders."""
    data_folder = Path(data_folder)
    splits, listed = {}, set()
    for split, list_name in LISTS.items():
        path = data_folder / list_name
        if not path.is_file():
            raise DataError(f"Missing {path}: the Speech Commands v2 release has {list_name}.")
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        bad = [e for e in entries if e.count("/") != 1]
        if bad:
            raise DataError(f"{path} has entries that are not '<word>/<file>.wav': {bad[:5]} "
                            "(restore the list from the release).")
        splits[split] = [_row(entry) for entry in entries]
        listed.update(entries)
    words = sorted(p.name for p in data_folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    splits["train"] = [
        _row(f"{word}/{wav.name}") for word in words for wav in sorted((data_folder / word).glob("*.wav"))
        if f"{word}/{wav.name}" not in listed
    ]
    return {split: splits[split] for split in SPLITS}


def prepare_speechcommands(data_folder, save_folder, class_names, skip_bad_files=False):
    """Writes ``train.csv``, ``valid.csv`` and ``test.csv`` manifests for Speech Commands v2.

    Arguments
    ---------
    data_folder : str
        The ``speech_commands_v0.02`` folder (or its parent).
    save_folder : str
        Where the manifests go; preparation is skipped when they exist for the same options.
    class_names : list of str
        The 35 words (``class_names`` of ``speechcommands.yaml``); a clip in another folder (not
        starting with ``_``) is an error.
    skip_bad_files : bool
        Leave out missing/unreadable/empty clips and unknown words (listed in
        ``skipped_files.txt``) instead of failing.

    Example
    -------
    >>> from petl_modules.synthetic import make_dataset, official_class_names
    >>> import tempfile
    >>> root = make_dataset("SpeechCommands", tempfile.mkdtemp(), per_class=1, seconds=0.1)
    >>> save = tempfile.mkdtemp()
    >>> prepare_speechcommands(root, save, official_class_names("SpeechCommands"))
    >>> sorted(p.name for p in Path(save).iterdir())
    ['prepare_options.json', 'test.csv', 'train.csv', 'valid.csv']
    """
    prepare_once(data_folder, save_folder, RELEASE, LISTS["test"], SPLITS, read_splits,
                 class_names, skip_bad_files)
