"""recipes/AudioFolder (your own data): layouts, splits, folds, classes, bad data, multi-label
scores, and end to end runs (slow) with classify and the results tool.

The table ``BAD_DATA`` walks every kind of bad input the recipe names: each case is an error
naming the file, row or class, and with ``--skip_bad_files=True`` a listed exclusion.
"""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from petl_modules import results as results_cli
from petl_modules.synthetic import class_signal, make_dataset
from petl_modules.training.prepare import SKIPPED_FILE, DataError

from conftest import REPO
from recipe_helpers import run_in_process

RECIPE = REPO / "recipes" / "AudioFolder"


@pytest.fixture
def prepare_module(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPE))
    import audiofolder_prepare

    return audiofolder_prepare


def wav(path, seconds=0.2, index=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), class_signal(index, 4, seconds), 16000)
    return path


def class_folders(root, counts, split=None, seconds=0.1):
    """``root[/split]/<class>/<class>_<k>.wav`` with ``counts[class]`` files each."""
    base = root / split if split else root
    for index, (name, count) in enumerate(counts.items()):
        for k in range(count):
            wav(base / name / f"{name}_{k}.wav", seconds, index)
    return root


def manifest(root, rows, header=("file_name", "label"), name="metadata.csv", seconds=0.2):
    """A CSV manifest; the audio files its rows name are written (``seconds`` long) unless the
    row's file starts with ``missing``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    for row in rows:
        file_name = str(row[0])
        if file_name and not file_name.startswith(("missing", "..", "/")):
            wav(root / file_name, seconds)
    return root


def options(root, **extra):
    return {"data_folder": str(root), "split_seed": 0, "valid_fraction": 0.2, "test_fraction": 0.2,
            **extra}


def written(save):
    with open(save / "all.csv", newline="") as stream:
        return list(csv.DictReader(stream))


# ==================================================================== layouts
def test_folder_per_class_with_split_folders_keeps_the_given_splits(prepare_module, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "validation", "test"):
        class_folders(root, {"dog": 2, "cat": 2}, split)
    found = prepare_module.dataset_rows(options(root))
    assert found["layout"].kind == "folders" and found["class_names"] == ["cat", "dog"]
    splits = {row["wav"]: row["split"] for row in found["rows"]}
    assert splits["validation/dog/dog_0.wav"] == "valid" and splits["test/cat/cat_1.wav"] == "test"


@pytest.mark.parametrize("name", ["metadata.csv", "metadata.jsonl", "given"])
def test_a_manifest_is_detected_or_named_with_labels_column_and_groups(prepare_module, tmp_path,
                                                                      name):
    root = tmp_path / "data"
    rows = [(f"a/{k}.wav", "x;y" if k % 2 else "x", f"g{k // 2}") for k in range(8)]
    rows += [(f"b/{k}.wav", "y", f"h{k}") for k in range(4)]
    if name == "metadata.jsonl":
        root.mkdir()
        with open(root / name, "w") as stream:
            for file_name, labels, group in rows:
                stream.write(json.dumps({"path": file_name, "labels": labels.split(";"),
                                         "group": group}) + "\n")
                wav(root / file_name)
        extra = {}
    else:
        manifest(root, rows, ("file", "labels", "group"),
                 name="tags.csv" if name == "given" else name)
        extra = {"manifest": str(root / "tags.csv")} if name == "given" else {}
    found = prepare_module.dataset_rows(options(root, task="multilabel", **extra))
    assert found["layout"].kind == "manifest" and found["class_names"] == ["x", "y"]
    by_group = {}
    for row in found["rows"]:
        by_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_group.values()), by_group


def test_several_labels_need_task_multilabel(prepare_module, tmp_path):
    root = manifest(tmp_path / "data", [("a.wav", "x;y"), ("b.wav", "x")])
    with pytest.raises(DataError, match="--task=multilabel"):
        prepare_module.dataset_rows(options(root))


def test_class_names_option_fixes_the_order_and_keeps_a_subset(prepare_module, tmp_path):
    root = class_folders(tmp_path / "data", {"a": 5, "b": 5, "c": 5})
    found = prepare_module.dataset_rows(options(root, class_names="c,a"))
    assert found["class_names"] == ["c", "a"]
    assert {row["label"] for row in found["rows"]} == {"a", "c"}


# ==================================================================== splits and folds
def test_seeded_split_is_stratified_group_aware_and_repeatable(prepare_module, tmp_path):
    rows = [(f"{c}/{k}.wav", c, f"{c}{k // 2}") for c in ("a", "b") for k in range(20)]
    root = manifest(tmp_path / "data", rows, ("file_name", "label", "group"), seconds=0.05)
    first = prepare_module.dataset_rows(options(root))["rows"]
    again = prepare_module.dataset_rows(options(root))["rows"]
    assert [r["split"] for r in first] == [r["split"] for r in again]
    other = prepare_module.dataset_rows(options(root, split_seed=1))["rows"]
    assert [r["split"] for r in first] != [r["split"] for r in other]
    for split in ("train", "valid", "test"):
        per_class = {c: sum(r["split"] == split and r["label"] == c for r in first) for c in "ab"}
        assert per_class["a"] == per_class["b"] > 0, (split, per_class)
    groups = {}
    for row in first:
        groups.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in groups.values())
    assert sum(r["split"] == "test" for r in first) == 8  # 0.2 of 40


def test_num_folds_and_a_fold_column_give_rotating_folds(prepare_module, tmp_path):
    rows = [(f"{c}/{k}.wav", c, f"{c}{k // 2}") for c in ("a", "b", "c") for k in range(12)]
    root = manifest(tmp_path / "data", rows, ("file_name", "label", "group"), seconds=0.05)
    found = prepare_module.dataset_rows(options(root, num_folds=3))
    assert found["folds"] == [1, 2, 3]
    assert {r["fold"] for r in found["rows"]} == {1, 2, 3}
    groups = {}
    for row in found["rows"]:
        groups.setdefault(row["group"], set()).add(row["fold"])
    assert all(len(f) == 1 for f in groups.values())
    assert prepare_module.options_from_data(options(root, num_folds=3)) == {
        "class_names": ["a", "b", "c"], "n_classes": 3, "folds": [1, 2, 3]}
    folded = manifest(tmp_path / "folded", [(f"{k}.wav", "ab"[k % 2], 1 + k % 4) for k in range(16)],
                      ("file_name", "label", "fold"), seconds=0.05)
    assert prepare_module.dataset_rows(options(folded))["folds"] == [1, 2, 3, 4]


def test_per_class_table_and_imbalance_warning(prepare_module, tmp_path, caplog):
    root = class_folders(tmp_path / "data", {"big": 40, "small": 3}, seconds=0.05)
    with caplog.at_level(logging.INFO):
        prepare_module.prepare_audiofolder(options(root), tmp_path / "manifests")
    table = next(r.message for r in caplog.records if "Examples per class" in r.message)
    assert "train" in table and "big" in table and "small" in table
    assert any("Strong class imbalance" in r.message and "--class_weights=balanced" in r.message
               for r in caplog.records)


def test_preparation_reads_each_file_once_in_parallel_and_headers_only(prepare_module, tmp_path,
                                                                        monkeypatch):
    import petl_modules.training.prepare as prepare

    calls = []
    real = prepare._check
    monkeypatch.setattr(prepare, "_check", lambda path, samples=True: calls.append(
        (path, samples)) or real(path, samples))
    rows = [("long.wav", "a", 0, 0.5), ("long.wav", "a", 0.5, 1.0)]
    rows += [(f"x{k}.wav", "ab"[k % 2], "", "") for k in range(10)]
    root = manifest(tmp_path / "data", rows, ("file_name", "label", "start", "end"), seconds=1.0)
    prepare_module.prepare_audiofolder(options(root), tmp_path / "manifests")
    assert sorted(str(p) for p, _ in calls) == sorted({str(root / r[0]) for r in rows})
    assert not any(samples for _, samples in calls)
    segments = [r for r in written(tmp_path / "manifests") if r["wav"].endswith("long.wav")]
    assert sorted(float(r["duration"]) for r in segments) == [0.5, 0.5]


# ==================================================================== the table of bad data
def empty_class_folder(root):
    class_folders(root, {"a": 3, "b": 3})
    (root / "c").mkdir()
    return {}, "c: empty class folder", None


def class_only_in_test(root):
    class_folders(root, {"a": 2, "b": 2}, "train")
    class_folders(root, {"a": 1, "b": 1}, "valid")
    class_folders(root, {"a": 1, "z": 1}, "test")
    return {}, "class 'z' is in the test split but has no training example", "test/z/z_0.wav"


def row_outside_its_root(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2]) for k in range(6)] + [("../secret.wav", "a")])
    return {}, "points outside the manifest's folder", "../secret.wav"


def row_of_a_missing_file(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2]) for k in range(6)] + [("missing.wav", "a")])
    return {}, "missing.wav: missing file", "missing.wav"


def file_in_two_splits(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2], s) for k in range(4) for s in ["train"]]
             + [("0.wav", "a", "test"), ("t.wav", "a", "test"), ("u.wav", "b", "test")],
             ("file_name", "label", "split"))
    return {}, "the file '0.wav' is in the train and the test split", "0.wav,a,test"


def group_across_given_splits(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2], "train", f"g{k}") for k in range(4)]
             + [("t.wav", "a", "test", "g0"), ("u.wav", "b", "test", "h")],
             ("file_name", "label", "split", "group"))
    return {}, "group 'g0' is in the train and the test split", "t.wav"


def class_with_fewer_examples_than_folds(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2]) for k in range(12)] + [("rare.wav", "r")])
    return {"num_folds": 3}, "class 'r' has 1 example(s), fewer than the 3 folds", "rare.wav"


def segment_past_the_end(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2], "", "") for k in range(6)] + [("0.wav", "a", 5, 7)],
             ("file_name", "label", "start", "end"), seconds=1.0)
    return {}, "segment 5-7 s is past the end of the file", "0@5-7"


def empty_labels_cell(root):
    manifest(root, [(f"{k}.wav", "ab"[k % 2]) for k in range(6)] + [("e.wav", "")],
             ("file_name", "labels"))
    return {"task": "multilabel"}, "empty labels cell", "e.wav"


# (case, writes the data and returns (options, what the message says, what all.csv lacks then))
BAD_DATA = [empty_class_folder, class_only_in_test, row_outside_its_root, row_of_a_missing_file,
            file_in_two_splits, group_across_given_splits, class_with_fewer_examples_than_folds,
            segment_past_the_end, empty_labels_cell]


@pytest.mark.parametrize("make", BAD_DATA, ids=[f.__name__ for f in BAD_DATA])
def test_bad_data_is_named_with_the_fix_or_a_listed_exclusion(make, prepare_module, tmp_path):
    root = tmp_path / "data"
    extra, message, left_out = make(root)
    with pytest.raises(DataError) as err:
        prepare_module.prepare_audiofolder(options(root, **extra), tmp_path / "strict")
    assert message in str(err.value) and "--skip_bad_files=True" in str(err.value)
    save = tmp_path / "skipping"
    prepare_module.prepare_audiofolder(options(root, skip_bad_files=True, **extra), save)
    assert message in (save / SKIPPED_FILE).read_text()
    if left_out:
        text = (save / "all.csv").read_text()
        assert left_out not in text, text


def bad_files(root):
    """An unreadable file and one of zero samples among good ones."""
    (root / "a" / "a_0.wav").write_bytes(b"not audio")
    sf.write(str(root / "b" / "b_0.wav"), np.zeros(0, dtype=np.float32), 16000)
    return ["a_0.wav: unreadable as audio", "b_0.wav: empty (zero samples)"]


def test_bad_layout_and_bad_files_are_reported_in_one_pass(prepare_module, tmp_path):
    root = class_folders(tmp_path / "folders", {"a": 3, "b": 3})
    (root / "c").mkdir()
    files = bad_files(root)
    with pytest.raises(DataError) as err:
        prepare_module.dataset_rows(options(root))  # what the recipe reads before the model
    text = str(err.value)
    assert text.startswith("3 problem(s)") and "c: empty class folder" in text
    assert all(problem in text for problem in files), text
    listed = manifest(tmp_path / "listed", [(f"{k}.wav", "ab"[k % 2]) for k in range(6)]
                      + [("e.wav", ""), ("missing.wav", "a")])
    with pytest.raises(DataError) as err:
        prepare_module.dataset_rows(options(listed))
    text = str(err.value)
    assert text.startswith("2 problem(s)") and "empty label cell" in text
    assert "missing.wav: missing file" in text


def test_errors_about_own_data_speak_of_the_users_data_not_a_release(prepare_module, tmp_path):
    root = class_folders(tmp_path / "data", {"a": 3, "b": 3})
    bad_files(root)
    with pytest.raises(DataError) as err:
        prepare_module.prepare_audiofolder(options(root), tmp_path / "save")
    text = str(err.value)
    assert "release" not in text and "Fix or replace these files in your data" in text


@pytest.mark.parametrize("recipe, yaml_name, data_folder, expected", [
    ("AudioFolder", "audiofolder.yaml", "/data/bird_calls/", "bird_calls"),  # own data: its folder
    ("FSC", "fsc.yaml", "/data/fluent_speech_commands_dataset", "FSC"),  # a release: the dataset
])
def test_dataset_name_defaults_to_the_folder_of_own_data_and_to_the_dataset_of_a_release(
        recipe, yaml_name, data_folder, expected, tiny_ast):
    from petl_modules.training.compose import compose_hparams, load_hparams, scalar_hparams
    from petl_modules.training.recipe import dataset_name

    options = scalar_hparams(load_hparams(compose_hparams(
        REPO / "hparams" / "linear.yaml", REPO / "recipes" / recipe / yaml_name,
        {"data_folder": data_folder, "backbone_source": str(tiny_ast), "max_frames": 64})))
    assert dataset_name(options) == expected and options["dataset"] == recipe
    assert dataset_name({**options, "dataset_name": "chosen"}) == "chosen"  # --dataset_name=chosen


# (option, value, what the error says): found when the options are composed, before any data.
BAD_OPTIONS = [
    ("task", "regression", "--task='regression' is not one of single_label|multilabel"),
    ("class_weights", "inverse", "--class_weights='inverse' is not one of null|balanced"),
    ("num_folds", -1, "--num_folds=-1 is out of range"),
    ("valid_fraction", 0, "--valid_fraction=0 is out of range: it must be > 0"),
    ("split_seed", "abc", "--split_seed='abc' must be a whole number"),
]


@pytest.mark.parametrize("key, value, message", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_wrong_options_are_named_before_any_data_is_read(key, value, message):
    from petl_modules.training.compose import ConfigError, compose_hparams

    with pytest.raises(ConfigError) as err:
        compose_hparams(REPO / "hparams" / "linear.yaml", RECIPE / "audiofolder.yaml",
                        {"data_folder": "/nowhere", key: value})
    assert message in str(err.value)


def test_fractions_that_leave_nothing_to_train_are_refused(prepare_module, tmp_path):
    root = class_folders(tmp_path / "data", {"a": 3, "b": 3})
    with pytest.raises(DataError, match="their sum must be below 1"):
        prepare_module.dataset_rows(options(root, valid_fraction=0.5, test_fraction=0.5))


def test_results_tool_reads_a_multilabel_run_by_its_map(tmp_path):
    run = {"dataset": "AudioFolder", "method": "lora", "backbone": "ast", "total_params": 100,
           "trainable_params": 10, "folds": [{"fold": None, "valid_map": 0.6, "test_map": 0.55,
                                              "test_f1_micro": 0.5, "test_f1_macro": 0.4}]}
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "results.json").write_text(json.dumps(run))
    runs, skipped = results_cli.collect([tmp_path])
    assert not skipped and runs[0]["metric"] == "mAP" and runs[0]["test_scores"] == [0.55]
    (row,) = results_cli.summarise(runs)
    assert row["test_mean"] == 0.55 and row["test_accuracy_mean"] is None
    assert "55.00 ± 0.00 mAP" in results_cli.markdown_report([row], [])
    results_cli.plot([row], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


# ==================================================================== end to end (slow)
SMALL = ["--number_of_epochs=2", "--batch_size=4", "--num_workers=0", "--max_frames=50",
         "--time_mask=20"]


def recipe_argv(method, data, backbone, output, *extra):
    """The command line of a short run (``extra`` replaces SMALL's options of the same keys; a
    bottleneck the tiny AST can hold for the methods that have one)."""
    given = {e.split("=", 1)[0] for e in extra}
    small = [a for a in SMALL if a.split("=", 1)[0] not in given]
    if method != "linear":
        small.append("--reduction_rate=8")
    return [str(REPO / "hparams" / f"{method}.yaml"), f"--data_folder={data}",
            f"--backbone_source={backbone}", f"--output_folder={output}", *small, *extra]


@pytest.mark.slow
def test_single_label_folder_to_model_and_classify(tiny_ast, tmp_path, capsys):
    from petl_modules import classify

    data = make_dataset("AudioFolder", tmp_path, per_class=2, seconds=1.0)
    results = run_in_process("AudioFolder", recipe_argv("adapter", data, tiny_ast, tmp_path / "run"))
    assert isinstance(results, dict), results
    assert results["dataset"] == "AudioFolder" and results["dataset_name"] == data.name
    (fold,) = results["folds"]
    assert {"valid_accuracy", "test_accuracy", "test_f1_macro"} <= set(fold)
    assert fold["class_names"] == ["bird", "engine", "rain", "siren"]
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "label_encoder.txt"):
        assert (tmp_path / "run" / name).is_file()
    config = json.loads((tmp_path / "run" / "petl_model" / "petl_config.json").read_text())
    assert config["task"] == {"kind": "single_label", "thresholds": None}
    assert config["evaluation"]["eval_windows"] == "sliding"
    assert config["evaluation"]["window_pooling"] == "mean"
    assert classify.main([str(tmp_path / "run" / "petl_model"),
                          str(data / "test" / "rain" / "rain_0.wav")]) == 0
    assert "rain_0.wav\t" in capsys.readouterr().out
    # classify follows the run's evaluation (sliding windows, mean): the recipe's test accuracy.
    model = classify.PETLClassifier.from_folder(tmp_path / "run" / "petl_model")
    files = sorted((data / "test").rglob("*.wav"))
    found, errors = model.classify_files(files)
    assert not errors
    hits = [row["label"] == Path(row["file"]).parent.name for row in found]
    assert sum(hits) / len(hits) == pytest.approx(fold["test_accuracy"])


@pytest.mark.slow
def test_multilabel_run_reports_map_and_f1_and_classify_lists_labels(tiny_ast, tmp_path, capsys):
    from petl_modules import classify

    data = make_dataset("AudioFolder", tmp_path, per_class=2, seconds=1.0, task="multilabel")
    results = run_in_process("AudioFolder", recipe_argv(
        "lora", data, tiny_ast, tmp_path / "run", "--task=multilabel", "--class_weights=balanced"))
    assert isinstance(results, dict), results
    (fold,) = results["folds"]
    assert {"valid_map", "test_map", "test_f1_micro", "test_f1_macro"} <= set(fold)
    assert "test_accuracy" not in fold and "test_accuracy" not in results
    assert {"test_map", "test_map_mean", "test_f1_micro", "test_f1_macro"} <= set(results)
    config = json.loads((tmp_path / "run" / "petl_model" / "petl_config.json").read_text())
    assert config["task"]["kind"] == "multilabel" and len(config["task"]["thresholds"]) == 4
    assert config["evaluation"]["window_pooling"] == "max"
    capsys.readouterr()  # the run's own output; classify's --json output alone is read below
    assert classify.main([str(tmp_path / "run" / "petl_model"), "--json",
                          str(data / "audio" / "test_bird_1.wav")]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    probabilities = {t["label"]: t["score"] for t in row["top_k"]}
    assert isinstance(row["labels"], list) and set(row["labels"]) <= {"bird", "engine", "rain", "siren"}
    runs, skipped = results_cli.collect([tmp_path / "run"])
    assert not skipped and runs[0]["metric"] == "mAP" and probabilities


@pytest.mark.slow
def test_num_folds_runs_every_fold_and_aggregates_like_the_fold_recipes(tiny_ast, tmp_path):
    data = class_folders(tmp_path / "data", {"a": 3, "b": 3}, seconds=0.6)
    results = run_in_process("AudioFolder", recipe_argv(
        "linear", data, tiny_ast, tmp_path / "run", "--num_folds=3", "--number_of_epochs=1"))
    assert isinstance(results, dict), results
    assert [f["fold"] for f in results["folds"]] == [1, 2, 3] and results["requested_folds"] == [1, 2, 3]
    accuracies = [f["test_accuracy"] for f in results["folds"]]
    assert results["test_accuracy_mean"] == pytest.approx(sum(accuracies) / 3)
    assert (tmp_path / "run" / "fold_2" / "petl_model" / "petl_config.json").is_file()


@pytest.mark.slow
def test_bad_data_stops_the_recipe_with_one_line_before_the_model_is_built(tiny_ast, tmp_path):
    root = tmp_path / "data"
    class_folders(root, {"a": 3, "b": 3})
    (root / "c").mkdir()
    message = run_in_process("AudioFolder", recipe_argv("linear", root, tiny_ast, tmp_path / "run"))
    assert isinstance(message, str) and message.startswith("Error in the data")
    assert "empty class folder" in message and not (tmp_path / "run").exists()


class Identity:
    """An input processor that hands the waveform through (``clip`` samples per clip)."""

    sample_rate, min_samples = 16000, 0

    def __init__(self, clip=None):
        self.samples_needed = clip

    def __call__(self, wav):
        return wav


def test_segments_are_read_cropped_and_windowed_within_their_bounds(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.dataio.encoder import CategoricalEncoder

    from petl_modules.model.audio import load_audio
    from petl_modules.training.recipe import add_pipelines, segment_span
    from petl_modules.training.windows import EvalProtocol, TrainCrop, window_dataset

    path = wav(tmp_path / "long.wav", seconds=3.0)
    full = load_audio(path)
    rows = {"seg": {"wav": str(path), "label": "a", "seg_start": "1.0", "seg_end": "2.5",
                    "duration": "1.500"},
            "whole": {"wav": str(path), "label": "a", "seg_start": "", "seg_end": "",
                      "duration": "3.000"}}
    assert segment_span(rows["seg"]) == (16000, 40000) and segment_span(rows["whole"]) is None
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(["a"])
    datasets = {"test": DynamicItemDataset(rows), "train": DynamicItemDataset(rows)}
    add_pipelines(datasets, Identity(8000), encoder, train_crop=TrainCrop(0, 8000))
    with datasets["test"].output_keys_as(["id", "inputs"]):
        read = {item["id"]: item["inputs"] for item in datasets["test"]}
    assert torch_equal(read["seg"], full[16000:24000]) and torch_equal(read["whole"], full[:8000])
    with datasets["train"].output_keys_as(["id", "inputs"]):
        crop = next(item["inputs"] for item in datasets["train"] if item["id"] == "seg")
    offset = next(k for k in range(16000, 32001) if torch_equal(full[k:k + 8000], crop))
    assert 16000 <= offset <= 40000 - 8000
    windows = window_dataset(DynamicItemDataset({"seg": rows["seg"]}), Identity(8000),
                             EvalProtocol("sliding"))
    spans = [(row["window_start"], row["window_end"]) for row in windows.data.values()]
    assert spans == [(16000, 24000), (20000, 28000), (24000, 32000), (28000, 36000),
                     (32000, 40000)]


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())


@pytest.mark.slow
def test_demo_runs_audiofolder_multilabel(tmp_path, capsys):
    from petl_modules import demo

    results = demo.main(["--dataset=AudioFolder", "--task=multilabel", f"--output_folder={tmp_path}",
                         "--number_of_epochs=1", "--per_class=1"])
    assert 0.0 <= results["test_map_mean"] <= 1.0 and "test_accuracy" not in results
    assert (tmp_path / "data" / "my_tags" / "metadata.csv").is_file()
    assert "test mAP" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demo.main(["--dataset=ESC50", "--task=multilabel", f"--output_folder={tmp_path / 'x'}"])
