"""Recipes trained from tar shards as users run them: ``python -m petl_modules.shard`` then
``--shards``; killed mid-epoch and resumed (1 and 2 DataLoader workers, 2 DDP processes), the run
ends as an uninterrupted one, bit for bit."""

import subprocess
import sys

import pytest

from conftest import REPO, run_train
from test_distributed_resume_tracking import (  # noqa: F401 (fixture)
    TORCHRUN,
    assert_same_run,
    run_killed_and_resumed,
    tiny_ast_with_dropout,
)

pytestmark = pytest.mark.slow


def shard_command(recipe, data, out, *options):
    """``python -m petl_modules.shard RECIPE --data_folder=DATA OUT ...`` as a user runs it."""
    cmd = [sys.executable, "-m", "petl_modules.shard", recipe, f"--data_folder={data}", str(out),
           *options]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc


@pytest.fixture(scope="module")
def fsc_shards(fsc_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsc_shards") / "shards"
    shard_command("FSC", fsc_data, out, "--samples_per_shard=8", "--workers=2")
    return out


# 31 training clips in shards of 8, batches of 4: 8 steps per epoch, a checkpoint every 3 steps;
# the run is killed in epoch 2 after its batch 4 (see KILL_HARNESS) and resumes after batch 3.
RESUME = ["--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_steps=3", "--shuffle_buffer=5"]


@pytest.mark.parametrize("workers", [1, 2])
def test_run_from_shards_killed_mid_epoch_ends_as_uninterrupted(fsc_data, fsc_shards, workers,
                                                               tiny_ast_with_dropout, tmp_path):
    options = [*RESUME, f"--shards={fsc_shards}", f"--num_workers={workers}"]
    reference, out, resumed = run_killed_and_resumed("FSC", "full_ft", fsc_data, tiny_ast_with_dropout,
                                                     tmp_path, *options)
    assert "Reading " in resumed.stdout and "Wrote manifests" not in resumed.stdout
    assert_same_run(out, reference)


# Kills every process of a command at its N-th training batch (N from the environment), before
# the batch trains: under torchrun both ranks die at the same step.
KILL_AT_BATCH = """
import os, runpy, signal, sys
import speechbrain as sb
seen = {"batches": 0}
fit_batch = sb.Brain.fit_batch
def killing_fit_batch(self, batch):
    seen["batches"] += 1
    if seen["batches"] == int(os.environ["PETL_TEST_KILL_AT_BATCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return fit_batch(self, batch)
sb.Brain.fit_batch = killing_fit_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ddp_run_from_shards_killed_mid_epoch_ends_as_uninterrupted(fsc_data, fsc_shards,
                                                                    tiny_ast_with_dropout, tmp_path,
                                                                    monkeypatch):
    # Two processes, one worker each: 15 and 16 clips, 4 steps per epoch of 4 clips each, a
    # checkpoint every 2 steps; killed at epoch 2's step 4 (batch 8): it resumes after step 2.
    options = [*RESUME, "--ckpt_interval_steps=2", f"--shards={fsc_shards}", "--num_workers=1",
               "--distributed_backend=gloo"]
    reference = tmp_path / "uninterrupted"
    run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, reference, *options,
              launcher=TORCHRUN)
    out = tmp_path / "interrupted"
    monkeypatch.setenv("PETL_TEST_KILL_AT_BATCH", "8")
    killing = [*TORCHRUN, "--no-python", sys.executable, "-c", KILL_AT_BATCH]
    killed = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options,
                       check=False, launcher=killing)
    assert killed.returncode != 0 and not (out / "results.json").exists(), killed.stdout[-3000:]
    monkeypatch.delenv("PETL_TEST_KILL_AT_BATCH")
    resumed = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options,
                        launcher=TORCHRUN)
    assert "1 epoch(s) done; epoch 2 goes on after its batch 2" in resumed.stdout
    assert_same_run(out, reference)
