"""LayerDrop of fine-tuned layers (``petl_modules.backbones.layerdrop``), every lobe that has it.

Oracle: the same draws (same seed) with and without DDP. In one process a dropped layer is skipped
(its parameters get no gradient); under DDP (faked here: the real two-process run is in
test_distributed_layerdrop.py) it runs and its output is thrown away: the same output, bit for
bit, and zero gradients instead of none, so that every process reduces the same tensors.
"""

import pytest
import torch

from petl_modules.backbones import Backbone, layerdrop
from petl_modules.methods.selective import FullFTConfig

from conftest import TINY_BACKBONES

RATE_NAMES = ("layerdrop", "encoder_layerdrop")


def fine_tuned(source, rate):
    """The lobe of ``source`` with every layer trained, in train mode, LayerDrop at ``rate``."""
    torch.manual_seed(0)
    backbone = Backbone(source)
    names = [n for n in RATE_NAMES if hasattr(backbone.config, n)]
    if not names:
        return None
    setattr(backbone.config, names[0], rate)
    model = FullFTConfig(unfrozen_layers="all").build(backbone)
    return model.train()


def step(model, waveform, seed):
    """Output and ``{parameter: grad or None}`` of the layers after one backward."""
    inputs = torch.stack([model.adapted_model.input_processor(w) for w in waveform])
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    hidden = model(inputs)[0]
    hidden.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if ".layers." in n and p.requires_grad}
    return hidden.detach(), grads, torch.get_rng_state()


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_a_dropped_layer_is_skipped_alone_and_runs_for_nothing_under_ddp(backbone, tiny_backbones,
                                                                          monkeypatch):
    model = fine_tuned(tiny_backbones[backbone], rate=0.5)
    if model is None:
        assert backbone == "ast"  # the one family without LayerDrop
        return
    waveform = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    # The first seed whose draws drop a layer and keep another (the tiny models have 2 layers).
    for seed in range(100):
        alone, alone_grads, alone_rng = step(model, waveform, seed)
        skipped = {n for n, g in alone_grads.items() if g is None}
        if skipped and len(skipped) < len(alone_grads):
            break
    monkeypatch.setattr(layerdrop, "reduced_across_processes", lambda: True)
    ddp, ddp_grads, ddp_rng = step(model, waveform, seed)

    assert skipped and len(skipped) < len(alone_grads)  # one layer dropped, one ran
    assert torch.equal(alone, ddp)
    assert torch.equal(alone_rng, ddp_rng)  # the discarded layer's draws were undone
    assert all(ddp_grads[n] is not None and not ddp_grads[n].any() for n in skipped)
    for name in set(alone_grads) - skipped:
        torch.testing.assert_close(ddp_grads[name], alone_grads[name], rtol=0, atol=0)

