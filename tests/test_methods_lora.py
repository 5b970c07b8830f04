"""LoRA (petl_modules/methods/lora.py): targets, rank and scaling, counts on AST-base, merge."""

import pytest
import torch

from petl_modules.methods.lora import LoRA, lora_points, merge_lora

from methods_helpers import (
    LAYERS,
    LN,
    D,
    adapted,
    count,
    final_norm_names,
    pretrained_trainable,
    unchanged_after_steps,
)


@pytest.mark.parametrize("targets", ["Wq", "Wq,Wk", "Wq,Wv", "Wq,Wk,Wv,Wo"])
@pytest.mark.parametrize("rr", [128, 64])
def test_lora_trains_a_and_b_of_each_target_projection(ast_base_folder, targets, rr):
    model = adapted(ast_base_folder, LoRA, lora_points(targets), reduction_rate=rr, lora_alpha=8)
    r = D // rr
    n_targets = len(targets.split(","))
    assert count(model) == LAYERS * n_targets * 2 * D * r + LN
    assert pretrained_trainable(model) == final_norm_names()
    names = {n for n, p in model.named_parameters() if p.requires_grad and "lora" in n}
    projections = {n.split(".attention.")[1].split(".")[0] for n in names}
    assert projections == {f"{t[1].lower()}_proj" for t in targets.split(",")}


def test_lora_count_equals_the_papers_table(ast_base_folder):
    model = adapted(ast_base_folder, LoRA, lora_points("Wq,Wv"), reduction_rate=128, lora_alpha=8)
    assert count(model) - LN == 221_184


def test_lora_rank_and_scaling_follow_the_reference():
    lora = LoRA(torch.nn.Linear(768, 768), hidden_size=768, reduction_rate=128, lora_alpha=8)
    assert lora.lora_A.shape == (6, 768) and lora.lora_B.shape == (768, 6)
    assert lora.scaling == 8 / 128


@pytest.mark.parametrize("init", ["identity", "reference"])
def test_lora_forward_equals_its_merged_weight_and_bias(init):
    torch.manual_seed(0)
    lora = LoRA(torch.nn.Linear(32, 24), reduction_rate=4, lora_alpha=16, init=init)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 5, 32)
    expected = x @ (lora.pretrained_module.weight + lora.scaling * lora.lora_B @ lora.lora_A).T \
        + lora.pretrained_module.bias
    torch.testing.assert_close(lora(x), expected)
    torch.testing.assert_close(torch.nn.functional.linear(x, lora.weight, lora.bias), expected)
    merged = lora.merge()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), expected)


def test_lora_weight_property_carries_gradient_for_hosts_that_read_weights():
    """WavLM hands ``q_proj.weight`` to F.multi_head_attention_forward: the update must train."""
    lora = LoRA(torch.nn.Linear(16, 16), reduction_rate=4)
    lora.weight.sum().backward()
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0


def test_lora_is_the_identity_at_start_and_merges_into_plain_linears(tiny_ast):
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = adapted(tiny_ast, LoRA, lora_points("Wq,Wk,Wv,Wo"), max_frames=64, reduction_rate=8).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0])
        for module in model.modules():
            if isinstance(module, LoRA):
                module.lora_B.normal_()
        trained = model(x)[0]
    names = merge_lora(model)
    assert len(names) == 2 * 4 and not any(isinstance(m, LoRA) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init,steps", [("identity", 2), ("reference", 1)])
def test_every_lora_tensor_learns(tiny_ast, init, steps):
    model = adapted(tiny_ast, LoRA, lora_points("Wq,Wk,Wv,Wo"), max_frames=64, reduction_rate=8, init=init)
    assert unchanged_after_steps(model, steps=steps) == []


def test_lora_targets_accept_reference_spellings_and_refuse_unknown_ones():
    assert lora_points("Wq,Wk,Wv,Wo") == ["q", "k", "v", "o"]
    assert lora_points(["q", "Wv"]) == ["q", "v"]
    with pytest.raises(ValueError, match="unknown target 'Wx'"):
        lora_points("Wq,Wx")
    with pytest.raises(ValueError, match="zero-width"):
        LoRA(torch.nn.Linear(64, 64), hidden_size=64, reduction_rate=256)
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRA(torch.nn.LayerNorm(64))
