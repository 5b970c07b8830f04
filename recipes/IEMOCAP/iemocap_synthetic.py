"""A synthetic IEMOCAP in the release layout (annotation files and sentence wavs).

Found and imported by ``petl_modules.synthetic.make_dataset("IEMOCAP", ...)`` (see that module).
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import class_signal, official_class_names, write_wav

RELEASE = "IEMOCAP_full_release"

# python -m petl_modules.demo: 4 utterances per class, session and speaker; the first fold.
DEMO = {"per_class": 4, "release": RELEASE, "options": ["--fold=1"]}

# Per session: one improvised and one scripted dialog; labels cycle through the kept emotions
# (hap and exc both count as hap) and some the recipe leaves out (fru, xxx).
LABELS = ["neu", "hap", "sad", "ang", "exc", "fru", "xxx"]
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def generate(root, per_class=1, seed=0, seconds=1.0):
    """IEMOCAP layout: ``IEMOCAP_full_release/Session<n>/dialog/EmoEvaluation/<dialog>.txt`` + wavs.

    Five sessions, each with an improvised (``Ses0<n>F_impro01``) and a scripted dialog
    (``Ses0<n>M_script01_1``); per session and speaker (F, M), ``per_class`` utterances of each
    of the four classes (neu, hap or exc, sad, ang) and some labelled fru / xxx that the recipe
    skips. Annotation files have the real line format: header, utterance lines
    (``[start - end]<TAB>name<TAB>label<TAB>[v, a, d]``), per-annotator ``C-E1:`` / ``A-E1:`` lines
    and blank lines. Wavs: ``Session<n>/sentences/wav/<dialog>/<utterance>.wav``, 16 kHz.
    """
    folder = Path(root) / RELEASE
    classes = official_class_names("IEMOCAP")
    rng = np.random.default_rng(seed)
    for session in range(1, 6):
        dialogs = {f"Ses0{session}F_impro01": [], f"Ses0{session}M_script01_1": []}
        utterances = [(sex, label, k) for sex in "FM" for k in range(per_class) for label in LABELS]
        for i, (sex, label, k) in enumerate(utterances):
            dialog = list(dialogs)[i % 2]
            dialogs[dialog].append((f"{dialog}_{sex}{len(dialogs[dialog]):03d}", label))
        for dialog, turns in dialogs.items():
            lines, start = [HEADER], 2.0
            for name, label in turns:
                kept = "hap" if label == "exc" else label
                index = classes.index(kept) if kept in classes else len(classes)
                write_wav(folder / f"Session{session}" / "sentences" / "wav" / dialog / f"{name}.wav",
                          class_signal(index, len(classes) + 1, seconds, rng=rng))
                lines.append(f"[{start:.4f} - {start + seconds:.4f}]\t{name}\t{label}\t"
                             "[2.5000, 3.0000, 2.5000]\n")
                lines.append("C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t(calm)\n")
                lines.append("A-E1:\tval 3; act 2; dom  2;\t()\n\n")
                start += seconds + 0.5
            path = folder / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(lines))
    return folder
