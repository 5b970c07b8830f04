"""Batches by duration (``--dynamic_batching=True``) under torchrun: two CPU processes (gloo) on
utterances of unequal length (the tiny wav2vec2, ``--clip_seconds=null``).

Oracles: the ids each process trained on, recorded by a harness around ``sb.Brain.fit_batch``
(nothing in the recipe changes): the processes share out the epoch's batches, the same number
each, and together cover every training utterance; a run killed mid-epoch and rerun trains on the
batches an uninterrupted run does and ends with its train log and weights.
"""

import os
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from petl_modules.synthetic import make_dataset

from conftest import run_train
from test_distributed_resume_tracking import KILL_HARNESS, TORCHRUN, assert_same_run

pytestmark = pytest.mark.slow  # end-to-end runs of the recipe under torchrun

# Prepended to a harness (KILL_HARNESS, or RUN below): every training batch's epoch and ids go to
# `$PETL_TEST_BATCH_LOG.rank<RANK>`, one line per batch, before the batch trains.
RECORD = """
import os
import speechbrain as sb
_fit_batch = sb.Brain.fit_batch
def recording_fit_batch(self, batch):
    with open(os.environ["PETL_TEST_BATCH_LOG"] + ".rank" + os.environ["RANK"], "a") as log:
        log.write(f"{self.hparams.epoch_counter.current} {' '.join(batch.id)}\\n")
    return _fit_batch(self, batch)
sb.Brain.fit_batch = recording_fit_batch
"""
RUN = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# 31 training utterances of 0.2-1.0 s (18.3 s in all) in batches of up to 2.2 s over 4 buckets:
# 13 batches per epoch, 7 per process (one batch twice: DistributedSampler pads to equal shares).
OPTIONS = ["--distributed_backend=gloo", "--clip_seconds=null", "--dynamic_batching=True",
           "--max_batch_seconds=2.2", "--num_buckets=4", "--number_of_epochs=2",
           "--ckpt_interval_steps=3", "--batch_size=4", "--reduction_rate=16"]


@pytest.fixture(scope="module")
def fsc_unequal(tmp_path_factory):
    """The synthetic FSC release with its training utterances cut to 0.2-1.0 s (seeded)."""
    folder = make_dataset("FSC", tmp_path_factory.mktemp("fsc_unequal"), per_class=1)
    rng = np.random.default_rng(0)
    for wav in sorted((folder / "wavs" / "speakers").glob("trainSpk*/*.wav")):
        audio, rate = sf.read(wav)
        sf.write(wav, audio[:int(rate * rng.uniform(0.2, 1.0))], rate, subtype="PCM_16")
    return folder


def run_ddp(data, backbone, out, log, harness=RUN, check=True):
    """The FSC recipe under torchrun, each process recording its batches under ``log``."""
    os.environ["PETL_TEST_BATCH_LOG"] = str(log)
    try:
        return run_train("FSC", "adapter", data, backbone, out, *OPTIONS, check=check,
                         launcher=[*TORCHRUN, "--no-python", sys.executable, "-c", RECORD + harness])
    finally:
        del os.environ["PETL_TEST_BATCH_LOG"]


def batches(log, rank):
    """``[(epoch, (ids...))]`` of the batches process ``rank`` trained on, in order."""
    lines = log.with_name(f"{log.name}.rank{rank}").read_text().splitlines()
    return [(int(line.split()[0]), tuple(line.split()[1:])) for line in lines]


def train_ids(data):
    return {p.stem for p in (data / "wavs" / "speakers").glob("trainSpk*/*.wav")}


def test_processes_share_out_the_epochs_batches_and_a_killed_run_resumes_as_uninterrupted(
        fsc_unequal, tiny_wav2vec2, tmp_path):
    reference = tmp_path / "uninterrupted"
    run_ddp(fsc_unequal, tiny_wav2vec2, reference, tmp_path / "reference")
    seen = {rank: batches(tmp_path / "reference", rank) for rank in (0, 1)}
    for epoch in (1, 2):
        per_rank = [[b for e, b in seen[rank] if e == epoch] for rank in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == 7  # equal shares: no process waits
        assert len({len(b) for b in per_rank[0] + per_rank[1]}) > 1  # sizes follow the lengths
        # Every utterance once, but for the one batch both processes took (13 batches in 2 x 7).
        distinct = set(per_rank[0] + per_rank[1])
        assert len(distinct) == 13
        counts = Counter(i for b in distinct for i in b)
        assert set(counts) == train_ids(fsc_unequal) and set(counts.values()) == {1}
        assert len(set(per_rank[0]) & set(per_rank[1])) == 1
    assert [b for e, b in seen[0] if e == 1] != [b for e, b in seen[0] if e == 2]  # per-epoch order

    # Killed (SIGKILL on both processes) at epoch 2's batch 5, one batch after its checkpoint,
    # then rerun: it goes on from that checkpoint with the batches the uninterrupted run trained on.
    out = tmp_path / "interrupted"
    killed = run_ddp(fsc_unequal, tiny_wav2vec2, out, tmp_path / "killed", KILL_HARNESS, check=False)
    assert killed.returncode != 0 and not (out / "results.json").exists()
    resumed = run_ddp(fsc_unequal, tiny_wav2vec2, out, tmp_path / "resumed")
    assert "1 epoch(s) done; epoch 2 goes on after its batch 3" in resumed.stdout
    for rank in (0, 1):
        assert batches(tmp_path / "killed", rank)[:10] == seen[rank][:10]
        assert batches(tmp_path / "resumed", rank) == seen[rank][10:]
    assert_same_run(out, reference)
