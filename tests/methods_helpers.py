"""Helpers shared by tests/test_methods_*.py (building adapted lobes, what trains, one step)."""

import re

import torch

from petl_modules.backbones import Backbone
from petl_modules.methods.adapted import AdaptedBackbone

from conftest import zero_gradient_by_construction

D, LAYERS = 768, 12  # AST-base
LN = 2 * D  # one LayerNorm (weight + bias)


def adapted(folder, adapter_class=None, points=(), trainable=("final_norm",), max_frames=None, **kwargs):
    """A fresh lobe from ``folder`` with ``adapter_class`` at ``points``."""
    lobe = Backbone(folder, max_frames=max_frames) if max_frames else Backbone(folder)
    return AdaptedBackbone(lobe, adapter_class, list(points), list(trainable), kwargs)


def trainable(model):
    """``{name: numel}`` of the trainable parameters."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def count(model):
    return sum(trainable(model).values())


def pretrained_trainable(model):
    """Trainable pretrained parameters (outside inserted modules), layer index replaced by N."""
    names = set()
    for name in trainable(model):
        if re.search(r"\.(lora_|prompts|prefix_|adapter\.|moa\.)", name):
            continue
        names.add(re.sub(r"layers\.\d+", "layers.N", name.replace(".pretrained_module", "")))
    return names


def final_norm_names():
    return {"adapted_model.model.layernorm.weight", "adapted_model.model.layernorm.bias"}


def ln_names(which):
    return {f"adapted_model.model.layers.N.{which}.{p}" for p in ("weight", "bias")}


def unchanged_after_steps(model, steps=1, frames=64, lr=1e-2):
    """Trains ``model`` ``steps`` AdamW steps (no weight decay: only gradients move tensors) on
    random data (loss: squared error to a random target) and returns the names of the trainable
    tensors that did not change.

    With an identity start (a zero up-projection, LoRA's zero B) the tensors before the zero one
    get an exactly zero gradient at the first step, so identity-start methods need 2 steps; the
    reference's bottleneck (zero down and up) would stay dead whatever the number of steps.
    Tensors with no gradient by construction (``conftest.ZERO_GRADIENT_BY_CONSTRUCTION``) are
    left out: whether rounding moves them says nothing."""
    torch.manual_seed(1)
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    x = torch.randn(4, frames, 128)
    for _ in range(steps):
        hidden, _ = model(x)
        target = torch.randn_like(hidden)
        loss = ((hidden - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sorted(n for n, p in params.items()
                  if torch.equal(p.detach(), before[n]) and not zero_gradient_by_construction(n))
