"""Runs under torchrun (DDP on CPU with gloo), resuming after SIGKILL, and W&B tracking offline.

Every run is the real recipe command line on the tiny AST and the synthetic FSC release.
"""

import json
import shutil
import signal
import struct
import sys

import pytest
import torch

from petl_modules.training.checkpointing import Checkpointer, RandomState

from conftest import read_results, run_train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes

# Runs a recipe command as `python -c KILL_HARNESS train.py ...`, and SIGKILLs it (no clean-up
# whatsoever) at the second training batch after its 3rd intra-epoch checkpoint: in the middle of
# epoch 2 of the resume test's run, with one batch of progress beyond the checkpoint lost.
KILL_HARNESS = """
import os, runpy, signal, sys
import speechbrain as sb
seen = {"checkpoints": 0, "batches_after": 0}
save, fit_batch = sb.Brain._save_intra_epoch_ckpt, sb.Brain.fit_batch
def counting_save(self):
    save(self)
    seen["checkpoints"] += 1
def killing_fit_batch(self, batch):
    if seen["checkpoints"] >= 3:
        seen["batches_after"] += 1
        if seen["batches_after"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return fit_batch(self, batch)
sb.Brain._save_intra_epoch_ckpt, sb.Brain.fit_batch = counting_save, killing_fit_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Runs a recipe command as `python -c SIGNAL_HARNESS SIGNUM N train.py ...`: the process sends
# itself SIGNUM while its N-th training batch runs (as Slurm does before a time limit, SIGUSR2, or
# on preemption and `scontrol requeue`, SIGTERM).
SIGNAL_HARNESS = """
import os, runpy, sys
import speechbrain as sb
signum, at = int(sys.argv[1]), int(sys.argv[2])
seen = {"batches": 0}
fit_batch = sb.Brain.fit_batch
def signalling_fit_batch(self, batch):
    seen["batches"] += 1
    if seen["batches"] == at:
        os.kill(os.getpid(), signum)
    return fit_batch(self, batch)
sb.Brain.fit_batch = signalling_fit_batch
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def fold_metrics(output_folder):
    """What a run's results.json says about its (single) fold, paths left out."""
    (fold,) = read_results(output_folder)["folds"]
    return {k: fold[k] for k in ("valid_accuracy", "best_epoch", "test_accuracy", "test_loss")}


def best_checkpoint_tensors(output_folder):
    """The trained tensors of the checkpoint the run tested (``{recoverable.key: tensor}``)."""
    best = Checkpointer(output_folder / "save").find_checkpoint(max_key="valid_acc")
    return {
        f"{name}.{key}": tensor
        for name in ("petl_model", "classifier")
        for key, tensor in torch.load(best.paramfiles[name]).items()
    }


# ==================================================================== DDP
def test_ddp_on_two_cpu_processes_writes_once_and_evaluates_like_one_process(
        fsc_data, tiny_ast, tmp_path):
    # The default method: conformer adapters, with BatchNorm (per process on CPU) and dropout.
    out = tmp_path / "ddp"
    proc = run_train("FSC", "adapter", fsc_data, tiny_ast, out, "--distributed_backend=gloo",
                     launcher=TORCHRUN)

    # Preparation ran once, and every file was written once, by the main process.
    assert proc.stdout.count("Wrote manifests") == 1
    assert proc.stdout.count("results in") == 1
    assert "Going into epoch 1" in proc.stdout
    log = (out / "train_log.txt").read_text().splitlines()
    assert [line.split(" - ")[0] for line in log] == ["epoch: 1, lr: 0.00e+00", "Epoch loaded: 1"]
    assert len(list((out / "save").glob("CKPT+*"))) == 1
    assert not list(out.glob("**/*.tmp"))
    results = read_results(out)
    assert results["seed"] == 10 and len(results["folds"]) == 1

    # The test metrics are those one process computes with the same checkpoint on the same data:
    # evaluation is not sharded (every process evaluates all of it).
    single = tmp_path / "single"
    shutil.copytree(out, single)
    for name in ("results.json", "fold_result.json"):
        (single / name).unlink()
    run_train("FSC", "adapter", fsc_data, tiny_ast, single, "--test_only")
    assert fold_metrics(single) == fold_metrics(out)


# ==================================================================== resume
def run_killed_and_resumed(recipe, method, data, backbone, tmp_path, *options):
    """Runs a command uninterrupted (``tmp_path/uninterrupted``), then again in
    ``tmp_path/interrupted``, SIGKILLed in the middle of epoch 2 (``KILL_HARNESS``), and reruns it
    there; checks the kill left one intra-epoch checkpoint and no results, and that the rerun
    resumed from it. Returns ``(uninterrupted folder, interrupted folder, the rerun's process)``."""
    reference = tmp_path / "uninterrupted"
    run_train(recipe, method, data, backbone, reference, *options)

    out = tmp_path / "interrupted"
    killed = run_train(recipe, method, data, backbone, out, *options,
                       check=False, launcher=[sys.executable, "-c", KILL_HARNESS])
    assert killed.returncode == -9, killed.stdout[-3000:]
    assert not (out / "results.json").exists()
    intra_epoch = [c for c in (out / "save").glob("CKPT+*")
                   if "brain_intra_epoch_ckpt" in (c / "CKPT.yaml").read_text()]
    assert len(intra_epoch) == 1

    resumed = run_train(recipe, method, data, backbone, out, *options)
    assert "1 epoch(s) done; epoch 2 goes on after its batch 3" in resumed.stdout
    assert "Going into epoch 1" not in resumed.stdout
    return reference, out, resumed


def assert_same_run(out, reference):
    """Each epoch logged once, with the same metrics; same results and tested weights."""
    assert (out / "train_log.txt").read_text() == (reference / "train_log.txt").read_text()
    assert fold_metrics(out) == fold_metrics(reference)
    expected = best_checkpoint_tensors(reference)
    got = best_checkpoint_tensors(out)
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_run_killed_mid_epoch_resumes_with_the_same_command_and_ends_as_uninterrupted(
        fsc_data, tiny_ast_with_dropout, tmp_path):
    # 31 training utterances in batches of 4: 8 steps per epoch, a checkpoint every 3 steps.
    options = ["--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_steps=3"]
    reference, out, _ = run_killed_and_resumed("FSC", "full_ft", fsc_data, tiny_ast_with_dropout,
                                               tmp_path, *options)
    assert_same_run(out, reference)
    assert read_results(out)["seed"] == read_results(reference)["seed"] == 10

    # Once finished, the same command does not run again (multi-fold runs: finished folds).
    again = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options)
    assert "This run already finished" in again.stdout and "Going into epoch" not in again.stdout
    assert fold_metrics(out) == fold_metrics(reference)


def test_checkpoint_interrupted_while_saving_is_ignored_and_cleaned_up(tmp_path):
    layer = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(tmp_path, recoverables={"layer": layer, "random": RandomState()})
    first = checkpointer.save_checkpoint(meta={"n": 1})

    def killed_while_saving(obj, path):
        raise KeyboardInterrupt  # stands for a kill after the meta file, before this file
    checkpointer.add_recoverable("late", torch.nn.Linear(2, 2), custom_save_hook=killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save_checkpoint(meta={"n": 2})
    assert len(list(tmp_path.glob("CKPT+*"))) == 2
    assert checkpointer.find_checkpoint().path == first.path  # the incomplete one is no checkpoint

    del checkpointer.custom_save_hooks["late"]
    third = checkpointer.save_checkpoint(meta={"n": 3})
    assert sorted(tmp_path.glob("CKPT+*")) == sorted([first.path, third.path])
    assert checkpointer.recover_if_possible().meta["n"] == 3


# ==================================================================== W&B
def wandb_history(run_file):
    """The ``{key: value}`` rows a W&B run logged, read from its offline ``.wandb`` file.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records (crc32, length,
    type; FULL=1, FIRST=2, MIDDLE=3, LAST=4) holding protobuf ``Record`` messages.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, block, payload = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a record header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length] if kind in (1, 2) else payload + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            if record.HasField("history"):
                rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run_logs_epoch_and_test_metrics_beside_the_file_log(
        fsc_data, tiny_ast, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "600")  # a busy machine starts wandb's service slowly
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    out = tmp_path / "tracked"
    run_train("FSC", "linear", fsc_data, tiny_ast, out, "--use_wandb=True", "--wandb_run_name=tiny")

    run_id = (out / "wandb_run_id.txt").read_text().strip()
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    rows = wandb_history(run_dir / f"run-{run_id}.wandb")
    results = read_results(out)
    (fold,) = results["folds"]
    epoch_rows = [r for r in rows if r.get("epoch") == 1]
    assert len(epoch_rows) == 1
    assert epoch_rows[0]["valid/accuracy"] == fold["valid_accuracy"]
    assert "train/loss" in epoch_rows[0] and "lr" in epoch_rows[0]
    assert [r["test/accuracy"] for r in rows if "test/accuracy" in r] == [fold["test_accuracy"]]
    # The file log is written all the same.
    assert "test accuracy" in (out / "train_log.txt").read_text()


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"])
def test_run_signalled_mid_epoch_checkpoints_at_the_next_step_exits_and_resumes_as_uninterrupted(
        signum, fsc_data, tiny_ast_with_dropout, tmp_path):
    # 31 training utterances in batches of 4: 8 steps per epoch; no timed checkpoints, so the one
    # within epoch 2 is the signal's. The signal arrives during batch 13 = epoch 2, batch 5.
    options = ["--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_minutes=0"]
    reference = tmp_path / "uninterrupted"
    run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, reference, *options)

    out = tmp_path / "signalled"
    stopped = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options, check=False,
                        launcher=[sys.executable, "-c", SIGNAL_HARNESS, str(int(signum)), "13"])
    assert stopped.returncode == 128 + signum, stopped.stdout[-3000:]
    assert f"Stopped on {signal.Signals(signum).name} at epoch 2, after batch 5: checkpoint saved" \
        in stopped.stdout
    assert not (out / "results.json").exists()
    intra_epoch = [c for c in (out / "save").glob("CKPT+*")
                   if "brain_intra_epoch_ckpt" in (c / "CKPT.yaml").read_text()]
    assert len(intra_epoch) == 1

    resumed = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options)
    assert "1 epoch(s) done; epoch 2 goes on after its batch 5" in resumed.stdout
    assert_same_run(out, reference)
