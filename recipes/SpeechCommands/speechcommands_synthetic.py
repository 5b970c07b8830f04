"""A synthetic Speech Commands v2 in the release layout (tests, demo).

Found and imported by ``petl_modules.synthetic.make_dataset("SpeechCommands", ...)`` (see that
module).
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import SAMPLE_RATE, class_signal, official_class_names, write_wav

RELEASE = "speech_commands_v0.02"

# python -m petl_modules.demo: 6 training files per word.
DEMO = {"per_class": 6, "release": RELEASE, "options": []}


def generate(root, per_class=2, seed=0, seconds=1.0):
    """Speech Commands v2 layout: ``speech_commands_v0.02/<word>/<hash>_nohash_<k>.wav`` + lists.

    ``per_class`` training files per word plus one listed in ``validation_list.txt`` and one in
    ``testing_list.txt``; 16 kHz mono, at most ``seconds`` long; a ``_background_noise_`` folder
    (not a class) and the release's top-level files.
    """
    folder = Path(root) / RELEASE
    words = official_class_names("SpeechCommands")
    rng = np.random.default_rng(seed)
    lists = {"validation_list.txt": [], "testing_list.txt": []}
    for index, word in enumerate(words):
        for k in range(per_class + 2):
            name = f"{rng.integers(16 ** 8):08x}_nohash_{k % 3}.wav"
            duration = seconds * (1.0 if k % 2 else 0.8)
            write_wav(folder / word / name, class_signal(index, len(words), duration, rng=rng))
            if k == per_class:
                lists["validation_list.txt"].append(f"{word}/{name}")
            elif k == per_class + 1:
                lists["testing_list.txt"].append(f"{word}/{name}")
    for list_name, entries in lists.items():
        (folder / list_name).write_text("\n".join(entries) + "\n")
    for noise in ("white_noise", "running_tap"):
        write_wav(folder / "_background_noise_" / f"{noise}.wav",
                  (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32))
    (folder / "_background_noise_" / "README.md").write_text("Background noise files.\n")
    (folder / "LICENSE").write_text("Creative Commons BY 4.0 (synthetic copy)\n")
    (folder / "README.md").write_text("Synthetic copy of Speech Commands v0.02 (test/demo data).\n")
    return folder
