"""(IA)3 (petl_modules/methods/ia3.py): rescaled keys, values and FFN activations against the
formula and PEFT's ``IA3Config`` layers, identity start, merge, counts on AST-base."""

import peft
import torch

from petl_modules.backbones import Backbone
from petl_modules.methods.ia3 import IA3, IA3Config
from petl_modules.methods.lora import merge_lora

from methods_helpers import LAYERS, LN, D, adapted, count, final_norm_names, pretrained_trainable, unchanged_after_steps


def scaled(module, point):
    torch.manual_seed(0)
    ia3 = IA3(module, point=point)
    with torch.no_grad():
        ia3.ia3_l.uniform_(0.5, 1.5)
    return ia3


def test_ia3_rescales_the_output_or_at_ffn_out_the_input():
    out_scaled, in_scaled = scaled(torch.nn.Linear(12, 8), "k"), scaled(torch.nn.Linear(12, 8), "ffn_out")
    assert out_scaled.ia3_l.shape == (8,) and in_scaled.ia3_l.shape == (12,)
    x = torch.randn(3, 4, 12)
    for ia3, expected in ((out_scaled, out_scaled.pretrained_module(x) * out_scaled.ia3_l),
                          (in_scaled, in_scaled.pretrained_module(x * in_scaled.ia3_l))):
        torch.testing.assert_close(ia3(x), expected)
        torch.testing.assert_close(torch.nn.functional.linear(x, ia3.weight, ia3.bias), expected)
        torch.testing.assert_close(ia3.merge()(x), expected)
    assert out_scaled.reads_frozen_output and not in_scaled.reads_frozen_output


def test_ia3_equals_pefts_ia3_layers():
    ours = {"k": scaled(torch.nn.Linear(8, 6), "k"), "ffn_out": scaled(torch.nn.Linear(6, 8), "ffn_out")}
    host = torch.nn.Sequential()
    host.add_module("k", torch.nn.Linear(8, 6))
    host.add_module("ffn_out", torch.nn.Linear(6, 8))
    for name, module in ours.items():
        host.get_submodule(name).load_state_dict(module.pretrained_module.state_dict())
    theirs = peft.get_peft_model(host, peft.IA3Config(target_modules=["k", "ffn_out"],
                                                      feedforward_modules=["ffn_out"]))
    with torch.no_grad():
        for name, module in ours.items():
            vector = theirs.base_model.model.get_submodule(name).ia3_l["default"]
            vector.copy_(module.ia3_l.view(vector.shape))
    x = torch.randn(5, 8)
    torch.testing.assert_close(theirs.eval()(x), ours["ffn_out"](ours["k"](x)), rtol=0, atol=1e-6)


def test_ia3_count_on_ast_base_and_identity_start(ast_base_folder, tiny_ast):
    model = IA3Config().build(Backbone(ast_base_folder))
    assert count(model) - LN == LAYERS * (D + D + 4 * D) == 55_296
    assert pretrained_trainable(model) - {n for n in pretrained_trainable(model) if "ia3_l" in n} \
        == final_norm_names()
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = IA3Config(ia3_targets="Wq,Wk,Wv,Wo,ffn_in,ffn_out").build(
        Backbone(tiny_ast, max_frames=64)).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)
        for module in model.modules():
            if isinstance(module, IA3):
                module.ia3_l.uniform_(0.5, 1.5)
        trained = model(x)[0]
    assert len(merge_lora(model)) == 2 * 6
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trained, rtol=1e-4, atol=1e-4)


def test_every_ia3_tensor_learns_from_the_first_step(tiny_ast):
    model = IA3Config().build(Backbone(tiny_ast, max_frames=64))
    assert unchanged_after_steps(model, steps=1) == []
