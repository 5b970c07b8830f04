"""LayerDrop on layers being fine-tuned, under torchrun (two CPU processes, gloo).

Each process draws its own drops, and the draws part ways as soon as anything else draws from
torch's generator a number of times that depends on the process's batch (here feature mixup, whose
draws follow the batch size, with batches by duration). A layer one process skipped while the
other ran it used to leave the processes' gradient reductions out of step, and the run failed
("Received data size doesn't match expected size").

Oracles, from a harness around the recipe (nothing in it changes): the processes' drops differ in
some step, the run ends, and after every step both processes hold the same trained parameters.
"""

import os
import sys

import pytest
import torch
import transformers

from petl_modules.tiny import tiny_waveform_config

from conftest import read_results, run_train
from test_distributed_dynamic_batching import fsc_unequal  # noqa: F401  (a fixture)
from test_distributed_resume_tracking import TORCHRUN

pytestmark = pytest.mark.slow  # end-to-end runs of the recipe under torchrun

# Each process writes its LayerDrop draws ("D" + 0/1 per draw) and, after each training step, the
# sum of its trained parameters ("P <sum>") to `$PETL_TEST_LOG.rank<RANK>`.
HARNESS = """
import os, runpy, sys
import speechbrain as sb
from petl_modules.backbones import layerdrop
log = open(os.environ["PETL_TEST_LOG"] + ".rank" + os.environ["RANK"], "w", buffering=1)
_drops, _fit_batch = layerdrop.drops, sb.Brain.fit_batch
def drops(layer, rate):
    dropped = _drops(layer, rate)
    log.write(f"D {int(dropped)}\\n")
    return dropped
def fit_batch(self, batch):
    loss = _fit_batch(self, batch)
    trained = [p for p in self.modules.petl_model.parameters() if p.requires_grad]
    log.write(f"P {sum(float(p.double().sum()) for p in trained)!r}\\n")
    return loss
layerdrop.drops, sb.Brain.fit_batch = drops, fit_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def wav2vec2_with_layerdrop(tmp_path_factory):
    """The tiny wav2vec2 with a LayerDrop of 0.5 (a drop in most steps) and dropout 0.1."""
    folder = tmp_path_factory.mktemp("wav2vec2_layerdrop")
    torch.manual_seed(0)
    config = tiny_waveform_config("wav2vec2", layerdrop=0.5, hidden_dropout=0.1)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    return str(folder)


def steps(log, rank):
    """``[(draws, parameter sum)]`` per training step of process ``rank``."""
    found, draws = [], ""
    for line in log.with_name(f"{log.name}.rank{rank}").read_text().splitlines():
        kind, value = line.split()
        if kind == "D":
            draws += value
        else:
            found.append((draws, float(value)))
            draws = ""
    return found


def test_full_fine_tuning_with_layerdrop_trains_under_torchrun(fsc_unequal, wav2vec2_with_layerdrop,  # noqa: F811
                                                               tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    os.environ["PETL_TEST_LOG"] = str(log)
    try:
        run_train("FSC", "full_ft", fsc_unequal, wav2vec2_with_layerdrop, out, "--distributed_backend=gloo",
                  "--unfrozen_layers=1", "--number_of_epochs=2", "--clip_seconds=null", "--mixup=features",
                  "--dynamic_batching=True", "--max_batch_seconds=2.2", "--num_buckets=4",
                  launcher=[*TORCHRUN, "--no-python", sys.executable, "-c", HARNESS])
    finally:
        del os.environ["PETL_TEST_LOG"]
    assert read_results(out)["folds"][0]["test_accuracy"] is not None
    first, second = steps(log, 0), steps(log, 1)
    assert len(first) == len(second) == 14  # 7 batches by duration per process and epoch
    assert any(a[0] != b[0] for a, b in zip(first, second))  # the processes dropped differently
    assert any("1" in a[0] for a in first)
    assert [a[1] for a in first] == [b[1] for b in second]  # and still trained one model
