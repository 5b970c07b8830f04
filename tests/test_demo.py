"""``python -m petl_modules.demo``: a whole offline run on synthetic data with a tiny backbone."""

import os
import subprocess
import sys

import pytest

from petl_modules import demo
from petl_modules.synthetic import available_datasets, demo_settings

from conftest import REPO, read_results

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes


def check_outputs(out, dataset):
    results = read_results(out / "run")
    assert results["dataset"] == dataset and results["method"] == "soft_moa"
    (fold,) = results["folds"]
    assert 0.0 <= fold["test_map" if "test_map" in fold else "test_accuracy"] <= 1.0
    experiment = out / "run" / ("fold_1" if fold["fold"] else "")
    assert (experiment / "petl_model").is_dir() and (experiment / "train_log.txt").is_file()
    assert (out / "backbone" / "config.json").is_file()
    return results


def test_demo_command_line_runs_fsc_and_prints_command_accuracy_and_outputs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "petl_modules.demo", f"--output_folder={out}", "--number_of_epochs=1",
         "--per_class=1"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    check_outputs(out, "FSC")
    printed = proc.stdout
    assert "[demo] Ran: " in printed and "recipes/FSC/train.py hparams/soft_moa.yaml" in printed
    assert "test accuracy" in printed and "(chance 0.032, 31 classes)" in printed
    assert f"{out / 'run' / 'results.json'}" in printed
    assert ("On the real dataset: python recipes/FSC/train.py hparams/soft_moa.yaml "
            "--data_folder=/path/to/fluent_speech_commands_dataset") in printed
    assert "The tiny random backbone checks the plumbing only" in printed


# The datasets come from the recipe folders (recipes/<DATASET>/*_synthetic.py); FSC, the default,
# runs through the command line above.
@pytest.mark.parametrize("dataset", [name for name in available_datasets() if name != "FSC"])
def test_demo_runs_the_real_recipe_of_every_dataset(dataset, tmp_path):
    out = tmp_path / dataset
    results = demo.main([f"--dataset={dataset}", f"--output_folder={out}", "--number_of_epochs=1",
                         "--per_class=1"])
    assert results == check_outputs(out, dataset)
    assert (out / "data" / demo_settings(dataset)["release"]).is_dir()


def test_demo_rejects_unknown_dataset_and_method(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--dataset=TIMIT"])
    assert f"choose one of {', '.join(available_datasets())}." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--method=nope"])
    assert "no hparams/nope.yaml" in capsys.readouterr().err


def test_demo_refuses_an_output_folder_whose_run_folder_is_not_a_previous_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a previous demo run"):
        demo.main(["--dataset=IEMOCAP", f"--output_folder={tmp_path}", "--per_class=1"])
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
