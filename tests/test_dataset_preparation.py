"""Preparation of ESC-50, UrbanSound8K, Speech Commands v2 and IEMOCAP from their official
layouts: every problem reported at once, the skip option, re-use of manifests, fold protocols,
few-shot subsets, and audio of every format the releases hold."""

import csv
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import petl_modules.training.prepare
from petl_modules.synthetic import generator_module, make_dataset, official_class_names, write_wav
from petl_modules.model.audio import load_audio
from petl_modules.training.compose import ConfigError
from petl_modules.training.prepare import DataError
from petl_modules.training.recipe import few_shot_subset, fold_list, load_manifest, rotating_folds

from conftest import REPO


def recipe_module(recipe, name):
    """Imports ``recipes/<recipe>/<name>.py`` (recipes are scripts, not a package)."""
    sys.path.insert(0, str(REPO / "recipes" / recipe))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


esc50_prepare = recipe_module("ESC50", "esc50_prepare")
urbansound8k_prepare = recipe_module("UrbanSound8K", "urbansound8k_prepare")
speechcommands_prepare = recipe_module("SpeechCommands", "speechcommands_prepare")
iemocap_prepare = recipe_module("IEMOCAP", "iemocap_prepare")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {name: make_dataset(name, root, per_class=1, seconds=0.2)
            for name in ("ESC50", "UrbanSound8K", "SpeechCommands", "IEMOCAP")}


@pytest.fixture
def copy_of(pristine, tmp_path):
    def copy(name):
        return shutil.copytree(pristine[name], tmp_path / "data" / pristine[name].name)
    return copy


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# ------------------------------------------------------------------------------- bad input
def test_esc50_preparation_reports_every_bad_file_at_once_and_skip_lists_them(copy_of, tmp_path):
    root = copy_of("ESC50")
    clips = sorted((root / "audio").glob("*.wav"))
    clips[0].unlink()  # missing
    clips[1].write_bytes(b"")  # zero bytes
    clips[2].write_text("not audio")  # unreadable
    sf.write(str(clips[3]), np.zeros(0, dtype=np.float32), 44100)  # a wav with zero samples
    meta = root / "meta" / "esc50.csv"
    lines = meta.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(",hand_saw,", ",wolf,")  # unknown category (a fold-5 clip)
    meta.write_text("".join(lines))
    wolf = next(r["filename"] for r in read_rows(meta) if r["category"] == "wolf")
    names = official_class_names("ESC50")
    bad = [c.name for c in clips[:4]] + [wolf]

    with pytest.raises(DataError) as error:
        esc50_prepare.prepare_esc50(root, tmp_path / "m1", names)
    message = str(error.value)
    assert "5 problem(s)" in message and "--skip_bad_files=True" in message
    for name, problem in zip(bad, ["missing file", "unreadable", "unreadable", "empty", "unknown label 'wolf'"]):
        assert name in message
        assert any(name in line and problem in line for line in message.splitlines())
    assert not (tmp_path / "m1" / "all.csv").exists()

    esc50_prepare.prepare_esc50(root, tmp_path / "m2", names, skip_bad_files=True)
    skipped = (tmp_path / "m2" / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 5 and all(any(n in line for line in skipped) for n in bad)
    assert len(read_rows(tmp_path / "m2" / "all.csv")) == 250 - 5


def test_iemocap_preparation_reports_missing_empty_and_unknown_label_utterances(
        pristine, copy_of, tmp_path):
    classes = ["neu", "hap", "sad", "ang"]
    iemocap_prepare.prepare_iemocap(pristine["IEMOCAP"], tmp_path / "m0", classes)
    kept = {r["ID"] for r in read_rows(tmp_path / "m0" / "all.csv")}  # break only used files
    root = copy_of("IEMOCAP")
    wavs = [w for w in sorted((root / "Session3").rglob("*.wav")) if w.stem in kept]
    wavs[0].unlink()
    wavs[1].write_bytes(b"")
    annotation = sorted((root / "Session5" / "dialog" / "EmoEvaluation").glob("*.txt"))[0]
    annotation.write_text(annotation.read_text().replace("\tsad\t", "\tjoy\t", 1))

    with pytest.raises(DataError) as error:
        iemocap_prepare.prepare_iemocap(root, tmp_path / "m1", classes)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert f"{wavs[0]}: missing file" in message and f"{wavs[1]}: unreadable" in message
    assert "unknown label 'joy'" in message

    iemocap_prepare.prepare_iemocap(root, tmp_path / "m2", classes, skip_bad_files=True)
    assert len((tmp_path / "m2" / "skipped_files.txt").read_text().splitlines()) == 3
    assert len(read_rows(tmp_path / "m2" / "all.csv")) == 50 - 3


def test_speechcommands_listed_missing_file_and_unknown_word_folder_are_reported(copy_of, tmp_path):
    root = copy_of("SpeechCommands")
    listed = (root / "testing_list.txt").read_text().split()[0]
    (root / listed).unlink()
    write_wav(root / "marvel" / "0000abcd_nohash_0.wav", np.zeros(1600, dtype=np.float32))
    with pytest.raises(DataError) as error:
        speechcommands_prepare.prepare_speechcommands(root, tmp_path / "m",
                                                      official_class_names("SpeechCommands"))
    message = str(error.value)
    assert "2 problem(s)" in message
    assert f"{root / listed}: missing file (test split" in message
    assert "0000abcd_nohash_0.wav: unknown label 'marvel'" in message


def test_missing_release_folder_names_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"not a UrbanSound8K folder.*--data_folder=/path/to/UrbanSound8K"):
        urbansound8k_prepare.prepare_urbansound8k(tmp_path, tmp_path / "m",
                                                  official_class_names("UrbanSound8K"))


def test_iemocap_without_all_five_sessions_is_an_error(copy_of, tmp_path):
    root = copy_of("IEMOCAP")
    shutil.rmtree(root / "Session4")
    with pytest.raises(DataError, match="Session4/dialog/EmoEvaluation"):
        iemocap_prepare.prepare_iemocap(root, tmp_path / "m", ["neu", "hap", "sad", "ang"])


# ------------------------------------------------------------------------- re-using manifests
def test_preparation_is_skipped_when_manifests_match_and_redone_when_options_change(
        pristine, tmp_path, monkeypatch):
    calls = []
    real = petl_modules.training.prepare.write_manifests
    monkeypatch.setattr(petl_modules.training.prepare, "write_manifests",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    names = official_class_names("UrbanSound8K")
    save = tmp_path / "manifests"
    urbansound8k_prepare.prepare_urbansound8k(pristine["UrbanSound8K"], save, names)
    urbansound8k_prepare.prepare_urbansound8k(pristine["UrbanSound8K"].parent, save, names)
    assert len(calls) == 1  # same options (the parent folder resolves to the same release)
    urbansound8k_prepare.prepare_urbansound8k(pristine["UrbanSound8K"], save, names, skip_bad_files=True)
    assert len(calls) == 2
    (save / "all.csv").unlink()
    urbansound8k_prepare.prepare_urbansound8k(pristine["UrbanSound8K"], save, names, skip_bad_files=True)
    assert len(calls) == 3


# ------------------------------------------------------------------------ protocols, few-shot
def test_rotating_folds_validate_on_the_fold_before_the_test_fold():
    assert rotating_folds([1, 2, 3, 4, 5], 1) == {"train": [2, 3, 4], "valid": [5], "test": [1]}
    assert rotating_folds([1, 2, 3, 4, 5], 5) == {"train": [1, 2, 3], "valid": [4], "test": [5]}
    split = rotating_folds(range(1, 11), 3)
    assert split["valid"] == [2] and len(split["train"]) == 8 and 3 not in split["train"]


def test_fold_choice_runs_all_folds_by_default_and_rejects_out_of_range():
    hparams = {"dataset": "ESC50", "folds": [1, 2, 3, 4, 5], "fold": "all"}
    assert fold_list(hparams) == [1, 2, 3, 4, 5]
    assert fold_list(dict(hparams, fold=3)) == [3]
    with pytest.raises(ConfigError, match=r"--fold=6 is out of range for ESC50"):
        fold_list(dict(hparams, fold=6))


def test_iemocap_folds_cover_each_session_twice_with_speakers_swapped():
    fold_split = recipe_module("IEMOCAP", "train").fold_split
    splits = [fold_split(k) for k in range(1, 11)]
    assert splits[:2] == [(1, "F", "M"), (1, "M", "F")]
    assert sorted(s for s, _, _ in splits) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {(s, v) for s, v, _ in splits} == {(s, v) for s in range(1, 6) for v in "FM"}


def test_few_shot_keeps_k_per_class_balanced_and_seeded(pristine, tmp_path):
    save = tmp_path / "manifests"
    urbansound8k_prepare.prepare_urbansound8k(pristine["UrbanSound8K"], save,
                                              official_class_names("UrbanSound8K"))
    train_folds = rotating_folds(range(1, 11), 1)["train"]

    def train_set():
        return load_manifest(save / "all.csv", pristine["UrbanSound8K"],
                             key_test={"fold": lambda f: int(f) in train_folds})

    def picked(seed):
        subset = few_shot_subset(train_set(), 3, seed)
        with subset.output_keys_as(["id", "label", "fold"]):
            return [(item["id"], item["label"], int(item["fold"])) for item in subset]

    first = picked(seed=1)
    labels = [label for _, label, _ in first]
    assert {labels.count(name) for name in set(labels)} == {3} and len(set(labels)) == 10
    assert all(fold in train_folds for _, _, fold in first)  # never from valid/test folds
    assert picked(seed=1) == first
    assert picked(seed=2) != first


# ------------------------------------------------------------------------------------ audio
@pytest.mark.parametrize("rate,channels,subtype", generator_module("UrbanSound8K").FORMATS)
def test_every_release_audio_format_reads_as_16khz_mono(rate, channels, subtype, tmp_path):
    seconds, tone = 0.5, 1000.0
    t = np.arange(int(seconds * rate)) / rate
    signal = (0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
    path = tmp_path / "clip.wav"
    write_wav(path, signal, rate, subtype, channels)
    assert sf.info(str(path)).channels == channels and sf.info(str(path)).samplerate == rate

    wav = load_audio(path)
    assert wav.ndim == 1 and abs(wav.numel() - 8000) <= 1
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert np.argmax(spectrum) * 16000 / wav.numel() == pytest.approx(tone, abs=4)
    assert float(wav.abs().max()) == pytest.approx(0.5, abs=0.03)


# ==================================================================== metadata rows without a valid fold
FOLD_DATASETS = {
    # dataset: (prepare function, metadata file, file-name column, folds)
    "UrbanSound8K": (recipe_module("UrbanSound8K", "urbansound8k_prepare").prepare_urbansound8k,
                     "metadata/UrbanSound8K.csv", "slice_file_name", "1-10"),
    "ESC50": (recipe_module("ESC50", "esc50_prepare").prepare_esc50, "meta/esc50.csv", "filename", "1-5"),
}


@pytest.fixture(scope="module")
def fold_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold_datasets")
    return {name: make_dataset(name, root, per_class=1, seconds=0.1) for name in FOLD_DATASETS}


def break_folds(root, metadata, name_column, folds):
    """Gives three rows of ``metadata`` a fold outside the release's (UrbanSound8K: the slice is
    moved to that fold's folder too, so only the fold is wrong); returns ``{line: file name}``."""
    path = root / metadata
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        fields, records = reader.fieldnames, list(reader)
    bad = {}
    for index, value in zip((0, 3, 7), ("11" if folds == "1-10" else "6", "0", "two")):
        record = records[index]
        if "slice_file_name" in record:
            old = root / "audio" / f"fold{record['fold']}" / record["slice_file_name"]
            (root / "audio" / f"fold{value}").mkdir(exist_ok=True)
            shutil.move(old, root / "audio" / f"fold{value}" / record["slice_file_name"])
        record["fold"] = value
        bad[index + 2] = (record[name_column], value)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return bad, len(records)


@pytest.mark.parametrize("dataset", list(FOLD_DATASETS))
def test_a_metadata_row_without_a_valid_fold_is_named_or_skipped_never_dropped(
        dataset, fold_datasets, tmp_path):
    from petl_modules.synthetic import official_class_names
    from petl_modules.training.prepare import DataError

    prepare, metadata, name_column, folds = FOLD_DATASETS[dataset]
    root = Path(shutil.copytree(fold_datasets[dataset], tmp_path / "data" / fold_datasets[dataset].name))
    bad, total = break_folds(root, metadata, name_column, folds)
    names = official_class_names(dataset)

    with pytest.raises(DataError) as error:
        prepare(root, tmp_path / "m1", names)
    message = str(error.value)
    assert f"3 row(s) of {root / metadata}" in message and "--skip_bad_files=True" in message
    assert f"folds are {folds.replace('-', ' to ')}" in message
    for line, (file_name, value) in bad.items():
        assert any(f"line {line} ({file_name}): fold '{value}'" in row and
                   ("outside the release's folds " + folds in row or "not a whole number" in row)
                   for row in message.splitlines()), (line, file_name, message)
    assert not (tmp_path / "m1" / "all.csv").exists()

    prepare(root, tmp_path / "m2", names, skip_bad_files=True)
    skipped = (tmp_path / "m2" / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 3
    assert all(any(f"line {line} ({name})" in row for row in skipped) for line, (name, _) in bad.items())
    with open(tmp_path / "m2" / "all.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == total - 3
    assert {int(r["fold"]) for r in rows} <= set(range(1, 11 if folds == "1-10" else 6))
    # A rerun with the same options keeps the list (preparation is skipped, nothing appended).
    prepare(root, tmp_path / "m2", names, skip_bad_files=True)
    assert (tmp_path / "m2" / "skipped_files.txt").read_text().splitlines() == skipped


def test_skipped_fold_rows_are_listed_after_the_bad_files(fold_datasets, tmp_path):
    prepare, metadata, name_column, folds = FOLD_DATASETS["ESC50"]
    root = Path(shutil.copytree(fold_datasets["ESC50"], tmp_path / "data" / "ESC-50-master"))
    bad, _ = break_folds(root, metadata, name_column, folds)
    missing = sorted((root / "audio").glob("*.wav"))[-1]
    missing.unlink()
    prepare(root, tmp_path / "m", official_class_names("ESC50"), skip_bad_files=True)
    skipped = (tmp_path / "m" / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 4 and missing.name in skipped[0] and "missing file" in skipped[0]
