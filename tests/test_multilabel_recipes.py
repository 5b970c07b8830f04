"""The FSD50K and AudioSet recipes end to end on generated releases, and a 527-class multi-label
model (AudioSet's size) through the several-task and ONNX paths."""

import csv
import json

import pytest

from petl_modules import classify as classify_cli
from petl_modules import export as export_cli
from petl_modules.synthetic import make_dataset

from conftest import REPO
from recipe_helpers import run_in_process

pytestmark = pytest.mark.slow

SMALL = ["--number_of_epochs=1", "--batch_size=8", "--num_workers=0", "--max_frames=64",
         "--time_mask=20", "--freq_mask=24"]


def argv(method, data, backbone, out, *extra):
    return [str(REPO / "hparams" / f"{method}.yaml"), f"--data_folder={data}",
            f"--backbone_source={backbone}", f"--output_folder={out}", *SMALL, *extra]


def test_audioset_full_run_draws_balanced_mixes_and_reports_missing_clips(tiny_ast, tmp_path):
    data = make_dataset("AudioSet", tmp_path / "data", per_class=2, seconds=0.5)
    results = run_in_process("AudioSet", argv("linear", data, tiny_ast, tmp_path / "run",
                                              "--subset=full", "--max_missing=0.6",
                                              "--valid_fraction=0.25"))
    assert isinstance(results, dict), results
    (fold,) = results["folds"]
    used = fold["hparams"]  # the full set's defaults
    assert (used["sampling"], used["mixup"], used["number_of_epochs"]) == ("class_balanced", "waveform", 1)
    assert {"test_map", "test_f1_micro", "test_f1_macro", "test_mauc", "test_d_prime"} <= set(fold)
    missing = results["missing_clips"]
    assert missing["max_missing"] == 0.6 and missing["train"]["segments"] > missing["train"]["missing"] > 0
    with open(tmp_path / "run" / "test_per_class.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["class"] for r in rows] == fold["class_names"] and len(rows) == 12


def test_fsd50k_run_tests_whole_clips_with_windows_and_scores_every_class(tiny_ast, tmp_path):
    data = make_dataset("FSD50K", tmp_path / "data", per_class=1, seconds=1.5)
    results = run_in_process("FSD50K", argv("adapter", data, tiny_ast, tmp_path / "run",
                                            "--reduction_rate=8", "--window_results=True"))
    assert isinstance(results, dict), results
    assert results["dataset"] == "FSD50K" and 0.0 <= results["test_map_mean"] <= 1.0
    config = json.loads((tmp_path / "run" / "petl_model" / "petl_config.json").read_text())
    assert config["evaluation"]["window_pooling"] == "max"
    windows = (tmp_path / "run" / "test_windows.csv").read_text().splitlines()
    with open(data / "FSD50K.ground_truth" / "eval.csv") as stream:
        clips = len(stream.read().splitlines()) - 1
    assert len(windows) - 1 > clips  # clips longer than 0.64 s give several windows


@pytest.fixture(scope="module")
def audioset_527(tiny_ast, tmp_path_factory):
    """A 527-class AudioSet model (two training steps) and an FSD50K model on the same tiny AST."""
    root = tmp_path_factory.mktemp("as527")
    data = make_dataset("AudioSet", root / "data", per_class=1, seconds=0.3, n_classes=527,
                        missing=0.1, unbalanced=1)
    debug = ["--debug", "--debug_batches=2", "--debug_epochs=1", "--ckpt_interval_minutes=0"]
    results = run_in_process("AudioSet", argv("lora", data, tiny_ast, root / "audioset",
                                              "--reduction_rate=8", "--valid_fraction=0.5", *debug))
    assert isinstance(results, dict) and results["trainable_params"] > 0, results
    fsd = make_dataset("FSD50K", root / "fsd", per_class=1, seconds=0.5)
    # (several tasks share one pass: the same evaluation protocol, here AudioSet's first clip)
    other = run_in_process("FSD50K", argv("adapter", fsd, tiny_ast, root / "fsd50k",
                                          "--reduction_rate=8", "--eval_windows=first",
                                          "--train_crop=first", "--window_pooling=mean", *debug))
    assert isinstance(other, dict), other
    files = sorted((data / "audios" / "eval_segments").glob("*.wav"))[:3]
    return root / "audioset" / "petl_model", root / "fsd50k" / "petl_model", files


def test_a_527_class_model_gives_its_answers_beside_another_task_on_one_backbone(audioset_527, capsys):
    audioset, fsd50k, files = audioset_527
    config = json.loads((audioset / "petl_config.json").read_text())
    assert len(config["class_names"]) == 527 and config["task"]["kind"] == "multilabel"
    assert len(config["task"]["thresholds"]) == 527
    assert classify_cli.main([str(audioset), "--json", "--top_k=527", *map(str, files)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert classify_cli.main(["--model", str(audioset), "--model", str(fsd50k), "--json",
                              "--top_k=527", "--", *map(str, files)]) == 0
    together = json.loads(capsys.readouterr().out)
    for single, several in zip(alone, together):
        (task,) = [t for t in several["tasks"].values() if len(t["top_k"]) == 527]
        scores = {e["label"]: e["score"] for e in single["top_k"]}
        assert len(scores) == 527
        assert all(abs(scores[e["label"]] - e["score"]) < 1e-5 for e in task["top_k"])
        assert task["labels"] == single["labels"]


def test_a_527_class_model_exports_to_onnx_with_its_labels(audioset_527, tmp_path):
    import numpy as np
    import onnxruntime

    audioset, _, _ = audioset_527
    out = tmp_path / "onnx"
    assert export_cli.main([str(audioset), str(out), "--format=onnx"]) == 0  # checks onnxruntime
    side = json.loads((out / "onnx_config.json").read_text())
    labels = side.get("id2label") or side.get("class_names") or side.get("labels")
    assert len(labels) == 527
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {}
    for spec in session.get_inputs():
        shape = [2 if not isinstance(d, int) else d for d in spec.shape]
        if "float" in spec.type:
            feed[spec.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        else:
            feed[spec.name] = np.full(shape, 64, dtype=np.int64)
    (probabilities, *_) = session.run(None, feed)
    assert probabilities.shape[-1] == 527
