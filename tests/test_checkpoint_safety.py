"""Checkpoint loading runs nothing from the files and falls back past damaged checkpoints.

Most tests build a small ``Checkpointer`` setup directly (a module, an ``AdaptedModel``, AdamW, a
cosine schedule, a GradScaler, ``RandomState``, an ``EpochCounter``): two checkpoints A (older)
and B (newest), B damaged or crafted, then a fresh setup (as after a restart) recovers. Crafted
pickles would create a marker file when unpickled; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` relaxes
torch's default, as a user may have done.
"""

import copy
import logging
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.nnet.adapters import AdaptedModel, LoRA
from speechbrain.utils import checkpoints
from speechbrain.utils.epoch_loop import EpochCounter

from petl_modules.training.checkpointing import (
    Checkpointer,
    CheckpointError,
    RandomState,
    _states,
    load_tensors,
)

KINDS = ["model", "adapted", "optimizer", "lr_scheduler", "scaler", "random_state"]


class Payload:
    """Unpickling it creates ``marker`` (what an attacker's pickle would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Setup:
    """The recoverables of a small training run, with a Checkpointer on ``folder``."""

    def __init__(self, folder, dataloader=False):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        self.adapted = AdaptedModel(torch.nn.Sequential(torch.nn.Linear(3, 3)), LoRA,
                                    target_layers=["0"], adapter_kwargs={"rank": 2})
        params = list(self.model.parameters()) + [
            p for p in self.adapted.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10)
        self.scaler = torch.amp.GradScaler("cpu")
        self.counter = EpochCounter(10)
        recoverables = {}
        if dataloader:
            self.loader = SaveableDataLoader(list(range(20)), batch_size=2)
            recoverables["dataloader-TRAIN"] = self.loader
        recoverables.update(model=self.model, adapted=self.adapted, optimizer=self.optimizer,
                            lr_scheduler=self.scheduler, scaler=self.scaler,
                            random_state=RandomState(), counter=self.counter)
        self.checkpointer = Checkpointer(folder, recoverables=recoverables)

    def step(self):
        """A training step: changes the weights, optimiser, schedule, counter and random state."""
        x = torch.randn(5, 3)
        loss = self.model(x).pow(2).mean() + self.adapted(x).pow(2).mean()
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.counter.current += 1
        random.random()
        np.random.rand()

    def snapshot(self):
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "adapted": self.adapted.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counter": self.counter.current,
            "random": _states(),
        })


def assert_same(got, expected, path=""):
    """Deep equality of nested dicts/lists/tuples with tensors and numbers."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, expected), path
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            assert_same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{path}[{i}]")
    else:
        assert got == expected, path


@pytest.fixture
def two_checkpoints(tmp_path):
    """``(folder, A, state at A, B)``: A holds a good state; B, the newest, is to be damaged."""
    folder = tmp_path / "save"
    run = Setup(folder)
    run.step()
    a = run.checkpointer.save_checkpoint(meta={"valid_acc": 0.5})
    state_a = run.snapshot()
    run.step()
    run.step()
    b = run.checkpointer.save_checkpoint(meta={"valid_acc": 0.6})
    assert run.checkpointer.find_checkpoint().path == b.path
    return folder, a, state_a, b


def recover_fresh(folder, **kwargs):
    """Recovers into a freshly built setup (as a restarted run does); returns (setup, checkpoint)."""
    run = Setup(folder)  # the same frozen (pretrained) weights, as a rerun builds them
    torch.manual_seed(123)
    run.step()  # the live state differs from every checkpoint
    return run, run.checkpointer.recover_if_possible(**kwargs)


def warnings_text(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ==================================================================== pickled payloads
def write_payload(path, marker, form):
    payload = {"weight": Payload(marker)}
    if form == "torch":
        torch.save(payload, path)
    elif form == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps(payload))


def test_the_payload_runs_where_speechbrain_loads_without_weights_only(tmp_path, monkeypatch):
    # The control: SpeechBrain's own module hook, with torch's default relaxed, runs the pickle.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    write_payload(tmp_path / "model.ckpt", marker, "torch")
    with pytest.raises(Exception):
        checkpoints.torch_recovery(torch.nn.Linear(2, 2), tmp_path / "model.ckpt", True)
    assert marker.exists()


@pytest.mark.parametrize("form", ["torch", "torch_legacy", "pickle"])
@pytest.mark.parametrize("kind", KINDS)
def test_pickled_payload_in_a_ckpt_is_never_run_and_the_previous_checkpoint_loads(
        two_checkpoints, kind, form, tmp_path, monkeypatch, caplog):
    folder, a, state_a, b = two_checkpoints
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    write_payload(b.path / f"{kind}.ckpt", marker, form)

    run, loaded = recover_fresh(folder)

    assert not marker.exists()
    assert loaded.path == a.path
    assert_same(run.snapshot(), state_a)
    text = warnings_text(caplog)
    assert str(b.path) in text and f"{kind}.ckpt" in text
    if form != "pickle":
        assert "pickled Python objects" in text and "nothing in it was run" in text
    # The environment variable is as the user set it.
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_only_payload_checkpoints_end_in_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    run = Setup(tmp_path / "save")
    ckpt = run.checkpointer.save_checkpoint()
    write_payload(ckpt.path / "optimizer.ckpt", marker, "torch")
    with pytest.raises(CheckpointError) as caught:
        Setup(tmp_path / "save").checkpointer.recover_if_possible()
    message = str(caught.value)
    assert f"No checkpoint in {tmp_path / 'save'} can be loaded" in message
    assert str(ckpt.path) in message and "optimizer.ckpt" in message
    assert "delete" in message
    assert not marker.exists()


def test_load_tensors_refuses_objects_even_when_the_default_is_relaxed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    write_payload(tmp_path / "x.ckpt", marker, "torch")
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_tensors(tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="pickled Python objects"):
        RandomState().load(tmp_path / "x.ckpt", end_of_epoch=True)
    assert not marker.exists()


def test_a_custom_hook_that_calls_torch_load_plainly_is_kept_safe_too(tmp_path, monkeypatch):
    # A hook that is not ours (custom or registered by another class) runs while every torch.load
    # is forced to weights_only.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    checkpointer = Checkpointer(tmp_path / "save", recoverables={"thing": {}},
                                custom_save_hooks={"thing": lambda obj, path: torch.save({}, path)},
                                custom_load_hooks={"thing": lambda obj, path, end: torch.load(path)})
    ckpt = checkpointer.save_checkpoint()
    write_payload(ckpt.path / "thing.ckpt", marker, "torch")
    with pytest.raises(CheckpointError, match="thing.ckpt"):
        checkpointer.recover_if_possible()
    assert not marker.exists()


def test_load_hooks_of_every_kind_are_ours(tmp_path):
    run = Setup(tmp_path)
    replaced = (checkpoints.torch_recovery, AdaptedModel.loader)
    for name, obj in run.checkpointer.recoverables.items():
        assert run.checkpointer.load_hook(name, obj) not in replaced, name


# ==================================================================== crafted CKPT.yaml
@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:builtins.open ['{marker}', 'w']",
    "!!python/name:os.system",
    "!!python/object/new:builtins.open ['{marker}', 'w']",
])
def test_meta_file_with_python_tags_is_not_run_and_skipped_with_a_warning(
        two_checkpoints, tag, tmp_path, caplog):
    folder, a, state_a, b = two_checkpoints
    marker = tmp_path / "marker"
    value = tag.format(marker=marker)
    (b.path / "CKPT.yaml").write_text(
        f"end-of-epoch: true\nunixtime: 99999999999.0\nvalid_acc: 0.99\nx: {value}\n")

    listed = Setup(folder).checkpointer.list_checkpoints()
    assert [c.path for c in listed] == [a.path]
    run, loaded = recover_fresh(folder, max_key="valid_acc")

    assert not marker.exists()
    assert loaded.path == a.path
    assert_same(run.snapshot(), state_a)
    text = warnings_text(caplog)
    assert f"Skipping checkpoint {b.path}" in text and "not plain data" in text


# ==================================================================== damaged newest checkpoint
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _wrong_exp_avg(state):
    first = next(iter(state["state"].values()))
    first["exp_avg"] = torch.zeros(7)


DAMAGE = {
    "model_truncated": lambda c: _truncate(c / "model.ckpt"),
    "model_zero_bytes": lambda c: (c / "model.ckpt").write_bytes(b""),
    "model_garbage": lambda c: (c / "model.ckpt").write_bytes(os.urandom(300)),
    "model_deleted": lambda c: (c / "model.ckpt").unlink(),
    "model_a_folder": lambda c: ((c / "model.ckpt").unlink(), (c / "model.ckpt").mkdir()),
    "model_a_fifo": lambda c: ((c / "model.ckpt").unlink(), os.mkfifo(c / "model.ckpt")),
    "model_not_a_dict": lambda c: torch.save(torch.zeros(3), c / "model.ckpt"),
    "model_wrong_shape": lambda c: _edit(c / "model.ckpt",
                                         lambda s: s.update({"0.weight": torch.zeros(5, 3)})),
    "model_missing_tensor": lambda c: _edit(c / "model.ckpt", lambda s: s.pop("1.bias")),
    "model_extra_tensor": lambda c: _edit(c / "model.ckpt",
                                          lambda s: s.update({"2.weight": torch.zeros(1)})),
    "adapted_missing_trained_tensor": lambda c: _edit(
        c / "adapted.ckpt", lambda s: s.pop("adapted_model.0.adapter_up_proj.weight")),
    "optimizer_truncated": lambda c: _truncate(c / "optimizer.ckpt"),
    "optimizer_wrong_state_shape": lambda c: _edit(c / "optimizer.ckpt", _wrong_exp_avg),
    "optimizer_extra_group": lambda c: _edit(
        c / "optimizer.ckpt", lambda s: s["param_groups"].append(dict(s["param_groups"][0]))),
    "scheduler_garbage": lambda c: (c / "lr_scheduler.ckpt").write_bytes(b"\x80\x02garbage"),
    "scheduler_missing_keys": lambda c: torch.save({"T_max": 10}, c / "lr_scheduler.ckpt"),
    "scheduler_wrong_type": lambda c: _edit(c / "lr_scheduler.ckpt",
                                            lambda s: s.update({"last_epoch": "many"})),
    "scaler_zero_bytes": lambda c: (c / "scaler.ckpt").write_bytes(b""),
    "random_state_truncated": lambda c: _truncate(c / "random_state.ckpt"),
    "random_state_not_states": lambda c: torch.save({"x": 1}, c / "random_state.ckpt"),
    "random_state_bad_python_state": lambda c: _edit(
        c / "random_state.ckpt", lambda s: s[0].update({"python": (3, (1, 2), None)})),
    "counter_garbage": lambda c: (c / "counter.ckpt").write_text("abc"),
    "counter_empty": lambda c: (c / "counter.ckpt").write_text(""),
    "meta_empty": lambda c: (c / "CKPT.yaml").write_text(""),
    "meta_garbage": lambda c: (c / "CKPT.yaml").write_text("{[: ::\n  - ]"),
    "meta_binary": lambda c: (c / "CKPT.yaml").write_bytes(b"\xff\xfe\x00\x81" * 50),
    "meta_a_fifo": lambda c: ((c / "CKPT.yaml").unlink(), os.mkfifo(c / "CKPT.yaml")),
    "meta_not_a_mapping": lambda c: (c / "CKPT.yaml").write_text("- 1\n- 2\n"),
    "meta_missing_keys": lambda c: (c / "CKPT.yaml").write_text("valid_acc: 0.6\n"),
    "meta_unixtime_text": lambda c: (c / "CKPT.yaml").write_text(
        "end-of-epoch: true\nunixtime: yesterday\n"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
        two_checkpoints, damage, caplog):
    folder, a, state_a, b = two_checkpoints
    DAMAGE[damage](b.path)

    run, loaded = recover_fresh(folder)

    assert loaded.path == a.path
    assert_same(run.snapshot(), state_a)  # every recoverable, none left from the failed attempt
    assert str(b.path) in warnings_text(caplog)
    # Later look-ups in this process do not offer the damaged one again.
    assert run.checkpointer.find_checkpoint().path == a.path


def test_half_loaded_attempt_leaves_nothing_behind(two_checkpoints):
    # B's modules load before its counter fails: all of them must come from A in the end.
    folder, a, state_a, b = two_checkpoints
    (b.path / "counter.ckpt").write_text("not a number")
    run, loaded = recover_fresh(folder)
    assert loaded.path == a.path
    assert_same(run.snapshot()["model"], state_a["model"])
    assert_same(run.snapshot()["optimizer"], state_a["optimizer"])


def test_dataloader_position_of_a_failed_intra_epoch_checkpoint_is_not_kept(tmp_path):
    folder = tmp_path / "save"
    run = Setup(folder, dataloader=True)
    a = run.checkpointer.save_checkpoint(end_of_epoch=True)
    batches = iter(run.loader)
    for _ in range(3):
        next(batches)
    b = run.checkpointer.save_checkpoint(end_of_epoch=False)
    assert (b.path / "dataloader-TRAIN.ckpt").read_text() == "3"
    (b.path / "model.ckpt").write_bytes(b"")  # loaded after the dataloader position

    fresh = Setup(folder, dataloader=True)
    assert fresh.checkpointer.recover_if_possible().path == a.path
    assert fresh.loader._speechbrain_recovery_skip_to is None
    assert len(list(fresh.loader)) == 10  # the whole epoch, from its start


# ==================================================================== best checkpoint (max_key)
def test_evaluation_falls_back_to_the_next_best_checkpoint(tmp_path, caplog):
    folder = tmp_path / "save"
    run = Setup(folder)
    saved = {}
    for acc in (0.7, 0.9, 0.5):
        run.step()
        saved[acc] = (run.checkpointer.save_checkpoint(meta={"valid_acc": acc}), run.snapshot())
    _truncate(saved[0.9][0].path / "model.ckpt")

    fresh, loaded = recover_fresh(folder, max_key="valid_acc")

    assert loaded.path == saved[0.7][0].path
    assert_same(fresh.snapshot(), saved[0.7][1])
    assert str(saved[0.9][0].path) in warnings_text(caplog)
    # What the recipe reports as the tested checkpoint is the one that was loaded.
    assert fresh.checkpointer.find_checkpoint(max_key="valid_acc").path == saved[0.7][0].path


def test_key_that_is_not_a_number_is_skipped_with_a_warning(two_checkpoints, caplog):
    folder, a, state_a, b = two_checkpoints
    meta = (b.path / "CKPT.yaml").read_text().replace("valid_acc: 0.6", "valid_acc: high")
    (b.path / "CKPT.yaml").write_text(meta)
    run, loaded = recover_fresh(folder, max_key="valid_acc")
    assert loaded.path == a.path
    assert "valid_acc" in warnings_text(caplog) and str(b.path) in warnings_text(caplog)


# ==================================================================== nothing loadable
def test_every_checkpoint_damaged_ends_in_a_clear_error(two_checkpoints):
    folder, a, state_a, b = two_checkpoints
    (a.path / "model.ckpt").write_bytes(b"")
    (b.path / "CKPT.yaml").write_text("")
    with pytest.raises(CheckpointError) as caught:
        recover_fresh(folder)
    message = str(caught.value)
    assert f"No checkpoint in {folder} can be loaded" in message
    assert str(a.path) in message and str(b.path) in message
    assert f"delete {folder}" in message


def test_only_an_unreadable_meta_file_is_an_error_not_a_fresh_start(tmp_path):
    run = Setup(tmp_path / "save")
    ckpt = run.checkpointer.save_checkpoint()
    (ckpt.path / "CKPT.yaml").write_text("{{{")
    fresh = Setup(tmp_path / "save")
    assert fresh.checkpointer.list_checkpoints() == []  # listing does not crash
    assert fresh.checkpointer.find_checkpoints() == []
    with pytest.raises(CheckpointError, match="CKPT.yaml"):
        fresh.checkpointer.recover_if_possible()


def test_no_checkpoint_yet_is_a_fresh_start(tmp_path):
    assert Setup(tmp_path / "save").checkpointer.recover_if_possible() is None


def test_save_and_keep_only_works_beside_a_folder_with_an_unreadable_meta(two_checkpoints):
    folder, a, state_a, b = two_checkpoints
    (b.path / "CKPT.yaml").write_text("")
    run, loaded = recover_fresh(folder)
    run.checkpointer.save_and_keep_only(meta={"valid_acc": 0.1}, max_keys=["valid_acc"])
    # A (best valid_acc) and the new one are kept; the damaged folder is left for inspection.
    assert len(run.checkpointer.list_checkpoints()) == 2
    assert b.path.exists()


# ==================================================================== end to end
@pytest.mark.slow
def test_recipe_with_a_crafted_checkpoint_runs_nothing_and_says_what_to_do(
        fsc_data, tiny_ast, tmp_path):
    from conftest import run_train

    out = tmp_path / "run"
    run_train("FSC", "linear", fsc_data, tiny_ast, out)
    (checkpoint,) = (out / "save").glob("CKPT+*")
    marker = tmp_path / "marker"
    write_payload(checkpoint / "classifier.ckpt", marker, "torch")
    for name in ("results.json", "fold_result.json"):
        (out / name).unlink()
    shutil.rmtree(out / "petl_model", ignore_errors=True)

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        proc = run_train("FSC", "linear", fsc_data, tiny_ast, out, "--test_only", check=False)
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]

    assert not marker.exists()
    assert proc.returncode != 0
    assert f"No checkpoint in {out / 'save'} can be loaded" in proc.stdout
    assert "pickled Python objects" in proc.stdout
    assert "Error in the checkpoints" in proc.stdout and "Traceback" not in proc.stdout
