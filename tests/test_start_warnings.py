"""A warning, logged once per model build, when a method's settings start the model away from the
pretrained one (e.g. a sequential adapter without residual replaces the sublayer output by ~0),
saying what happens and the option that changes it; and no warning when the start is the
pretrained model."""

import logging

import pytest
import torch

from petl_modules.backbones import Backbone
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.config import METHODS, build_petl_model, method_class, method_config
from petl_modules.methods.lora import LoRA
from petl_modules.methods.moa import MixtureOfAdapters
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO
from methods_helpers import adapted

LOGGER = "petl_modules.methods.adapted"


def start_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def output(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.mark.parametrize("seq_or_par", ["parallel", "sequential"])
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("residual", [False, True])
def test_an_adapter_warns_once_exactly_when_it_starts_away_from_the_pretrained_model(
        seq_or_par, placement, residual, tiny_ast, caplog):
    """The eight placement cases, Houlsby (two locations, 2 layers: four adapters), identity
    init: one warning iff the start output differs from the plain model's."""
    x = torch.randn(2, 64, 128)
    plain = output(adapted(tiny_ast, max_frames=64), x)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = adapted(tiny_ast, Adapter, ["attention", "ffn"], max_frames=64, adapter_block="bottleneck",
                        reduction_rate=8, seq_or_par=seq_or_par, placement=placement,
                        apply_residual=residual)
    warnings = start_warnings(caplog)
    away = not torch.allclose(output(model, x), plain, atol=1e-5)
    assert len(warnings) == int(away)
    if away:
        fix = "--apply_residual=False" if residual else "--apply_residual=True"
        assert fix in warnings[0] and f"seq_or_par={seq_or_par}" in warnings[0]


def test_the_sequential_adapter_of_the_yaml_warns_once_per_build(tiny_ast, tmp_path, caplog):
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(tiny_ast), max_frames=64, reduction_rate=8,
                   seq_or_par="sequential", adapter_type="Houlsby")
    text = compose_hparams(REPO / "hparams" / "adapter.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
                           options)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        load_hparams(text)
    warnings = start_warnings(caplog)
    assert len(warnings) == 1
    assert "replaced by the adapter's output" in warnings[0] and "--apply_residual=True" in warnings[0]


@pytest.mark.parametrize("adapter_class,points,kwargs", [
    (Adapter, ["ffn"], {"adapter_block": "conformer", "reduction_rate": 8}),
    (LoRA, ["q", "v"], {"reduction_rate": 8}),
    (MixtureOfAdapters, ["attention"], {"kind": "soft", "num_adapters": 2, "reduction_rate": 8}),
    (MixtureOfAdapters, ["attention"], {"kind": "dense", "num_adapters": 2, "reduction_rate": 8}),
])
@pytest.mark.parametrize("init", ["identity", "reference"])
def test_reference_init_warns_that_it_starts_away_and_names_init_identity(
        adapter_class, points, kwargs, init, tiny_ast, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        adapted(tiny_ast, adapter_class, points, max_frames=64, init=init, **kwargs)
    warnings = start_warnings(caplog)
    assert len(warnings) == (init == "reference")
    assert all("--init=identity" in w for w in warnings)


NARROW_METHODS = [m for m in METHODS if "reduction_rate" in method_class(m).options()]


def test_methods_with_a_width_are_found_in_the_registry():
    assert {"adapter", "lora", "dense_moa", "soft_moa"} <= set(NARROW_METHODS)


@pytest.mark.parametrize("method", NARROW_METHODS)
@pytest.mark.parametrize("reduction_rate,narrow", [(32, True), (16, False)])
def test_a_width_below_four_warns_once_naming_reduction_rate(method, reduction_rate, narrow, tiny_ast,
                                                              caplog):
    """On the tiny AST (hidden 64) reduction_rate 32 gives a bottleneck / rank of 2, 16 gives 4."""
    lobe = Backbone(tiny_ast, max_frames=64)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        build_petl_model(lobe, method_config(method, {"reduction_rate": reduction_rate}))
    warnings = [w for w in start_warnings(caplog) if "too narrow" in w]
    assert len(warnings) == int(narrow)
    if narrow:
        assert "of 2 (round(64 / 32))" in warnings[0] and "--reduction_rate=16 or less" in warnings[0]
