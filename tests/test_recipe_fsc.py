"""The FSC recipe end to end through its real command line, and what lands on disk."""

import json

import pytest
import torch

from conftest import read_results, run_train

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes


@pytest.mark.parametrize("method", ["linear", "full_ft", "bitfit"])
def test_fsc_recipe_trains_tests_and_writes_results(method, fsc_data, tiny_ast, tmp_path):
    out = tmp_path / method
    run_train("FSC", method, fsc_data, tiny_ast, out)

    results = read_results(out)
    assert results["dataset"] == "FSC" and results["method"] == method
    assert results["backbone"] == "ast" and results["seed"] == 10
    assert 0 < results["trainable_params"] <= results["total_params"]
    assert results["trainable_percent"] == pytest.approx(
        100 * results["trainable_params"] / results["total_params"])
    head = 64 * 31 + 31
    expected = {"linear": 2 * 64, "bitfit": 2 * 576 + 64, "full_ft": results["total_params"] - head}
    assert results["trainable_params_without_head"] == expected[method]
    (fold,) = results["folds"]
    for key in ("valid_accuracy", "test_accuracy"):
        assert 0.0 <= fold[key] <= 1.0
    assert results["test_accuracy_mean"] == fold["test_accuracy"]
    assert results["test_accuracy_std"] == 0.0
    assert len(fold["class_names"]) == 31

    # Manifests, composed configuration, logs, checkpoint with trained tensors only.
    for split in ("train", "valid", "test"):
        assert (out / "manifests" / f"{split}.csv").is_file()
    assert "method: " + method in (out / "hyperparams.yaml").read_text()
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1" in log and "valid accuracy" in log and "test accuracy" in log
    (ckpt,) = (out / "save").glob("CKPT+*")
    saved = torch.load(ckpt / "petl_model.ckpt", weights_only=True)
    assert sum(t.numel() for t in saved.values()) == results["trainable_params_without_head"]
    assert (ckpt / "optimizer.ckpt").is_file() and (ckpt / "lr_scheduler.ckpt").is_file()
    assert json.loads((out / "fold_result.json").read_text())["test_accuracy"] == fold["test_accuracy"]
