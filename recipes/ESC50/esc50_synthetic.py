"""A synthetic ESC-50 in the release layout (tests, demo).

Found and imported by ``petl_modules.synthetic.make_dataset("ESC50", ...)`` (see that module).
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import class_signal, official_class_names, write_csv, write_wav

RELEASE = "ESC-50-master"

# python -m petl_modules.demo: one clip per class and fold; the first fold; a time mask that fits
# the demo's 1 s clips.
DEMO = {"per_class": 1, "release": RELEASE, "options": ["--fold=1", "--time_mask=20"]}

ESC10 = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
         "clock_tick", "helicopter", "chainsaw"}


def generate(root, per_class=1, seed=0, seconds=1.0):
    """ESC-50 layout: ``meta/esc50.csv`` + ``audio/<fold>-<src_file>-<take>-<target>.wav``.

    ``per_class`` clips per class in each of the 5 folds (the release has 8), 44.1 kHz mono
    16-bit, ``seconds`` long (the release: 5 s). Each clip has its own source recording, so
    clips of one source share a fold, as in the release.
    """
    folder = Path(root) / RELEASE
    categories = official_class_names("ESC50")
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, 6):
        for target, category in enumerate(categories):
            for k in range(per_class):
                src_file = str(100000 + 1000 * fold + 10 * target + k)
                take = "ABCDEFGH"[k % 8]
                name = f"{fold}-{src_file}-{take}-{target}.wav"
                write_wav(folder / "audio" / name,
                          class_signal(target, len(categories), seconds, 44100, rng), 44100)
                rows.append([name, fold, target, category, category in ESC10, src_file, take])
    write_csv(folder / "meta" / "esc50.csv",
              ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return folder
