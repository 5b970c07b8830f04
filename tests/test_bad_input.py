"""Wrong options and broken data give clear errors that name the key or file and the fix.

The table ``BAD_COMMAND_LINES`` walks the wrong options a user can give; the next one found is one
row. Other faults have their own tables: crafted model folders in ``test_safe_loading.py``,
checkpoints in ``test_checkpoint_safety.py``, audio files in ``test_audio_faults.py``, results
files in ``test_results_robust.py``, output folders of another run in ``test_run_folder.py``.
"""

import json
import shutil

import pytest

from petl_modules.training.compose import ConfigError, compose_hparams
from petl_modules.training.prepare import DataError

from conftest import REPO, run_train
from recipe_helpers import run_in_process

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"
sys_path = str(REPO / "recipes" / "FSC")


@pytest.fixture
def prepare_fsc(monkeypatch):
    monkeypatch.syspath_prepend(sys_path)
    from fsc_prepare import prepare_fsc
    return prepare_fsc


@pytest.fixture
def broken_fsc(tmp_path, fsc_data):
    """A copy of the synthetic FSC with one missing, one empty and one non-audio wav."""
    root = tmp_path / "fluent_speech_commands_dataset"
    shutil.copytree(fsc_data, root)
    wavs = sorted((root / "wavs").rglob("*.wav"))
    wavs[0].unlink()
    wavs[1].write_bytes(b"")
    wavs[2].write_text("this is not audio")
    return root, wavs[:3]


def test_composition_layers_win_in_order_and_the_command_line_wins_last():
    text = compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML,
                           "data_folder: /x\nbatch_size: 3\n")
    assert "batch_size: 3" in text  # command line over the dataset yaml
    assert "max_frames: 400" in text  # dataset yaml
    assert "lr: 0.001" in text  # method yaml
    assert "weight_decay: 0.1" in text  # shared recipe.yaml


def test_unknown_override_key_is_an_error_that_suggests_close_keys():
    with pytest.raises(ConfigError, match=r"Unknown option --batchsize.*--batch_size"):
        compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML, {"data_folder": "/x", "batchsize": 3})


def test_unknown_method_file_lists_the_available_methods():
    with pytest.raises(ConfigError, match=r"not found.*linear.yaml"):
        compose_hparams(REPO / "hparams" / "nope.yaml", FSC_YAML, {"data_folder": "/x"})


def test_missing_data_folder_option_is_named():
    with pytest.raises(ConfigError, match="--data_folder"):
        compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML, {})


def test_missing_dataset_folder_says_which_folder_to_pass(prepare_fsc, tmp_path):
    with pytest.raises(DataError, match="fluent_speech_commands_dataset"):
        prepare_fsc(tmp_path / "nowhere", tmp_path / "manifests")


def test_every_bad_file_is_reported_at_once_with_the_fix(prepare_fsc, broken_fsc, tmp_path):
    root, bad = broken_fsc
    with pytest.raises(DataError) as err:
        prepare_fsc(root, tmp_path / "manifests")
    message = str(err.value)
    assert "3 problem(s)" in message and "--skip_bad_files=True" in message
    for path, why in zip(bad, ["missing file", "unreadable", "unreadable"]):
        assert f"{path}: {why}" in message


def test_skip_bad_files_lists_them_next_to_the_manifests(prepare_fsc, broken_fsc, tmp_path):
    root, bad = broken_fsc
    prepare_fsc(root, tmp_path / "manifests", skip_bad_files=True)
    skipped = (tmp_path / "manifests" / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 3 and all(str(p) in "\n".join(skipped) for p in bad)
    rows = sum(len((tmp_path / "manifests" / f"{s}.csv").read_text().splitlines()) - 1
               for s in ("train", "valid", "test"))
    assert rows == 31 * 3 - 3


def test_preparation_is_skipped_when_manifests_match_and_redone_when_options_change(
        prepare_fsc, broken_fsc, tmp_path):
    root, _ = broken_fsc
    folder = tmp_path / "manifests"
    prepare_fsc(root, folder, skip_bad_files=True)
    stamp = (folder / "train.csv").stat().st_mtime_ns
    prepare_fsc(root, folder, skip_bad_files=True)
    assert (folder / "train.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError):  # other options: redone, and the bad files now fail
        prepare_fsc(root, folder, skip_bad_files=False)
    assert json.loads((folder / "prepare_options.json").read_text())["skip_bad_files"] is True


@pytest.mark.slow
def test_command_line_errors_are_one_clear_line(fsc_data, tiny_ast, tmp_path):
    proc = run_train("FSC", "linear", fsc_data, tiny_ast, tmp_path / "a", "--pooling=max", check=False)
    assert proc.returncode != 0
    assert "Error in the configuration" in proc.stdout and "pooling must be one of" in proc.stdout
    proc = run_train("FSC", "linear", fsc_data, tiny_ast, tmp_path / "b", "--fold=2", check=False)
    assert proc.returncode != 0 and "official splits" in proc.stdout
    proc = run_train("FSC", "linear", tmp_path / "nowhere", tiny_ast, tmp_path / "c", check=False)
    assert proc.returncode != 0 and "Error in the data" in proc.stdout


# ==================================================================== the table of wrong options
# (case, method file, extra command-line options, what the one-line error says). Every one is
# found before any data is read: the data folder given does not even exist.
BAD_COMMAND_LINES = [
    ("batch_size_not_a_number", "linear", ["--batch_size=abc"], "--batch_size='abc' must be a whole number"),
    ("batch_size_zero", "linear", ["--batch_size=0"], "--batch_size=0 is out of range: it must be >= 1"),
    ("batch_size_negative", "linear", ["--batch_size=-4"], "--batch_size=-4 is out of range"),
    ("batch_size_fraction", "linear", ["--batch_size=2.5"], "must be a whole number"),
    ("lr_not_a_number", "linear", ["--lr=fast"], "--lr='fast' must be a number"),
    ("lr_zero", "linear", ["--lr=0"], "--lr=0 is out of range: it must be > 0"),
    ("no_epochs", "linear", ["--number_of_epochs=0"], "--number_of_epochs=0 is out of range"),
    ("negative_epochs", "linear", ["--number_of_epochs=-1"], "--number_of_epochs=-1 is out of range"),
    ("negative_workers", "linear", ["--num_workers=-1"], "--num_workers=-1 is out of range"),
    ("boolean_as_a_number", "linear", ["--batch_size=True"], "must be a whole number"),
    ("method_override", "linear", ["--method=xyz"], "--method cannot be overridden"),
    ("unknown_key", "linear", ["--batchsize=3"], "Unknown option --batchsize"),
    ("key_given_twice", "linear", ["--seed=1", "--seed=2"], "--seed is given twice"),
    ("pooling_unknown", "linear", ["--pooling=max"], "pooling must be one of"),
    ("fold_on_official_splits", "linear", ["--fold=2"], "official splits"),
    ("zero_width_bottleneck", "adapter", ["--reduction_rate=1000"], "reduction_rate"),
    ("odd_prefix_length", "prefix_tuning", ["--prompt_len=5"], "prompt_len"),
    ("unknown_lora_target", "lora", ["--lora_targets=Wx"], "lora_targets"),
    ("clip_seconds_negative", "linear", ["--clip_seconds=-1"], "--clip_seconds=-1 is out of range"),
]


@pytest.mark.parametrize("case, method, extra, message", BAD_COMMAND_LINES,
                         ids=[row[0] for row in BAD_COMMAND_LINES])
def test_wrong_option_is_one_clear_error_before_any_data_is_read(case, method, extra, message,
                                                                 tiny_ast, tmp_path):
    out = run_in_process("FSC", [
        str(REPO / "hparams" / f"{method}.yaml"), f"--data_folder={tmp_path / 'no_data_here'}",
        f"--backbone_source={tiny_ast}", f"--output_folder={tmp_path / 'out'}", "--max_frames=64",
        *extra])
    assert isinstance(out, str), f"{case}: the run did not stop"
    # the command line's own errors (a key given twice) are found while it is read
    assert out.startswith(("Error in the configuration", "Error on the command line")), out
    assert message in out, out
    assert not (tmp_path / "out" / "manifests").exists()  # stopped before preparation


def test_method_file_with_duplicate_keys_names_the_file(tiny_ast, tmp_path):
    method_file = tmp_path / "mine.yaml"
    text = (REPO / "hparams" / "linear.yaml").read_text()
    method_file.write_text(text + "\nlr: 0.5\n")
    out = run_in_process("FSC", [str(method_file), f"--data_folder={tmp_path}",
                                 f"--backbone_source={tiny_ast}", f"--output_folder={tmp_path / 'o'}"])
    assert "mine.yaml is not valid yaml: 'lr' is given twice (line" in out


# ==================================================================== faults found once data is read
def fsc_args(data, tiny_ast, out, *extra, method="linear"):
    defaults = ["--number_of_epochs=1", "--batch_size=16", "--num_workers=0", "--max_frames=64"]
    given = {e.split("=", 1)[0] for e in extra}
    return [str(REPO / "hparams" / f"{method}.yaml"), f"--data_folder={data}",
            f"--backbone_source={tiny_ast}", f"--output_folder={out}",
            *[d for d in defaults if d.split("=", 1)[0] not in given], *extra]


@pytest.mark.slow
def test_test_row_with_a_label_of_no_training_example_is_named(fsc_data, tiny_ast, tmp_path):
    root = tmp_path / "fluent_speech_commands_dataset"
    shutil.copytree(fsc_data, root)
    csv = root / "data" / "test_data.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace("activate,lights,kitchen", "activate,lights,garage")
    csv.write_text("\n".join(lines) + "\n")
    out = run_in_process("FSC", fsc_args(root, tiny_ast, tmp_path / "out"))
    assert isinstance(out, str) and out.startswith("Error in the data"), out
    assert "label 'activate,lights,garage'" in out and "test:" in out


@pytest.mark.slow
def test_full_disk_is_a_clear_error_that_says_a_rerun_resumes(fsc_data, tiny_ast, tmp_path,
                                                              monkeypatch):
    import errno

    import petl_modules.model.folder

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(petl_modules.model.folder, "save_file", full)
    out = run_in_process("FSC", fsc_args(fsc_data, tiny_ast, tmp_path / "out"))
    assert isinstance(out, str) and out.startswith("Error: no space left on the disk"), out
    assert "rerun the same command" in out


@pytest.mark.slow
def test_non_finite_audio_stops_the_run_naming_the_file_before_any_update(fsc_data, tiny_ast,
                                                                          tmp_path):
    import numpy as np
    import soundfile as sf

    root = tmp_path / "fluent_speech_commands_dataset"
    shutil.copytree(fsc_data, root)
    bad = sorted((root / "wavs").rglob("train-*.wav"))[0]
    data, rate = sf.read(str(bad), dtype="float32")
    data[100] = np.nan
    sf.write(str(bad), data, rate, subtype="FLOAT")
    out = run_in_process("FSC", fsc_args(root, tiny_ast, tmp_path / "out", "--num_workers=1"))
    assert isinstance(out, str) and out.startswith("Error in the data"), out
    assert str(bad) in out and "non-finite" in out and "Traceback" not in out
    assert not list((tmp_path / "out" / "save").glob("CKPT+*"))  # no weight update was saved


@pytest.mark.slow
def test_clip_shorter_than_one_window_is_padded_with_a_warning(fsc_data, tiny_ast, tmp_path):
    import soundfile as sf

    root = tmp_path / "fluent_speech_commands_dataset"
    shutil.copytree(fsc_data, root)
    short = sorted((root / "wavs").rglob("train-*.wav"))[0]
    data, rate = sf.read(str(short), dtype="float32")
    sf.write(str(short), data[:160], rate)  # 10 ms
    results = run_in_process("FSC", fsc_args(root, tiny_ast, tmp_path / "out"))
    assert isinstance(results, dict), results
    log = (tmp_path / "out" / "log.txt").read_text()
    assert any(str(short) in line and "padded" in line for line in log.splitlines()), log[-3000:]


def _wavs(folder, count):
    import numpy as np
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        soundfile.write(folder / f"{index}.wav", np.full(1600, 0.1 * (index + 1), dtype="float32"), 16000)
    return folder


@pytest.mark.parametrize("label", ["", "  ", "two\nlines", "carriage\rreturn", "nul\x00byte"],
                         ids=["empty", "blank", "newline", "cr", "nul"])
def test_a_label_no_format_carries_is_refused_at_preparation_naming_the_row(label, tmp_path):
    from petl_modules.training.prepare import write_manifests

    data = _wavs(tmp_path / "data", 2)
    rows = [{"ID": "a", "wav": "0.wav", "label": "ok"}, {"ID": "b", "wav": "1.wav", "label": label}]
    with pytest.raises(DataError) as err:
        write_manifests(tmp_path / "manifests", {"train": rows}, data, {})
    message = str(err.value)
    assert f"{data / '1.wav'}: " in message and "ID b" in message and repr(label) in message
    assert "0.wav" not in message


def test_duplicate_manifest_rows_are_an_error_naming_both_rows(tmp_path):
    from petl_modules.training.prepare import write_manifests

    data = _wavs(tmp_path / "data", 3)
    rows = [{"ID": "x", "wav": "0.wav", "label": "a"}, {"ID": "y", "wav": "1.wav", "label": "b"},
            {"ID": "x", "wav": "2.wav", "label": "b"}]
    with pytest.raises(DataError, match=r"1 problem\(s\)") as err:
        write_manifests(tmp_path / "manifests", {"train": rows}, data, {})
    assert (f"{data / '2.wav'}: duplicate ID 'x' (row 3; row 1, {data / '0.wav'}, has it too)"
            in str(err.value))


def test_duplicate_manifest_rows_are_dropped_and_listed_with_skip_bad_files(tmp_path):
    from petl_modules.training.prepare import SKIPPED_FILE, write_manifests

    data = _wavs(tmp_path / "data", 3)
    rows = [{"ID": "x", "wav": "0.wav", "label": "a"}, {"ID": "y", "wav": "1.wav", "label": "b"},
            {"ID": "x", "wav": "2.wav", "label": "b"}]
    counts = write_manifests(tmp_path / "manifests", {"train": rows}, data, {}, skip_bad_files=True)
    assert counts == {"train": 2}
    listed = (tmp_path / "manifests" / SKIPPED_FILE).read_text()
    assert "2.wav: duplicate ID 'x'" in listed and "0.wav, has it too" in listed
    manifest = (tmp_path / "manifests" / "train.csv").read_text()
    assert "2.wav" not in manifest and "0.wav" in manifest


# Any text a dataset uses is a class name: markup-like tokens, operators, unicode, spaces, text a
# spreadsheet would run (neutralised in CSV outputs, test_output.py).
ODD_LABELS = ["<unk>", "<sil>", "C++", "%", "!x", "café ü 音", "two words", "=1+1"]


@pytest.mark.slow
def test_odd_class_names_train_save_load_classify_and_export(tiny_ast, tmp_path, capsys):
    import csv

    import soundfile

    from petl_modules import classify, export
    from petl_modules.synthetic import class_signal

    data = tmp_path / "odd"
    data.mkdir()
    rows = []
    for index, label in enumerate(ODD_LABELS):
        for k in range(5):
            name = f"c{index}_{k}.wav"
            soundfile.write(data / name, class_signal(index, len(ODD_LABELS), 1.0), 16000)
            rows.append((name, label))
    with open(data / "metadata.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("file_name", "label"), *rows])
    out = tmp_path / "run"
    results = run_in_process("AudioFolder", [
        str(REPO / "hparams" / "linear.yaml"), f"--data_folder={data}", f"--backbone_source={tiny_ast}",
        f"--output_folder={out}", "--number_of_epochs=1", "--batch_size=8", "--num_workers=0",
        "--max_frames=64"])
    assert isinstance(results, dict), results
    assert sorted(results["folds"][0]["class_names"]) == sorted(ODD_LABELS)
    model = out / "petl_model"
    assert sorted(classify.PETLClassifier.from_folder(model).labels) == sorted(ODD_LABELS)
    capsys.readouterr()
    assert classify.main([str(model), str(data / "c0_0.wav"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("[\n"):])[0]["label"] in ODD_LABELS
    assert export.main([str(model), str(tmp_path / "exported")]) == 0
    side = json.loads((tmp_path / "exported" / "classifier_head.json").read_text())
    assert sorted(side["class_names"]) == sorted(ODD_LABELS)


# ==================================================================== outputs others open
FORMULAS = ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "\tx", "\rx", "'q"]
KEPT = ["-1", "+5", "1.5e-3", "plain", "a=b"]


def test_classify_text_output_escapes_control_characters_in_labels(tmp_path, capsys):
    import soundfile
    import transformers

    from petl_modules import classify
    from petl_modules.training.compose import load_hparams
    from petl_modules.training.pretrained import save_petl_model
    from petl_modules.tiny import tiny_ast_config

    transformers.ASTModel(tiny_ast_config(hidden_size=32, num_hidden_layers=1)).save_pretrained(
        tmp_path / "base")
    text = compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML, {
        "data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
        "backbone_source": str(tmp_path / "base"), "max_frames": 64})
    names = [f"c{i}\tforged\t0.99\nx.wav\tc{i}\x00\x1b[31m" for i in range(31)]
    save_petl_model(tmp_path / "petl_model", load_hparams(text), names)
    wav = tmp_path / "a\tb.wav"
    soundfile.write(wav, [0.1, -0.1] * 8000, 16000)
    assert classify.main([str(tmp_path / "petl_model"), str(wav), "--top_k=2"]) == 0
    out = capsys.readouterr().out
    (line,) = out.splitlines()
    fields = line.split("\t")
    assert len(fields) == 3 and fields[0] == str(wav).replace("\t", "\\t")
    escaped = {n.replace("\t", "\\t").replace("\n", "\\n").replace("\x00", "\\x00")
               .replace("\x1b", "\\x1b") for n in names}
    assert fields[1] in escaped and fields[2].split("  ")[1].rsplit(" ", 1)[0] in escaped
    assert "\x00" not in out and "\x1b" not in out


def test_confusion_matrix_csv_neutralises_formula_cells(tmp_path):
    import csv

    from petl_modules.files import csv_value
    from petl_modules.training.metrics import write_confusion_matrix

    names = FORMULAS + KEPT
    size = len(names)
    csv_path, _ = write_confusion_matrix(tmp_path, [[1] * size] * size, names)
    with open(csv_path, newline="") as stream:
        rows = list(csv.reader(stream))
    header, column = rows[0][1:], [r[0] for r in rows[1:]]
    for cells in (header, column):
        assert cells[:len(FORMULAS)] == ["'" + n for n in FORMULAS] and cells[len(FORMULAS):] == KEPT
        assert [csv_value(c) for c in cells] == names


def test_window_results_csv_neutralises_formula_cells(tmp_path):
    import csv

    import torch

    from petl_modules.training.windows import WindowScores

    names = ["=1+1", "-1", "@x"]
    scores = WindowScores()
    scores.add(["=utt", "-id"], [0, 0], [16000, 16000], torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]),
               torch.tensor([0, 2]))
    scores.write_csv(tmp_path / "w.csv", names)
    with open(tmp_path / "w.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0][7:] == ["'=1+1", "-1", "'@x"]
    assert [r[0] for r in rows[1:]] == ["'=utt", "'-id"]
    assert [(r[4], r[5]) for r in rows[1:]] == [("'=1+1", "'=1+1"), ("'@x", "'@x")]


def test_results_csv_neutralises_formula_cells_and_reads_back_unchanged(tmp_path):
    from petl_modules import results

    rows = [{field: "" for field in results.CSV_FIELDS} for _ in FORMULAS + KEPT]
    for row, text in zip(rows, FORMULAS + KEPT):
        row.update(method=text, dataset=text, test_mean="0.5", runs="3")
    results.write_csv(rows, tmp_path / "results.csv")
    raw = (tmp_path / "results.csv").read_text()
    assert "\n=HYPERLINK" not in raw and ",=HYPERLINK" not in raw and ",@SUM" not in raw
    assert results.read_csv(tmp_path / "results.csv") == rows


def test_a_manifest_is_read_once_for_every_split_and_fold(tmp_path, monkeypatch):
    from petl_modules.training import manifests, recipe

    manifest = tmp_path / "all.csv"
    rows = [f"u{k},1.0,$data_root/{k}.wav,c{k % 2},{k % 3 + 1}" for k in range(12)]
    manifest.write_text("ID,duration,wav,label,fold\n" + "\n".join(rows) + "\n")
    reads = []
    real = manifests.load_data_csv
    monkeypatch.setattr(manifests, "load_data_csv", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    recipe.manifest_rows.cache_clear()
    for fold in (1, 2, 3):
        datasets = recipe.rotating_fold_datasets(manifest, tmp_path, [1, 2, 3], fold)
        assert sorted(len(d) for d in datasets.values()) == [4, 4, 4]
    assert reads == [str(manifest.resolve())]
    manifest.write_text("ID,duration,wav,label,fold\n" + "\n".join(rows[:6]) + "\n")  # written again
    assert len(recipe.load_manifest(manifest, tmp_path)) == 6 and len(reads) == 2


def test_per_class_scores_csv_neutralises_formula_cells(tmp_path):
    import csv

    import numpy as np

    from petl_modules.training.metrics import write_per_class_scores

    names = FORMULAS + KEPT
    count = len(names)
    scores = {key: np.full(count, 0.5) for key in ("ap", "auc", "f1")}
    scores["positives"] = np.ones(count)
    write_per_class_scores(tmp_path / "per_class.csv", scores, names, [0.5] * count)
    with open(tmp_path / "per_class.csv", newline="") as stream:
        column = [row[1] for row in list(csv.reader(stream))[1:]]
    assert column == ["'" + n for n in FORMULAS] + KEPT


def test_an_audiofolder_manifest_is_read_once_per_start(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "recipes" / "AudioFolder"))
    import audiofolder_prepare

    data = _wavs(tmp_path / "data", 12)
    lines = [f"{k}.wav,c{k % 2}" for k in range(12)]
    (data / "metadata.csv").write_text("file_name,label\n" + "\n".join(lines) + "\n")
    reads = []
    real = audiofolder_prepare._manifest_records
    monkeypatch.setattr(audiofolder_prepare, "_manifest_records",
                        lambda path: reads.append(path) or real(path))
    options = {"data_folder": str(data), "split_seed": 0, "valid_fraction": 0.25, "test_fraction": 0.25}
    found = audiofolder_prepare.options_from_data(options)  # the recipe's load_run, then prepare
    audiofolder_prepare.prepare_audiofolder({**options, **found}, tmp_path / "manifests")
    assert found["class_names"] == ["c0", "c1"] and len(reads) == 1
    written = (tmp_path / "manifests" / "all.csv").read_text()
    assert written.count("\n") == 13 and "valid" in written and "test" in written
    (data / "metadata.csv").write_text("file_name,label\n" + "\n".join(lines[:8]) + "\n")  # edited
    assert audiofolder_prepare.options_from_data(options)["n_classes"] == 2 and len(reads) == 2


def test_cls_distill_pooling_on_a_backbone_without_a_distillation_token_is_refused_early(
        tiny_wav2vec2, tmp_path):
    out = run_in_process("FSC", [
        str(REPO / "hparams" / "linear.yaml"), f"--data_folder={tmp_path / 'no_data_here'}",
        f"--backbone_source={tiny_wav2vec2}", f"--output_folder={tmp_path / 'out'}",
        "--pooling=cls_distill"])
    assert isinstance(out, str) and out.startswith("Error in the configuration"), out
    assert len(out.strip().splitlines()) == 1, out
    assert "pooling 'cls_distill'" in out and "wav2vec2 backbone" in out, out
    assert not (tmp_path / "out" / "manifests").exists()  # stopped before preparation
