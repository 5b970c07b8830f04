"""Dense-MoA and Soft-MoA (petl_modules/methods/moa.py): routing, batched experts, counts on AST-base."""

import pytest
import torch

from petl_modules.methods.adapters import Bottleneck, Convpass, adapter_points, adapter_trainable
from petl_modules.methods.moa import DenseMoA, MixtureOfAdapters, SoftMoA, StackedAdapters

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


def build(folder, kind, adapter_type="Pfeiffer", location="MHSA", **kwargs):
    return adapted(folder, MixtureOfAdapters, adapter_points(adapter_type, location),
                   adapter_trainable(adapter_type, location), kind=kind, **kwargs)


def expert_params(block, r):
    return {"bottleneck": D * r + r + r * D + D, "convpass": D * r + r + 3 * r * r + r + r * D + D}[block]


@pytest.mark.parametrize("kind", ["dense", "soft"])
@pytest.mark.parametrize("block", ["bottleneck", "convpass"])
@pytest.mark.parametrize("adapter_type,location",
                         [("Pfeiffer", "MHSA"), ("Pfeiffer", "FFN"), ("Houlsby", "MHSA")])
def test_moa_trains_experts_routing_and_the_layernorm_before_each_sublayer(
        ast_base_folder, kind, block, adapter_type, location):
    n, p, rr = 7, 2, 128
    model = build(ast_base_folder, kind, adapter_type, location, adapter_block=block, num_adapters=n,
                  num_slots=p, reduction_rate=rr)
    r = D // rr
    routing = D * n + n if kind == "dense" else D * n * p  # router W, b | slot embeddings Phi
    locations = 2 if adapter_type == "Houlsby" else 1
    assert count(model) == LAYERS * locations * (n * expert_params(block, r) + routing + LN) + LN
    expected = final_norm_names()
    for loc in (["MHSA", "FFN"] if adapter_type == "Houlsby" else [location]):
        expected |= ln_names({"MHSA": "layernorm_before", "FFN": "layernorm_after"}[loc])
    assert pretrained_trainable(model) == expected


def test_soft_moa_normalize_adds_one_learned_scale_per_mixture(ast_base_folder):
    plain = count(build(ast_base_folder, "soft", num_adapters=3, reduction_rate=64))
    assert count(build(ast_base_folder, "soft", num_adapters=3, reduction_rate=64, normalize=True)) \
        == plain + LAYERS


def test_soft_moa_dispatch_sums_to_one_over_tokens_and_combine_over_all_slots():
    torch.manual_seed(0)
    moa = SoftMoA(16, num_adapters=3, num_slots=2, reduction_rate=4)
    dispatch, combine = moa.routing_weights(torch.randn(2, 9, 16))
    assert dispatch.shape == combine.shape == (2, 9, 3, 2)
    torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(2, 3, 2))
    torch.testing.assert_close(combine.sum(dim=(2, 3)), torch.ones(2, 9))


def test_soft_moa_normalize_makes_routing_scale_invariant_and_its_scale_sharpens_it():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    moa = SoftMoA(16, num_adapters=3, normalize=True, reduction_rate=4)
    dispatch, combine = moa.routing_weights(x)
    for got, want in zip(moa.routing_weights(10 * x), (dispatch, combine)):
        torch.testing.assert_close(got, want)
    plain = SoftMoA(16, num_adapters=3, normalize=False, reduction_rate=4)
    plain.phi = moa.phi
    assert not torch.allclose(plain.routing_weights(10 * x)[0], plain.routing_weights(x)[0])
    with torch.no_grad():
        moa.scale.fill_(50.0)
    assert moa.routing_weights(x)[1].max() > combine.max()


def copy_expert(stacked, n, block):
    """Expert ``n`` of ``stacked`` as a single block of petl_modules.methods.adapters (same weights)."""
    r = stacked.width
    single = Bottleneck(16, 16 / r) if block == "bottleneck" else Convpass(16, 16 / r)
    with torch.no_grad():
        single.down.weight.copy_(stacked.down_weight[n].T)
        single.down.bias.copy_(stacked.down_bias[n])
        single.up.weight.copy_(stacked.up_weight[n].T)
        single.up.bias.copy_(stacked.up_bias[n])
        if block == "convpass":
            single.conv.weight.copy_(stacked.conv.weight[n * r:(n + 1) * r])
            single.conv.bias.copy_(stacked.conv.bias[n * r:(n + 1) * r])
    return single.eval()


@pytest.mark.parametrize("block", ["bottleneck", "convpass"])
def test_batched_experts_equal_an_explicit_loop_over_experts(block):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    dense = DenseMoA(16, num_adapters=3, reduction_rate=4, adapter_block=block, init="reference").eval()
    experts = [copy_expert(dense.experts, n, block) for n in range(3)]
    gates = dense.router_weights(x)
    loop = sum(gates[..., n:n + 1] * experts[n](x) for n in range(3))
    torch.testing.assert_close(dense(x), loop)

    soft = SoftMoA(16, num_adapters=3, num_slots=4, reduction_rate=4, adapter_block=block,
                   init="reference").eval()
    experts = [copy_expert(soft.experts, n, block) for n in range(3)]
    dispatch, combine = soft.routing_weights(x)
    slots = [torch.einsum("bmd,bmp->bpd", x, dispatch[:, :, n]) for n in range(3)]
    outputs = [experts[n](slots[n]) for n in range(3)]
    loop = sum(torch.einsum("bpd,bmp->bmd", outputs[n], combine[:, :, n]) for n in range(3))
    torch.testing.assert_close(soft(x), loop)


def test_stacked_experts_never_loop_in_python(monkeypatch):
    """One einsum per projection whatever N (no Python loop over the experts)."""
    calls = []
    einsum = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *args: calls.append(args[0]) or einsum(*args))
    for n in (2, 9):
        calls.clear()
        StackedAdapters(n, 16, 4)(torch.randn(2, 5, 16))
        assert len(calls) == 2


@pytest.mark.parametrize("kind", ["dense", "soft"])
def test_moa_output_is_added_once_to_the_sublayer_output(kind):
    torch.manual_seed(0)
    sublayer = torch.nn.Linear(16, 16)
    wrapper = MixtureOfAdapters(sublayer, 16, kind=kind, num_adapters=3, reduction_rate=4,
                                init="reference").eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(wrapper(x), sublayer(x) + wrapper.moa(x))


@pytest.mark.parametrize("kind", ["dense", "soft"])
def test_moa_is_the_identity_at_start(tiny_ast, kind):
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = build(tiny_ast, kind, "Houlsby", num_adapters=3, reduction_rate=16, max_frames=64).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0])


@pytest.mark.parametrize("kind,block,init,normalize", [
    ("dense", "bottleneck", "identity", False), ("dense", "convpass", "reference", False),
    ("soft", "bottleneck", "reference", True), ("soft", "convpass", "identity", False),
])
def test_every_moa_tensor_learns(tiny_ast, kind, block, init, normalize):
    model = build(tiny_ast, kind, "Houlsby", adapter_block=block, num_adapters=3, num_slots=2,
                  reduction_rate=16, init=init, normalize=normalize, max_frames=64)
    assert unchanged_after_steps(model, steps=1 if init == "reference" else 2) == []


def test_moa_options_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match="adapter_block='conformer'"):
        DenseMoA(16, adapter_block="conformer")
    with pytest.raises(ValueError, match="zero-width"):
        SoftMoA(64, reduction_rate=128)
    with pytest.raises(ValueError, match="num_slots"):
        SoftMoA(16, num_slots=0, reduction_rate=4)
    with pytest.raises(ValueError, match="kind='sparse'"):
        MixtureOfAdapters(torch.nn.Identity(), 16, kind="sparse")
