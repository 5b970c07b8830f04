"""Adapter tuning (petl_modules/methods/adapters.py): blocks, placements, what trains, counts on AST-base."""

import pytest
import torch

from petl_modules.methods.adapters import (
    Adapter,
    Bottleneck,
    ConformerAdapter,
    Convpass,
    adapter_points,
    adapter_trainable,
)

from methods_helpers import (
    LAYERS,
    LN,
    D,
    adapted,
    count,
    final_norm_names,
    ln_names,
    pretrained_trainable,
    unchanged_after_steps,
)


def block_params(block, r, kernel=31):
    """Closed form of one block's parameters for D = 768 and width r."""
    return {
        "bottleneck": D * r + r + r * D + D,
        "conformer": LN + D * 2 * r + 2 * r + r * kernel + r + 2 * r + r * D + D,
        "convpass": D * r + r + r * r * 3 + r + r * D + D,
    }[block]


def build(folder, adapter_type="Pfeiffer", location="FFN", **kwargs):
    return adapted(folder, Adapter, adapter_points(adapter_type, location),
                   adapter_trainable(adapter_type, location), **kwargs)


@pytest.mark.parametrize("block,rr,r", [("bottleneck", 64, 12), ("conformer", 96, 8), ("convpass", 96, 8)])
@pytest.mark.parametrize("adapter_type,location", [("Pfeiffer", "FFN"), ("Pfeiffer", "MHSA"), ("Houlsby", "FFN")])
def test_adapter_trains_blocks_and_the_layernorm_before_each_adapted_sublayer(
        ast_base_folder, block, rr, r, adapter_type, location):
    model = build(ast_base_folder, adapter_type, location, adapter_block=block, reduction_rate=rr)
    locations = 2 if adapter_type == "Houlsby" else 1
    assert count(model) == LAYERS * locations * (block_params(block, r) + LN) + LN
    norms = {"MHSA": "layernorm_before", "FFN": "layernorm_after"}
    expected = final_norm_names()
    for loc in (["MHSA", "FFN"] if adapter_type == "Houlsby" else [location]):
        expected |= ln_names(norms[loc])
    assert pretrained_trainable(model) == expected


@pytest.mark.parametrize("block,rr,adapter_type,paper", [
    ("bottleneck", 64, "Pfeiffer", 248_976), ("bottleneck", 64, "Houlsby", 497_952),
    ("conformer", 96, "Pfeiffer", 270_720), ("conformer", 96, "Houlsby", 541_440),
])
def test_adapter_counts_equal_the_papers_table(ast_base_folder, block, rr, adapter_type, paper):
    model = build(ast_base_folder, adapter_type, adapter_block=block, reduction_rate=rr, kernel_size=31)
    assert count(model) - LN == paper  # the table excludes the final LayerNorm and the head


class Twice(torch.nn.Module):
    """A stand-in sublayer ``f(x) = 2x + 1`` returning ``(output, weights)`` like attention."""

    def forward(self, x, mask=None):
        return 2 * x + 1, "weights"


@pytest.mark.parametrize("seq_or_par,placement,residual,formula", [
    ("parallel", "before", False, lambda f, a, x: f(x) + a(x)),
    ("parallel", "before", True, lambda f, a, x: f(x) + a(x) + x),
    ("parallel", "after", False, lambda f, a, x: f(x) + a(f(x))),
    ("sequential", "after", False, lambda f, a, x: a(f(x))),
    ("sequential", "after", True, lambda f, a, x: a(f(x)) + f(x)),
    ("sequential", "before", False, lambda f, a, x: f(a(x))),
    ("sequential", "before", True, lambda f, a, x: f(a(x) + x)),
    ("parallel", "auto", False, lambda f, a, x: f(x) + a(x)),
    ("sequential", "auto", False, lambda f, a, x: a(f(x))),
])
def test_adapter_placements_follow_their_formulas_and_keep_the_sublayer_tuple(
        seq_or_par, placement, residual, formula):
    torch.manual_seed(0)
    wrapper = Adapter(Twice(), 16, adapter_block="bottleneck", reduction_rate=4, seq_or_par=seq_or_par,
                      placement=placement, apply_residual=residual, init="reference").eval()
    x = torch.randn(2, 5, 16)
    out, weights = wrapper(x, None)
    f = lambda u: 2 * u + 1  # noqa: E731
    torch.testing.assert_close(out, formula(f, wrapper.adapter, x))
    assert weights == "weights"


@pytest.mark.parametrize("block", ["bottleneck", "conformer", "convpass"])
@pytest.mark.parametrize("seq_or_par,residual", [("parallel", False), ("sequential", True)])
def test_adapter_is_the_identity_at_start(tiny_ast, block, seq_or_par, residual):
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = build(tiny_ast, "Houlsby", adapter_block=block, reduction_rate=8, seq_or_par=seq_or_par,
                  apply_residual=residual, max_frames=64).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0])


@pytest.mark.parametrize("block,init,seq_or_par,placement", [
    ("bottleneck", "identity", "parallel", "before"), ("bottleneck", "identity", "parallel", "after"),
    ("bottleneck", "reference", "sequential", "before"), ("conformer", "identity", "parallel", "before"),
    ("conformer", "identity", "sequential", "before"), ("conformer", "reference", "sequential", "after"),
    ("convpass", "identity", "sequential", "after"), ("convpass", "reference", "parallel", "after"),
])
def test_every_adapter_tensor_learns_from_the_first_steps(tiny_ast, block, init, seq_or_par, placement):
    """Reference start: one step moves every tensor; identity start: two (the first moves the
    zero up-projection, and every tensor then has a gradient)."""
    model = build(tiny_ast, "Houlsby", adapter_block=block, reduction_rate=8, seq_or_par=seq_or_par,
                  placement=placement, apply_residual=True, init=init, max_frames=64)
    assert unchanged_after_steps(model, steps=1 if init == "reference" else 2) == []


def test_reference_init_draws_linear_projections_from_n_0_002():
    block = Bottleneck(768, 4, init="reference")
    assert abs(block.up.weight.std().item() - 0.02) < 2e-3
    assert torch.count_nonzero(block.up.bias) == 0


def test_conformer_adapter_uses_its_layernorm():
    """The LayerNorm's output is convolved: the block is invariant to a per-token affine change
    of its input (the reference discarded the LayerNorm and was not)."""
    torch.manual_seed(0)
    block = ConformerAdapter(16, 2, kernel_size=3, init="reference").eval()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(block(3 * x + 0.5), block(x))


def test_convpass_uses_its_convolution():
    torch.manual_seed(0)
    block = Convpass(16, 2, init="reference").eval()
    x = torch.randn(2, 7, 16)
    before = block(x)
    with torch.no_grad():
        block.conv.weight.mul_(2)
    assert not torch.allclose(block(x), before)
    shuffled = x[:, torch.randperm(7)]  # the convolution mixes neighbouring tokens
    assert not torch.allclose(block(shuffled).sort(dim=1).values, before.sort(dim=1).values)


def test_adapter_options_are_checked_with_clear_errors():
    linear = torch.nn.Linear(768, 768)
    with pytest.raises(ValueError, match="zero-width bottleneck"):
        Adapter(linear, 768, adapter_block="bottleneck", reduction_rate=2000)
    with pytest.raises(ValueError, match="seq_or_par='serial'"):
        Adapter(linear, 768, seq_or_par="serial")
    with pytest.raises(ValueError, match="adapter_block='lstm'"):
        Adapter(linear, 768, adapter_block="lstm")
    with pytest.raises(ValueError, match="adapter_type='Bapna'"):
        adapter_points("Bapna")
    with pytest.raises(ValueError, match="location='LN'"):
        adapter_trainable("Pfeiffer", "LN")
