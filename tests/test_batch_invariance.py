"""An utterance is classified the same alone or padded in a batch, for every method file
(hparams/*.yaml) on every checkpoint layout that masks padding (pre-LN wav2vec2-family models with
a layer-norm CNN, whole utterances: ``clip_seconds=None``), and on AST (whose inputs are padded to
``max_frames`` in the input processor, so a batch is a stack of single inputs).

The inserted tensors are perturbed first (an identity start would make the PETL modules output
zero, and the check trivial), and the conformer adapter's BatchNorm gets non-trivial running
statistics. Group-norm (post-LN base) checkpoints take no attention mask: their CNN already sees
the padding, so they cannot be invariant (README caveat)."""

from pathlib import Path

import pytest
import torch

from petl_modules.methods import method_class
from petl_modules.methods.adapted import PETLModule, token_mask
from petl_modules.methods.adapters import Adapter, ConformerAdapter, Convpass, MaskedBatchNorm1d
from petl_modules.methods.moa import DenseMoA, SoftMoA
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO
from waveform_helpers import padded_batch

METHODS = sorted(path.stem for path in Path(REPO, "hparams").glob("*.yaml"))
MASKED_LAYOUTS = [("wav2vec2", "pre_ln"), ("hubert", "pre_ln"), ("wavlm", "pre_ln")]
# Variants whose modules read neighbouring tokens or route over the tokens, besides the defaults
# (conformer adapter, bottleneck Dense/Soft-MoA).
VARIANTS = [
    ("adapter", {"adapter_block": "convpass", "adapter_type": "Houlsby"}),
    ("adapter", {"kernel_size": 8, "seq_or_par": "sequential", "apply_residual": True}),
    ("dense_moa", {"adapter_block": "convpass", "adapter_type": "Houlsby"}),
    ("soft_moa", {"adapter_block": "convpass", "num_slots": 2, "normalize": True}),
]
CASES = [(m, {}) for m in METHODS] + VARIANTS
ATOL = 1e-5


def build(method, folder, tmp_path, **overrides):
    """``(petl_model, classifier)`` of ``hparams/<method>.yaml`` composed with the FSC recipe."""
    if method == "full_ft":
        overrides.setdefault("unfrozen_layers", 1)  # the tiny models have 2 layers
    if "reduction_rate" in method_class(method).options():
        overrides.setdefault("reduction_rate", 8)
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(folder), **overrides)
    text = compose_hparams(REPO / "hparams" / f"{method}.yaml",
                           REPO / "recipes" / "FSC" / "fsc.yaml", options)
    hparams = load_hparams(text)
    return hparams["petl_model"], hparams["classifier"]


def perturb(model, seed=0):
    """Every trainable tensor moved by N(0, 0.3), and the PETL BatchNorms' running statistics
    made non-trivial, so that every inserted module acts on the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


def logits(model, head, *inputs):
    with torch.no_grad():
        return head(*model(*inputs))


def alone_and_batched(model, head, durations=(1.0, 0.45)):
    """Logits of the shorter utterance alone and padded in a batch with a longer one."""
    wav, lengths = padded_batch(list(durations))
    short = wav[1:, : round(durations[1] * 16000)]
    return logits(model, head, short)[0], logits(model, head, wav, lengths)[1]


@pytest.mark.parametrize("model_type,layout", MASKED_LAYOUTS)
@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                     for m, o in CASES])
def test_an_utterance_alone_and_padded_in_a_batch_gets_the_same_logits(
        method, options, model_type, layout, waveform_checkpoints, tmp_path):
    model, head = build(method, waveform_checkpoints[model_type, layout], tmp_path,
                        clip_seconds=None, **options)
    model = perturb(model)
    alone, batched = alone_and_batched(model, head)
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_ast_inputs_are_padded_to_max_frames_so_a_batch_is_a_stack_of_single_inputs(
        method, tiny_ast, tmp_path):
    model, head = build(method, tiny_ast, tmp_path, max_frames=64)
    model = perturb(model)
    processor = model.adapted_model.input_processor
    generator = torch.Generator().manual_seed(0)
    short, long = (processor(torch.randn(n, generator=generator)) for n in (3000, 9000))
    assert short.shape == long.shape  # both padded / cut to max_frames
    batched = logits(model, head, torch.stack([long, short]))[1]
    torch.testing.assert_close(batched, logits(model, head, short[None])[0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- the blocks, with a token mask
def padded(x, length):
    """``x [1, T, D]`` padded to ``length`` tokens and stacked after a random utterance; padded
    tokens are random too (inside a model they are not zeros)."""
    other, filler = torch.randn(1, length, x.shape[-1]), torch.randn(1, length - x.shape[1], x.shape[-1])
    return torch.cat([other, torch.cat([x, filler], dim=1)])


@pytest.mark.parametrize("make", [
    lambda: ConformerAdapter(16, 2, kernel_size=5, init="reference"),
    lambda: ConformerAdapter(16, 2, kernel_size=4, init="reference"),  # even kernel: uneven padding
    lambda: Convpass(16, 2, init="reference"),
    lambda: DenseMoA(16, num_adapters=3, reduction_rate=4, adapter_block="convpass", init="reference"),
    lambda: SoftMoA(16, num_adapters=3, num_slots=2, reduction_rate=4, init="reference"),
    lambda: SoftMoA(16, num_adapters=3, num_slots=2, reduction_rate=4, adapter_block="convpass",
                    normalize=True, init="reference"),
], ids=["conformer-k5", "conformer-k4", "convpass", "dense-convpass", "soft", "soft-convpass-norm"])
def test_blocks_ignore_padded_tokens_given_a_mask(make):
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(1, 7, 16)
    batch = padded(x, 12)
    mask = torch.tensor([[True] * 12, [True] * 7 + [False] * 5])
    out = block(batch, mask)
    torch.testing.assert_close(out[1, :7], block(x)[0], atol=1e-6, rtol=0)
    # Without the mask the padding leaks in (what the issue measured).
    assert not torch.allclose(block(batch)[1, :7], block(x)[0], atol=1e-4)


def test_soft_moa_padding_gets_no_dispatch_weight_and_no_output():
    torch.manual_seed(0)
    moa = SoftMoA(16, num_adapters=3, num_slots=2, reduction_rate=4, init="reference")
    x = torch.randn(2, 9, 16)
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [4]])
    dispatch, combine = moa.routing_weights(x, mask)
    assert dispatch[1, 4:].abs().max() == 0
    torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(2, 3, 2))
    torch.testing.assert_close(combine[mask].sum(dim=(1, 2)), torch.ones(int(mask.sum())))
    assert moa(x, mask)[1, 4:].abs().max() == 0


def test_masked_batch_norm_trains_on_the_valid_positions_only():
    """Train mode: normalised with, and running statistics updated from, the valid positions'
    statistics, exactly as ``nn.BatchNorm1d`` on those positions alone."""
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    x = torch.randn(2, 4, 9) * 3 + 1
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [5]])
    valid = torch.cat([x[0], x[1, :, :5]], dim=1)[None]  # [1, C, 14]
    for _ in range(2):
        out = masked(x, mask)
        want = plain(valid)[0]
    torch.testing.assert_close(torch.cat([out[0], out[1, :, :5]], dim=1), want)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(masked, name), getattr(plain, name))
    masked.eval(), plain.eval()
    torch.testing.assert_close(masked(x, mask), plain(x))  # eval: running statistics, per position


def test_without_padding_the_mask_changes_nothing():
    """A mask with every token valid is dropped (the unmasked code runs, bit for bit)."""
    torch.manual_seed(0)
    block = Adapter(torch.nn.Linear(16, 16), 16, adapter_block="conformer", reduction_rate=2,
                    kernel_size=3, init="reference").train()
    x = torch.randn(2, 6, 16)
    plain = block(x)
    with token_mask(torch.ones(2, 6, dtype=torch.bool)):
        assert torch.equal(block(x), plain)


def test_a_token_mask_of_another_length_is_a_clear_error():
    block = Adapter(torch.nn.Linear(16, 16), 16, adapter_block="bottleneck", reduction_rate=2)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with token_mask(mask), pytest.raises(ValueError, match="token mask"):
        block(torch.randn(2, 6, 16))
    assert isinstance(block, PETLModule)
