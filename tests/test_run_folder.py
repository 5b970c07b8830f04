"""An output folder belongs to one run: another run's command, or a second process, is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from petl_modules.training.run_folder import (
    IDENTITY_FILE,
    RunFolderError,
    RunLock,
    check_run_identity,
    run_identity,
)

from conftest import REPO
from recipe_helpers import run_in_process

OPTIONS = {"method": "lora", "reduction_rate": 128, "seed": 10, "dataset": "FSC", "lr": 0.005,
           "number_of_epochs": 3, "num_workers": 2, "data_folder": "/a", "fold": 1}


# ==================================================================== identity (unit)
def test_identity_classes_options_as_model_schedule_and_plumbing():
    identity = run_identity(OPTIONS, "f" * 64)
    assert identity["options"] == {"method": "lora", "reduction_rate": 128, "seed": 10,
                                   "dataset": "FSC"}
    assert identity["schedule"] == {"lr": 0.005, "number_of_epochs": 3}
    assert identity["backbone_fingerprint"] == "f" * 64


@pytest.mark.parametrize("change, message", [
    ({"method": "adapter"}, "--method='lora'"),
    ({"seed": 11}, "--seed=10"),
    ({"reduction_rate": 64}, "--reduction_rate=128"),
    ({"lr": 0.1}, "trained with --lr=0.005"),
    ({"number_of_epochs": 5}, "--number_of_epochs=3"),
])
def test_another_runs_command_is_refused_naming_the_option_and_both_values(change, message, tmp_path):
    check_run_identity(tmp_path, run_identity(OPTIONS, "a" * 64))
    with pytest.raises(RunFolderError, match="belongs to another run") as err:
        check_run_identity(tmp_path, run_identity(dict(OPTIONS, **change), "a" * 64))
    assert message in str(err.value) and "--output_folder" in str(err.value)
    new = next(iter(change.values()))
    assert repr(new) in str(err.value)


def test_other_backbone_weights_are_refused_and_plumbing_is_free(tmp_path):
    check_run_identity(tmp_path, run_identity(OPTIONS, "a" * 64))
    check_run_identity(tmp_path, run_identity(dict(OPTIONS, num_workers=0, data_folder="/b",
                                                   fold=2), "a" * 64))
    with pytest.raises(RunFolderError, match="backbone checkpoint's weights differ"):
        check_run_identity(tmp_path, run_identity(OPTIONS, "b" * 64))


def test_damaged_identity_file_is_an_error_not_a_silent_restart(tmp_path):
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match="cannot be read"):
        check_run_identity(tmp_path, run_identity(OPTIONS))


# ==================================================================== the lock (unit)
HOLDER = """
import sys, time
from petl_modules.training.run_folder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunFolderError, match="in use by another run") as err:
            RunLock(tmp_path).acquire()
        assert f"process {holder.pid}" in str(err.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):  # the OS released the killed process's lock
        pass


def test_the_lock_holder_file_names_no_local_path(tmp_path, monkeypatch):
    from petl_modules.training.run_folder import HOLDER_FILE

    script = REPO / "recipes" / "FSC" / "train.py"
    data = tmp_path / "private" / "fluent_speech_commands_dataset"
    monkeypatch.setattr(sys, "argv", [str(script), "hparams/lora.yaml", f"--data_folder={data}",
                                      f"--output_folder={tmp_path / 'out'}", "--seed=3"])
    with RunLock(tmp_path / "out"):
        text = (tmp_path / "out" / HOLDER_FILE).read_text()
        holder = json.loads(text)
    assert str(tmp_path) not in text and str(REPO) not in text
    assert holder["command"] == ("python recipes/FSC/train.py hparams/lora.yaml "
                                 "--data_folder=.../fluent_speech_commands_dataset --output_folder=.../out --seed=3")
    assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]


# ==================================================================== end to end (in-process runs)
def fsc_run(method, fsc_data, tiny_ast, out, *extra):
    defaults = ["--number_of_epochs=1", "--batch_size=16", "--num_workers=0", "--max_frames=64"]
    given = {e.split("=", 1)[0] for e in extra}
    return run_in_process("FSC", [
        str(REPO / "hparams" / f"{method}.yaml"), f"--data_folder={fsc_data}",
        f"--backbone_source={tiny_ast}", f"--output_folder={out}",
        *[d for d in defaults if d.split("=", 1)[0] not in given], *extra])


@pytest.fixture(scope="module")
def finished_run(fsc_data, tiny_ast, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    results = fsc_run("linear", fsc_data, tiny_ast, out)
    assert isinstance(results, dict), results
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method, extra, message", [
    ("bitfit", [], "--method='linear', this command says 'bitfit'"),
    ("linear", ["--seed=11"], "--seed=10, this command says 11"),
    ("linear", ["--pooling=cls"], "--pooling='mean'"),
    ("linear", ["--lr=0.5"], "trained with --lr=0.001"),
    ("linear", ["--number_of_epochs=2"], "--number_of_epochs=1"),
    ("bitfit", ["--test_only"], "--method='linear'"),
])
def test_rerun_with_another_runs_options_is_refused_before_data(method, extra, message,
                                                                finished_run, fsc_data, tiny_ast):
    before = (finished_run / "results.json").read_bytes()
    out = fsc_run(method, fsc_data, tiny_ast, finished_run, *extra)
    assert isinstance(out, str) and out.startswith("Error with the output folder"), out
    assert message in out
    assert (finished_run / "results.json").read_bytes() == before


@pytest.mark.slow
def test_rerun_with_the_same_options_and_other_plumbing_is_accepted(finished_run, fsc_data,
                                                                      tiny_ast):
    results = fsc_run("linear", fsc_data, tiny_ast, finished_run, "--ckpt_interval_minutes=0")
    assert isinstance(results, dict), results
    recorded = json.loads((finished_run / IDENTITY_FILE).read_text())
    assert recorded["options"]["method"] == "linear"


@pytest.mark.slow
def test_run_on_a_folder_in_use_is_refused_naming_the_holder(fsc_data, tiny_ast, tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        out = fsc_run("linear", fsc_data, tiny_ast, tmp_path / "run")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert isinstance(out, str) and "in use by another run" in out and str(holder.pid) in out
    assert not (tmp_path / "run" / "manifests").exists()
    time.sleep(0.1)
    assert isinstance(fsc_run("linear", fsc_data, tiny_ast, tmp_path / "run"), dict)


def test_fingerprinting_the_backbone_leaves_the_random_state_alone(tiny_ast):
    import torch

    from petl_modules.backbones.base import checkpoint_fingerprint

    torch.manual_seed(3)
    checkpoint_fingerprint(str(tiny_ast))
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)
