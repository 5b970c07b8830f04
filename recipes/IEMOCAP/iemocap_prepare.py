"""IEMOCAP: one manifest of the utterances of the 4 emotion classes, with session and speaker.

The release (``IEMOCAP_full_release``) holds per session ``Session<n>/dialog/EmoEvaluation/
<dialog>.txt`` annotation files, whose utterance lines read
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`` (other lines:
header, per-annotator ``C-E1:`` / ``A-E1:`` lines, blank lines, are skipped), and the 16 kHz
audio at ``Session<n>/sentences/wav/<dialog>/<utterance>.wav``, where ``<dialog>`` is the
utterance name without its last ``_`` part. The speaker's sex is the first letter of that part.
Labels kept: neu, hap, exc (merged into hap), sad, ang; the others are counted and left out.
"""

import logging
from collections import Counter
from pathlib import Path

from petl_modules.training.prepare import DataError, prepare_once

logger = logging.getLogger(__name__)

RELEASE = "IEMOCAP_full_release"
MARKER = "Session1/dialog/EmoEvaluation"
SESSIONS = (1, 2, 3, 4, 5)
MERGED = {"exc": "hap"}  # excited counts as happy
LEFT_OUT = {"fru", "sur", "fea", "dis", "oth", "xxx"}  # emotions of the release the protocol drops
MANIFEST = "all"  # <save_folder>/all.csv


def read_annotations(data_folder, kept_labels):
    """Rows (ID, wav, label, session, speaker) of the utterances whose label is kept or unknown.

    Returns the rows and a ``Counter`` of the labels left out by the protocol.
    """
    data_folder = Path(data_folder)
    rows, dropped, bad = [], Counter(), []
    missing = [f"Session{s}/dialog/EmoEvaluation" for s in SESSIONS
               if not (data_folder / f"Session{s}/dialog/EmoEvaluation").is_dir()]
    if missing:
        raise DataError(f"{data_folder} lacks {', '.join(missing)}: IEMOCAP needs the 5 sessions "
                        "of the release (IEMOCAP_full_release/Session1..5).")
    for session in SESSIONS:
        folder = data_folder / f"Session{session}/dialog/EmoEvaluation"
        for path in sorted(folder.glob("*.txt")):
            if path.name.startswith("."):  # '._*' resource forks present in some copies
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                if not line.startswith("["):
                    continue
                fields = line.split("\t")
                if len(fields) < 3 or "_" not in fields[1]:
                    bad.append(f"{path}:{number}: '{line}'")
                    continue
                name, label = fields[1].strip(), fields[2].strip()
                label = MERGED.get(label, label)
                if label in LEFT_OUT and label not in kept_labels:
                    dropped[label] += 1
                    continue
                dialog, turn = name.rsplit("_", 1)
                rows.append({"ID": name, "wav": f"Session{session}/sentences/wav/{dialog}/{name}.wav",
                             "label": label, "session": session, "speaker": turn[0]})
    if bad:
        raise DataError("Malformed utterance line(s) in the IEMOCAP annotations (expected "
                        "'[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]'):\n  "
                        + "\n  ".join(bad[:20]))
    return rows, dropped


def prepare_iemocap(data_folder, save_folder, class_names, skip_bad_files=False):
    """Writes ``all.csv`` (ID, duration, wav, label, session, speaker) for IEMOCAP.

    Arguments
    ---------
    data_folder : str
        The ``IEMOCAP_full_release`` folder (or its parent).
    save_folder : str
        Where the manifest goes; preparation is skipped when it exists for the same options.
    class_names : list of str
        The labels kept (``class_names`` of ``iemocap.yaml``: neu, hap, sad, ang; exc is merged
        into hap). The release's other emotions are left out (counted in the log); a label the
        release does not have is an error.
    skip_bad_files : bool
        Leave out missing/unreadable/empty wavs and unknown labels (listed in
        ``skipped_files.txt``) instead of failing.

    Example
    -------
    >>> from petl_modules.synthetic import make_dataset
    >>> import tempfile
    >>> root = make_dataset("IEMOCAP", tempfile.mkdtemp(), per_class=1, seconds=0.1)
    >>> save = tempfile.mkdtemp()
    >>> prepare_iemocap(root, save, ["neu", "hap", "sad", "ang"])
    >>> sorted(p.name for p in Path(save).iterdir())
    ['all.csv', 'prepare_options.json']
    """
    def read_splits(folder):
        rows, dropped = read_annotations(folder, set(class_names))
        if dropped:
            logger.info(f"Left out {sum(dropped.values())} utterances with labels outside the "
                        f"protocol: {dict(sorted(dropped.items()))}")
        return {MANIFEST: rows}

    prepare_once(data_folder, save_folder, RELEASE, MARKER, [MANIFEST], read_splits, class_names,
                 skip_bad_files)
