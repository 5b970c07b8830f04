"""VeRA (petl_modules/methods/vera.py): shared frozen random matrices and trained vectors, against
the formula and PEFT's ``VeraConfig`` layers; the matrices stored once in a model folder; identity
start, merge, counts on AST-base."""

import peft
import torch
from safetensors import safe_open

from petl_modules.backbones import Backbone
from petl_modules.methods import method_config
from petl_modules.methods.lora import merge_lora
from petl_modules.methods.vera import VeRA, VeraConfig, VeraProjections
from petl_modules.model import PETLModel

from methods_helpers import LAYERS, LN, D, count, unchanged_after_steps


def moved(vera, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vera.lambda_b.normal_(generator=generator)
        vera.lambda_d.uniform_(-1, 1, generator=generator)
    return vera


def test_vera_adds_the_scaled_product_of_the_shared_matrices_sliced_to_each_projection():
    shared = VeraProjections(rank=4, in_features=12, out_features=10)
    small, large = moved(VeRA(torch.nn.Linear(8, 6), shared)), moved(VeRA(torch.nn.Linear(12, 10), shared), 1)
    assert "projections" in large.__dict__ and "projections" in small._modules  # registered once
    x = torch.randn(3, 8)
    a, b = shared.vera_A[:, :8], shared.vera_B[:6]
    expected = small.pretrained_module(x) + small.lambda_b * ((small.lambda_d * (x @ a.T)) @ b.T)
    torch.testing.assert_close(small(x), expected)
    torch.testing.assert_close(torch.nn.functional.linear(x, small.weight, small.bias), expected)
    torch.testing.assert_close(small.merge()(x), expected)
    assert not any(p.requires_grad for p in shared.parameters()) and not list(shared.parameters())


def test_vera_equals_pefts_vera_layers_given_the_same_matrices():
    shared = VeraProjections(rank=4, in_features=8, out_features=8, seed=3)
    ours = {"q": moved(VeRA(torch.nn.Linear(8, 6), shared)), "o": moved(VeRA(torch.nn.Linear(6, 8), shared), 1)}
    host = torch.nn.Sequential()
    host.add_module("q", torch.nn.Linear(8, 6))
    host.add_module("o", torch.nn.Linear(6, 8))
    for name, module in ours.items():
        host.get_submodule(name).load_state_dict(module.pretrained_module.state_dict())
    theirs = peft.get_peft_model(host, peft.VeraConfig(r=4, target_modules=["q", "o"], save_projection=True))
    inner = theirs.base_model
    with torch.no_grad():
        inner.vera_A["default"].copy_(shared.vera_A)
        inner.vera_B["default"].copy_(shared.vera_B)
        for name, module in ours.items():
            layer = inner.model.get_submodule(name)
            layer.vera_lambda_b["default"].copy_(module.lambda_b)
            layer.vera_lambda_d["default"].copy_(module.lambda_d)
    x = torch.randn(5, 8)
    torch.testing.assert_close(theirs.eval()(x), ours["o"](ours["q"](x)), rtol=0, atol=1e-6)


def test_vera_count_on_ast_base_and_identity_start(ast_base_folder, tiny_ast):
    model = VeraConfig().build(Backbone(ast_base_folder))
    assert count(model) - LN == LAYERS * 2 * (256 + D) == 24_576
    plain = Backbone(tiny_ast, max_frames=64).eval()
    model = VeraConfig(vera_targets="Wq,Wk,Wv,Wo,ffn_in,ffn_out", rank=16).build(
        Backbone(tiny_ast, max_frames=64)).eval()
    (owner,) = [m for m in model.modules() if isinstance(m, VeraProjections)]
    assert owner.vera_A.shape == (16, 128) and owner.vera_B.shape == (128, 16)  # the FFN's sizes
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)
        for module in model.modules():
            if isinstance(module, VeRA):
                moved(module)
        trained = model(x)[0]
    assert len(merge_lora(model)) == 2 * 6
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trained, rtol=1e-4, atol=1e-4)


def test_every_vera_tensor_learns(tiny_ast):
    model = VeraConfig(rank=8).build(Backbone(tiny_ast, max_frames=64))
    assert unchanged_after_steps(model, steps=2) == []


def test_the_shared_matrices_are_stored_once_and_loaded_from_the_folder(tiny_ast, tmp_path):
    model = PETLModel.create(str(tiny_ast), method_config("vera", {"rank": 8, "vera_targets": "Wq,Wv,ffn_in"}),
                             ["a", "b"], max_frames=64)
    model.save_pretrained(tmp_path / "vera")
    with safe_open(str(tmp_path / "vera" / "petl_weights.safetensors"), "pt") as weights:
        names = list(weights.keys())
        stored = weights.get_tensor(next(n for n in names if n.endswith("vera_A")))
    assert sum(n.endswith(("vera_A", "vera_B")) for n in names) == 2
    assert sum(n.endswith("lambda_b") for n in names) == 2 * 3
    # another seed draws other matrices: the folder's are what the loaded model uses
    config = (tmp_path / "vera" / "petl_config.json")
    config.write_text(config.read_text().replace('"projection_prng_key": 0', '"projection_prng_key": 7'))
    loaded = PETLModel.from_pretrained(tmp_path / "vera")
    (owner,) = [m for m in loaded.modules() if isinstance(m, VeraProjections)]
    assert torch.equal(owner.vera_A, stored)
    assert not torch.equal(VeraProjections(8, 128, 128, seed=7).vera_A, stored)
