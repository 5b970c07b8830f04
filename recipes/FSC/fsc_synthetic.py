"""A synthetic Fluent Speech Commands in the release layout (tests, demo, benchmark).

Found and imported by ``petl_modules.synthetic.make_dataset("FSC", ...)`` (see that module).

Example
-------
>>> import tempfile
>>> from petl_modules.synthetic import make_dataset
>>> make_dataset("FSC", tempfile.mkdtemp(), per_class=1, seconds=0.1).name
'fluent_speech_commands_dataset'
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import class_signal, write_csv, write_wav

RELEASE = "fluent_speech_commands_dataset"

# python -m petl_modules.demo: the default dataset; 6 training utterances per intent.
DEMO = {"per_class": 6, "release": RELEASE, "options": [], "default": True}

INTENTS = (
    [(a, o, loc) for a in ("activate", "deactivate") for o in ("lights", "music", "lamp")
     for loc in ("kitchen", "bedroom", "washroom", "none")]
    + [(a, o, "none") for a in ("increase", "decrease") for o in ("volume", "heat")]
    + [("change language", lang, "none") for lang in ("Chinese", "Korean", "English")]
)
assert len(INTENTS) == 31


def generate(root, per_class=2, seed=0, seconds=1.0):
    """Fluent Speech Commands layout: ``data/{train,valid,test}_data.csv`` + ``wavs/speakers/``.

    ``per_class`` utterances per intent in train, and one per intent in valid and test; speakers
    are disjoint across splits, as in the release.
    """
    folder = Path(root) / RELEASE
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "valid": 1, "test": 1}
    for split, count in counts.items():
        rows = []
        for index, (action, obj, location) in enumerate(INTENTS):
            for k in range(count):
                speaker = f"{split}Spk{k % 3}"
                uid = f"{split}-{index:02d}-{k}"
                rel = f"wavs/speakers/{speaker}/{uid}.wav"
                write_wav(folder / rel, class_signal(index, len(INTENTS), seconds, rng=rng))
                text = f"{action} {obj} {location}"
                rows.append([len(rows), rel, speaker, text, action, obj, location])
        write_csv(folder / "data" / f"{split}_data.csv",
                  ["", "path", "speakerId", "transcription", "action", "object", "location"], rows)
    return folder
