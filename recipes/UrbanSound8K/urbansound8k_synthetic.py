"""A synthetic UrbanSound8K in the release layout, in the release's mix of audio formats.

Found and imported by ``petl_modules.synthetic.make_dataset("UrbanSound8K", ...)`` (see that
module).
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import class_signal, official_class_names, write_csv, write_wav

RELEASE = "UrbanSound8K"

# python -m petl_modules.demo: two slices per class and fold; the first fold; a time mask that
# fits the demo's 1 s clips.
DEMO = {"per_class": 2, "release": RELEASE, "options": ["--fold=1", "--time_mask=20"]}

# (sample rate, channels, soundfile subtype): the mix of formats found in the release.
FORMATS = [
    (44100, 2, "PCM_16"), (48000, 1, "PCM_24"), (22050, 2, "PCM_U8"), (96000, 2, "PCM_24"),
    (8000, 1, "PCM_16"), (11025, 1, "PCM_U8"), (48000, 2, "FLOAT"), (16000, 1, "PCM_16"),
    (32000, 1, "PCM_32"),
]


def generate(root, per_class=1, seed=0, seconds=1.0):
    """UrbanSound8K layout: ``metadata/UrbanSound8K.csv`` + ``audio/fold<k>/<fsID>-<classID>-<occ>-<slice>.wav``.

    ``per_class`` slices per class in each of the 10 folds, ``seconds`` long (release: up to 4 s),
    cycling through the release's formats (``FORMATS``: 8 to 96 kHz, mono and stereo, 8-bit
    unsigned, 16/24/32-bit PCM and 32-bit float). Class frequencies stay below 3 kHz so that they
    do not depend on the file's rate.
    """
    folder = Path(root) / RELEASE
    classes = official_class_names("UrbanSound8K")
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, 11):
        for class_id, name in enumerate(classes):
            for k in range(per_class):
                fs_id = 1000 * fold + 10 * class_id + k
                file_name = f"{fs_id}-{class_id}-0-{k}.wav"
                rate, channels, subtype = FORMATS[len(rows) % len(FORMATS)]
                signal = class_signal(class_id, len(classes), seconds, rate, rng, top_hz=3000.0)
                write_wav(folder / "audio" / f"fold{fold}" / file_name, signal, rate, subtype, channels)
                rows.append([file_name, fs_id, 0.0, seconds, 1, fold, class_id, name])
    write_csv(folder / "metadata" / "UrbanSound8K.csv",
              ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"],
              rows)
    return folder
