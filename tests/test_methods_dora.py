"""DoRA (petl_modules/methods/dora.py): the decomposed update against its formula and against PEFT's
own ``use_dora`` layer, identity start, merge, counts on AST-base, every tensor learns."""

import peft
import pytest
import torch

from petl_modules.methods.dora import DoRA
from petl_modules.methods.lora import lora_points, merge_lora

from methods_helpers import LAYERS, LN, D, adapted, count, final_norm_names, pretrained_trainable, unchanged_after_steps


def trained_dora(in_features=32, out_features=24, seed=0, **options):
    """A DoRA projection with every tensor moved from its start (B, A and the magnitude)."""
    torch.manual_seed(seed)
    dora = DoRA(torch.nn.Linear(in_features, out_features), reduction_rate=4, lora_alpha=16, **options)
    with torch.no_grad():
        dora.lora_B.normal_()
        dora.magnitude.mul_(torch.empty_like(dora.magnitude).uniform_(0.5, 1.5))
    return dora


def test_dora_output_is_the_magnitude_times_the_normalised_direction():
    dora = trained_dora()
    weight, bias = dora.pretrained_module.weight, dora.pretrained_module.bias
    direction = weight + dora.scaling * dora.lora_B @ dora.lora_A
    expected_weight = dora.magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(dora(x), x @ expected_weight.T + bias)
    torch.testing.assert_close(dora.weight, expected_weight)
    merged = dora.merge()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), x @ expected_weight.T + bias)


def test_dora_equals_pefts_use_dora_layer():
    """The same tensors in PEFT's LoRA layer with ``use_dora=True`` give the same output."""
    ours = trained_dora()
    host = torch.nn.Sequential()
    host.add_module("proj", torch.nn.Linear(32, 24))
    host.proj.load_state_dict(ours.pretrained_module.state_dict())
    rank = ours.lora_A.shape[0]
    theirs = peft.get_peft_model(host, peft.LoraConfig(r=rank, lora_alpha=ours.scaling * rank,
                                                       target_modules=["proj"], use_dora=True))
    layer = theirs.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
        layer.lora_magnitude_vector["default"].weight.copy_(ours.magnitude)
    x = torch.randn(4, 32)
    torch.testing.assert_close(theirs.eval()(x), ours(x), rtol=0, atol=1e-6)


def test_dora_starts_as_the_pretrained_projection_and_its_norm_gets_no_gradient():
    dora = DoRA(torch.nn.Linear(16, 8), reduction_rate=4)
    x = torch.randn(5, 16)
    assert torch.equal(dora(x), dora.pretrained_module(x))
    torch.testing.assert_close(dora.magnitude, dora.pretrained_module.weight.norm(dim=1))
    trained = trained_dora(16, 8)
    trained(x).square().sum().backward()
    gain = (trained.magnitude / trained.direction_norm()).detach()
    # with the norm a constant, the update's gradient is the plain LoRA one scaled by the gain
    grad_out = 2 * trained(x).detach()
    expected = trained.scaling * (gain[:, None] * grad_out.T) @ (x @ trained.lora_A.T).detach()
    torch.testing.assert_close(trained.lora_B.grad, expected, rtol=1e-4, atol=1e-5)


def test_dora_count_on_ast_base_is_loras_plus_a_magnitude_per_output(ast_base_folder):
    model = adapted(ast_base_folder, DoRA, lora_points("Wq,Wv"), reduction_rate=128, lora_alpha=8)
    assert count(model) - LN == 221_184 + LAYERS * 2 * D == 239_616
    assert pretrained_trainable(model) - {n for n in pretrained_trainable(model) if ".magnitude" in n} \
        == final_norm_names()


def test_dora_is_the_identity_on_ast_and_merges(tiny_ast):
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = adapted(tiny_ast, DoRA, lora_points("Wq,Wv,ffn_in,ffn_out"), max_frames=64, reduction_rate=8).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)
        for module in model.modules():
            if isinstance(module, DoRA):
                module.lora_B.normal_()
                module.magnitude.mul_(1.2)
        trained = model(x)[0]
    assert len(merge_lora(model)) == 2 * 4
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init,steps", [("identity", 2), ("reference", 1)])
def test_every_dora_tensor_learns(tiny_ast, init, steps):
    model = adapted(tiny_ast, DoRA, lora_points("Wq,Wk,Wv,Wo"), max_frames=64, reduction_rate=8, init=init)
    assert unchanged_after_steps(model, steps=steps) == []
