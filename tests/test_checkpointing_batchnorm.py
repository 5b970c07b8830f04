"""Gradient checkpointing recomputes each layer in backward, in train mode: a conformer adapter's
BatchNorm must not update its running statistics a second time (it used to: num_batches_tracked
2 after one step, the momentum in effect doubled), and the recomputation must see the padding mask
of the forward. A step with and without checkpointing gives the same outputs, gradients, buffers
and parameters."""

from functools import partial

import pytest
import torch

from petl_modules.backbones import Backbone
from petl_modules.methods.adapted import (
    AdaptedBackbone,
    checkpoint_contexts,
    recomputing,
    token_mask,
)
from petl_modules.methods.adapters import Adapter, MaskedBatchNorm1d
from petl_modules.methods.moa import MixtureOfAdapters

from waveform_helpers import padded_batch

ATOL = 1e-6
CONFORMER = dict(adapter_block="conformer", reduction_rate=8, kernel_size=3, init="reference")
SOFT_CONVPASS = dict(kind="soft", adapter_block="convpass", num_adapters=3, num_slots=2,
                     reduction_rate=8, init="reference")


def build(folder, checkpointing, adapter_class, adapter_kwargs, **lobe_options):
    """Houlsby-placed PETL modules (MHSA and FFN) on a lobe of ``folder``."""
    lobe = Backbone(folder, gradient_checkpointing=checkpointing, **lobe_options)
    return AdaptedBackbone(lobe, adapter_class, ["attention", "ffn"], ["final_norm"], adapter_kwargs)


def train_steps(model, inputs, steps=2):
    """``steps`` SGD steps on a fixed loss; returns (outputs, gradients) of each step."""
    torch.manual_seed(0)  # the same dropout masks (Convpass) with and without checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    record = []
    for _ in range(steps):
        hidden, mask = model(*inputs)
        weights = torch.ones(hidden.shape[:2]) if mask is None else mask.float()
        loss = (hidden.square().mean(-1) * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        record.append((hidden.detach().clone(),
                       {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        optimizer.step()
    return record


def bn_calls(model):
    """Counts the forward calls of the PETL BatchNorms (a list that grows)."""
    calls = []
    for module in model.modules():
        if isinstance(module, MaskedBatchNorm1d):
            module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def compare_with_and_without_checkpointing(make, inputs):
    plain, checkpointed = make(False), make(True)
    checkpointed.load_state_dict(plain.state_dict())
    calls = {"plain": bn_calls(plain), "checkpointed": bn_calls(checkpointed)}
    steps = {"plain": train_steps(plain, inputs), "checkpointed": train_steps(checkpointed, inputs)}
    for (out, grads), (out_ckpt, grads_ckpt) in zip(steps["plain"], steps["checkpointed"]):
        torch.testing.assert_close(out_ckpt, out, atol=ATOL, rtol=0)
        assert grads_ckpt.keys() == grads.keys()
        for name in grads:
            torch.testing.assert_close(grads_ckpt[name], grads[name], atol=ATOL, rtol=0, msg=name)
    state, state_ckpt = plain.state_dict(), checkpointed.state_dict()
    assert state.keys() == state_ckpt.keys()
    for name in state:  # every buffer (running statistics, counters) and parameter
        torch.testing.assert_close(state_ckpt[name], state[name], atol=ATOL, rtol=0, msg=name)
    counters = [b for n, b in state_ckpt.items() if n.endswith("num_batches_tracked")]
    assert all(int(c) == 2 for c in counters)  # two steps, two updates
    return calls


def test_conformer_batch_norm_updates_once_per_step_with_checkpointing_on_ast(tiny_ast):
    make = partial(build, str(tiny_ast), adapter_class=Adapter, adapter_kwargs=CONFORMER, max_frames=64)
    calls = compare_with_and_without_checkpointing(make, (torch.randn(2, 64, 128),))
    assert len(calls["checkpointed"]) > len(calls["plain"])  # the layers were recomputed


@pytest.mark.parametrize("model_type,layout", [("wav2vec2", "pre_ln"), ("wav2vec2", "post_ln"),
                                               ("wavlm", "pre_ln")])
def test_conformer_batch_norm_updates_once_per_step_with_checkpointing_on_wav2vec2(
        model_type, layout, waveform_checkpoints):
    """pre_ln: with padding masked (attention mask), so the recomputation must see the mask."""
    folder = waveform_checkpoints[model_type, layout]
    make = partial(build, folder, adapter_class=Adapter, adapter_kwargs=CONFORMER, clip_seconds=None)
    calls = compare_with_and_without_checkpointing(make, padded_batch([0.5, 0.3]))
    assert len(calls["checkpointed"]) > len(calls["plain"])


def test_soft_moa_recomputation_sees_the_padding_mask(waveform_checkpoints):
    folder = waveform_checkpoints["wavlm", "pre_ln"]
    make = partial(build, folder, adapter_class=MixtureOfAdapters, adapter_kwargs=SOFT_CONVPASS,
                   clip_seconds=None)
    compare_with_and_without_checkpointing(make, padded_batch([0.5, 0.3]))


def test_one_step_tracks_one_batch():
    """The issue's check, on one adapter: num_batches_tracked is 1 after a checkpointed step."""
    torch.manual_seed(0)
    adapter = Adapter(torch.nn.Identity(), 16, **dict(CONFORMER, reduction_rate=2)).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [6]])
    with token_mask(mask):
        out = torch.utils.checkpoint.checkpoint(adapter, x, use_reentrant=False,
                                                context_fn=checkpoint_contexts)
    assert int(adapter.adapter.batch_norm.num_batches_tracked) == 1
    out.square().sum().backward()  # recomputes the adapter
    assert int(adapter.adapter.batch_norm.num_batches_tracked) == 1
    assert not recomputing()
