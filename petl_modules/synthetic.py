"""Small synthetic datasets in the official on-disk layouts (a test and demo utility).

Each generator writes a few learnable utterances per class (a class-specific pair of tones with a
chirp, random gain, offset and noise) in exactly the layout of the real release, so that the real
preparation scripts and recipes run on them unchanged. Tests and ``python -m petl_modules.demo``
use these same functions.

Example
-------
>>> import tempfile
>>> folder = make_dataset("FSC", tempfile.mkdtemp(), per_class=1)
>>> folder.name
'fluent_speech_commands_dataset'
"""

import csv
import math
from pathlib import Path

import numpy as np
import ruamel.yaml
import soundfile as sf

from petl_modules.paths import recipes_folder

SAMPLE_RATE = 16000


def class_signal(index, n_classes, seconds, sample_rate=SAMPLE_RATE, rng=None, top_hz=6000.0):
    """A waveform that identifies class ``index`` among ``n_classes`` (float32, ``[S]``).

    Two tones at class-specific frequencies (log-spaced over 150 Hz - ``top_hz``) with a rising
    chirp, random gain, start offset and background noise: separable by a tiny model in a few
    epochs. Keep ``top_hz`` below the lowest sample rate / 2.5 of a dataset for the class
    frequencies not to depend on the file's rate.
    """
    rng = rng or np.random.default_rng(index)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    low, high = math.log(150.0), math.log(min(top_hz, sample_rate / 2.5))
    f1 = math.exp(low + (high - low) * index / max(1, n_classes - 1))
    f2 = f1 * (1.5 if index % 2 else 2.5)
    chirp = f1 * (1 + 0.2 * t / max(seconds, 1e-3))
    wave = np.sin(2 * np.pi * np.cumsum(chirp) / sample_rate) + 0.5 * np.sin(2 * np.pi * f2 * t)
    envelope = np.ones(n)
    start = int(rng.uniform(0, 0.2) * n)
    envelope[:start] = 0.0
    signal = rng.uniform(0.2, 0.5) * wave * envelope + 0.01 * rng.standard_normal(n)
    return signal.astype(np.float32)


def write_wav(path, signal, sample_rate=SAMPLE_RATE, subtype="PCM_16", channels=1):
    """Writes ``signal`` (mono float) to ``path``, duplicated over ``channels``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    sf.write(str(path), data, sample_rate, subtype=subtype)


# ------------------------------------------------------------------------------------------ FSC
FSC_INTENTS = (
    [(a, o, loc) for a in ("activate", "deactivate") for o in ("lights", "music", "lamp")
     for loc in ("kitchen", "bedroom", "washroom", "none")]
    + [(a, o, "none") for a in ("increase", "decrease") for o in ("volume", "heat")]
    + [("change language", lang, "none") for lang in ("Chinese", "Korean", "English")]
)
assert len(FSC_INTENTS) == 31


def make_fsc(root, per_class=2, seed=0, seconds=1.0):
    """Fluent Speech Commands layout: ``data/{train,valid,test}_data.csv`` + ``wavs/speakers/``.

    ``per_class`` utterances per intent in train, and one per intent in valid and test; speakers
    are disjoint across splits, as in the release.
    """
    folder = Path(root) / "fluent_speech_commands_dataset"
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "valid": 1, "test": 1}
    for split, count in counts.items():
        rows = []
        for index, (action, obj, location) in enumerate(FSC_INTENTS):
            for k in range(count):
                speaker = f"{split}Spk{k % 3}"
                uid = f"{split}-{index:02d}-{k}"
                rel = f"wavs/speakers/{speaker}/{uid}.wav"
                write_wav(folder / rel, class_signal(index, len(FSC_INTENTS), seconds, rng=rng))
                text = f"{action} {obj} {location}"
                rows.append([len(rows), rel, speaker, text, action, obj, location])
        csv_path = folder / "data" / f"{split}_data.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows(rows)
    return folder


# ---------------------------------------------------------------------------------- shared bits
RECIPES = recipes_folder()


def official_class_names(recipe):
    """The class names a recipe's dataset yaml lists (``class_names``), in its own order."""
    path = next((RECIPES / recipe).glob("*.yaml"))
    with open(path) as stream:
        return [str(name) for name in ruamel.yaml.YAML().load(stream)["class_names"]]


def _write_csv(path, header, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------- ESC-50
ESC10 = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
         "clock_tick", "helicopter", "chainsaw"}


def make_esc50(root, per_class=1, seed=0, seconds=1.0):
    """ESC-50 layout: ``meta/esc50.csv`` + ``audio/<fold>-<src_file>-<take>-<target>.wav``.

    ``per_class`` clips per class in each of the 5 folds (the release has 8), 44.1 kHz mono
    16-bit, ``seconds`` long (the release: 5 s). Each clip has its own source recording, so
    clips of one source share a fold, as in the release.
    """
    folder = Path(root) / "ESC-50-master"
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
    _write_csv(folder / "meta" / "esc50.csv",
               ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return folder


# --------------------------------------------------------------------------------- UrbanSound8K
# (sample rate, channels, soundfile subtype): the mix of formats found in the release.
US8K_FORMATS = [
    (44100, 2, "PCM_16"), (48000, 1, "PCM_24"), (22050, 2, "PCM_U8"), (96000, 2, "PCM_24"),
    (8000, 1, "PCM_16"), (11025, 1, "PCM_U8"), (48000, 2, "FLOAT"), (16000, 1, "PCM_16"),
    (32000, 1, "PCM_32"),
]


def make_urbansound8k(root, per_class=1, seed=0, seconds=1.0):
    """UrbanSound8K layout: ``metadata/UrbanSound8K.csv`` + ``audio/fold<k>/<fsID>-<classID>-<occ>-<slice>.wav``.

    ``per_class`` slices per class in each of the 10 folds, ``seconds`` long (release: up to 4 s),
    cycling through the release's formats (``US8K_FORMATS``: 8 to 96 kHz, mono and stereo,
    8-bit unsigned, 16/24/32-bit PCM and 32-bit float). Class frequencies stay below 3 kHz so
    that they do not depend on the file's rate.
    """
    folder = Path(root) / "UrbanSound8K"
    classes = official_class_names("UrbanSound8K")
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, 11):
        for class_id, name in enumerate(classes):
            for k in range(per_class):
                fs_id = 1000 * fold + 10 * class_id + k
                file_name = f"{fs_id}-{class_id}-0-{k}.wav"
                rate, channels, subtype = US8K_FORMATS[len(rows) % len(US8K_FORMATS)]
                signal = class_signal(class_id, len(classes), seconds, rate, rng, top_hz=3000.0)
                write_wav(folder / "audio" / f"fold{fold}" / file_name, signal, rate, subtype, channels)
                rows.append([file_name, fs_id, 0.0, seconds, 1, fold, class_id, name])
    _write_csv(folder / "metadata" / "UrbanSound8K.csv",
               ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"],
               rows)
    return folder


# --------------------------------------------------------------------------- Speech Commands v2
def make_speechcommands(root, per_class=2, seed=0, seconds=1.0):
    """Speech Commands v2 layout: ``speech_commands_v0.02/<word>/<hash>_nohash_<k>.wav`` + lists.

    ``per_class`` training files per word plus one listed in ``validation_list.txt`` and one in
    ``testing_list.txt``; 16 kHz mono, at most ``seconds`` long; a ``_background_noise_`` folder
    (not a class) and the release's top-level files.
    """
    folder = Path(root) / "speech_commands_v0.02"
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


# -------------------------------------------------------------------------------------- IEMOCAP
# Per session: one improvised and one scripted dialog; labels cycle through the kept emotions
# (hap and exc both count as hap) and some the recipe leaves out (fru, xxx).
IEMOCAP_LABELS = ["neu", "hap", "sad", "ang", "exc", "fru", "xxx"]
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def make_iemocap(root, per_class=1, seed=0, seconds=1.0):
    """IEMOCAP layout: ``IEMOCAP_full_release/Session<n>/dialog/EmoEvaluation/<dialog>.txt`` + wavs.

    Five sessions, each with an improvised (``Ses0<n>F_impro01``) and a scripted dialog
    (``Ses0<n>M_script01_1``); per session and speaker (F, M), ``per_class`` utterances of each
    of the four classes (neu, hap or exc, sad, ang) and some labelled fru / xxx that the recipe
    skips. Annotation files have the real line format: header, utterance lines
    (``[start - end]<TAB>name<TAB>label<TAB>[v, a, d]``), per-annotator ``C-E1:`` / ``A-E1:`` lines
    and blank lines. Wavs: ``Session<n>/sentences/wav/<dialog>/<utterance>.wav``, 16 kHz.
    """
    folder = Path(root) / "IEMOCAP_full_release"
    classes = official_class_names("IEMOCAP")
    rng = np.random.default_rng(seed)
    for session in range(1, 6):
        dialogs = {f"Ses0{session}F_impro01": [], f"Ses0{session}M_script01_1": []}
        utterances = [(sex, label, k) for sex in "FM" for k in range(per_class)
                      for label in IEMOCAP_LABELS]
        for i, (sex, label, k) in enumerate(utterances):
            dialog = list(dialogs)[i % 2]
            dialogs[dialog].append((f"{dialog}_{sex}{len(dialogs[dialog]):03d}", label))
        for dialog, turns in dialogs.items():
            lines, start = [IEMOCAP_HEADER], 2.0
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


GENERATORS = {
    "FSC": make_fsc,
    "ESC50": make_esc50,
    "UrbanSound8K": make_urbansound8k,
    "SpeechCommands": make_speechcommands,
    "IEMOCAP": make_iemocap,
}


def make_dataset(name, root, per_class=2, seed=0, **options):
    """Writes the synthetic copy of dataset ``name`` under ``root``; returns its top folder."""
    if name not in GENERATORS:
        raise ValueError(f"No synthetic generator for '{name}'. Known: {', '.join(GENERATORS)}.")
    return GENERATORS[name](root, per_class=per_class, seed=seed, **options)
