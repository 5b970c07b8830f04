"""Linear probing from cached backbone outputs (petl_modules/training/cache.py, cache_backbone_outputs)."""

import json

import pytest
import torch

from petl_modules.backbones import Backbone
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.classifier import Classifier
from petl_modules.training.cache import (
    CacheConfigError,
    check_cacheable,
    head_input,
    normalised_pooled,
)

from conftest import REPO, read_results, run_train


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_cached_vectors_give_the_uncached_logits_and_gradients(pooling, tiny_ast):
    torch.manual_seed(0)
    model = AdaptedBackbone(Backbone(tiny_ast, max_frames=64), trainable=["final_norm"])
    norm = model.adapted_model.model.layernorm
    with torch.no_grad():  # a LayerNorm that has trained: not the identity affine
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    head = Classifier(64, 5, pooling=pooling)
    inputs = torch.randn(3, 64, 128)

    plain = head(*model(inputs))
    plain.square().sum().backward()
    grads = [norm.weight.grad.clone(), norm.bias.grad.clone()]
    norm.zero_grad()

    cached = head(head_input(model, normalised_pooled(model, head, inputs)))
    cached.square().sum().backward()
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close([norm.weight.grad, norm.bias.grad], grads, rtol=1e-4, atol=1e-5)


def test_cache_refused_where_it_would_be_wrong(tiny_ast):
    lobe = Backbone(tiny_ast, max_frames=64)
    hparams = {"method": "linear", "petl_model": AdaptedBackbone(lobe, trainable=["final_norm"]),
               "pooling": "mean", "augmentation": None}
    check_cacheable(hparams)  # linear probing as shipped: accepted

    wrong = dict(hparams, method="bitfit",
                 petl_model=AdaptedBackbone(Backbone(tiny_ast, max_frames=64), trainable=["biases"]),
                 augmentation=torch.nn.Identity(), pooling="prompts")
    with pytest.raises(CacheConfigError) as err:
        check_cacheable(wrong)
    message = str(err.value)
    for words in ("linear probing and the layer sum only", "--augmentation=null", "besides the final LayerNorm",
                  "pooling 'prompts'", "--cache_backbone_outputs=False"):
        assert words in message


@pytest.mark.slow
def test_recipe_refuses_the_cache_with_specaugment(tmp_path, tiny_ast):
    proc = run_train("ESC50", "linear", tmp_path / "nowhere", tiny_ast, tmp_path / "out",
                     "--cache_backbone_outputs=True", check=False)
    assert proc.returncode != 0
    assert "cache_backbone_outputs=True is refused" in proc.stdout
    assert "--augmentation=null" in proc.stdout


@pytest.mark.slow
def test_cached_linear_run_gives_the_uncached_results(fsc_data, tiny_ast, tmp_path):
    runs = {}
    for cached in (False, True):
        out = tmp_path / f"cached_{cached}"
        run_train("FSC", "linear", fsc_data, tiny_ast, out,
                  f"--cache_backbone_outputs={cached}")
        (ckpt,) = (out / "save").glob("CKPT+*")
        runs[cached] = (read_results(out)["folds"][0],
                        torch.load(ckpt / "petl_model.ckpt", weights_only=True))
    (plain, plain_weights), (fast, fast_weights) = runs[False], runs[True]
    assert fast["test_accuracy"] == plain["test_accuracy"]
    assert fast["valid_accuracy"] == plain["valid_accuracy"]
    assert fast["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-4)
    torch.testing.assert_close(fast_weights, plain_weights, rtol=1e-4, atol=1e-5)

    (cache_file,) = (tmp_path / "cached_True" / "manifests" / "backbone_cache").glob("*.pt")
    settings = json.loads(cache_file.with_suffix(".json").read_text())
    assert settings["pooling"] == "mean" and settings["input"]["max_frames"] == 64
    assert len(settings["fingerprint"]) == 64
    assert len(torch.load(cache_file, weights_only=True)["wavs"]) == 3 * 31  # every split, once
    assert REPO.joinpath("hparams", "linear.yaml").read_text().count("cache_backbone_outputs: False") == 1
