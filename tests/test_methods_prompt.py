"""Prompt tuning and prefix tuning (petl_modules/methods/prompt.py)."""

import pytest
import torch

from petl_modules.methods.classifier import Classifier
from petl_modules.methods.prompt import (
    DeepPrompt,
    PrefixTuning,
    ShallowPrompt,
    prompt_points,
    prompt_span,
    prompt_tuning,
)

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


def prompts(folder, deep, prompt_len, **kwargs):
    return adapted(folder, prompt_tuning, prompt_points(deep), prompt_len=prompt_len, **kwargs)


@pytest.mark.parametrize("deep,prompt_len,paper", [(False, 300, 230_400), (True, 25, 230_400),
                                                    (False, 25, None), (True, 10, None)])
def test_prompt_tuning_trains_the_prompts_only(ast_base_folder, deep, prompt_len, paper):
    model = prompts(ast_base_folder, deep, prompt_len)
    layers_with_prompts = LAYERS if deep else 1
    assert count(model) == layers_with_prompts * prompt_len * D + LN
    assert pretrained_trainable(model) == final_norm_names()
    if paper:
        assert count(model) - LN == paper


@pytest.mark.parametrize("prompt_len", [24, 2])
def test_prefix_tuning_trains_half_keys_half_values(ast_base_folder, prompt_len):
    model = adapted(ast_base_folder, PrefixTuning, ["attention"], prompt_len=prompt_len)
    assert count(model) == LAYERS * prompt_len * D + LN
    assert pretrained_trainable(model) == final_norm_names()
    if prompt_len == 24:
        assert count(model) - LN == 221_184
    prefix = next(m for m in model.modules() if isinstance(m, PrefixTuning))
    assert prefix.prefix_keys.shape == prefix.prefix_values.shape == (prompt_len // 2, D)


def test_odd_prefix_length_is_refused_with_the_fix(tiny_ast):
    with pytest.raises(ValueError, match="prompt_len=25 is odd.*--prompt_len=26"):
        adapted(tiny_ast, PrefixTuning, ["attention"], max_frames=64, prompt_len=25)


def test_shallow_prompts_replace_the_distillation_token(tiny_ast):
    plain = adapted(tiny_ast, max_frames=64).eval()
    model = prompts(tiny_ast, False, 5, max_frames=64).eval()
    x = torch.randn(2, 64, 128)
    embed = model.adapted_model.model.embeddings
    with torch.no_grad():
        tokens = embed(x)
        plain_tokens = plain.adapted_model.model.embeddings(x)
    assert tokens.shape[1] == plain_tokens.shape[1] - 1 + 5
    torch.testing.assert_close(tokens[:, 0], plain_tokens[:, 0])  # CLS kept
    torch.testing.assert_close(tokens[:, 1:6], embed.prompts.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 6:], plain_tokens[:, 2:])  # distillation token dropped
    assert prompt_span(model) == [1, 6]


def test_deep_prompts_are_replaced_before_every_later_layer(tiny_ast):
    model = prompts(tiny_ast, True, 4, max_frames=64).eval()
    layers = model.adapted_model.model.layers
    seen = {}
    for index, layer in enumerate(layers):
        inner = layer.pretrained_module if isinstance(layer, DeepPrompt) else layer
        inner.register_forward_pre_hook(lambda m, args, i=index: seen.__setitem__(i, args[0].detach()))
    with torch.no_grad():
        model(torch.randn(2, 64, 128))
    shallow = model.adapted_model.model.embeddings.prompts
    assert isinstance(layers[1], DeepPrompt) and not isinstance(layers[0], DeepPrompt)
    torch.testing.assert_close(seen[0][:, 1:5], shallow.expand(2, -1, -1))
    for index in range(1, len(layers)):
        torch.testing.assert_close(seen[index][:, 1:5], layers[index].prompts.expand(2, -1, -1))
        assert seen[index].shape == seen[0].shape


def test_prefix_tokens_reach_keys_and_values():
    """The wrapper's output equals attention over [CLS, prefix, rest] keys/values, written out."""
    torch.manual_seed(0)
    from transformers import ASTConfig
    from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
        ASTAttention,
    )

    config = ASTConfig(hidden_size=16, num_attention_heads=2)
    config._attn_implementation = "eager"
    attention = ASTAttention(config).eval()
    prefix = PrefixTuning(attention, 16, prompt_len=6, prompt_position=(1, 1))
    x = torch.randn(2, 7, 16)
    out, _ = prefix(x, None)

    def heads(t):
        return t.view(2, -1, 2, 8).transpose(1, 2)

    keys = torch.cat([attention.k_proj(x)[:, :1], prefix.prefix_keys.expand(2, -1, -1),
                      attention.k_proj(x)[:, 1:]], dim=1)
    values = torch.cat([attention.v_proj(x)[:, :1], prefix.prefix_values.expand(2, -1, -1),
                        attention.v_proj(x)[:, 1:]], dim=1)
    scores = heads(attention.q_proj(x)) @ heads(keys).transpose(-1, -2) / 8 ** 0.5
    expected = (scores.softmax(-1) @ heads(values)).transpose(1, 2).reshape(2, 7, 16)
    torch.testing.assert_close(out, attention.o_proj(expected))
    assert out.shape == x.shape
    # An additive mask is extended over the prefix (every query may attend to it).
    mask = torch.zeros(2, 1, 7, 7)
    torch.testing.assert_close(prefix(x, mask)[0], out)


@pytest.mark.parametrize("method", ["shallow", "deep", "prefix"])
def test_every_prompt_tensor_learns_from_the_first_step(tiny_ast, method):
    if method == "prefix":
        model = adapted(tiny_ast, PrefixTuning, ["attention"], max_frames=64, prompt_len=4)
    else:
        model = prompts(tiny_ast, method == "deep", 4, max_frames=64)
    assert unchanged_after_steps(model, steps=1) == []


@pytest.mark.parametrize("pooling,tokens", [("prompts", slice(1, 5)), ("speech", slice(5, None)),
                                            ("prompts+speech", slice(1, None)), ("cls", 0),
                                            ("mean", slice(None))])
def test_classifier_pools_prompt_or_speech_tokens(pooling, tokens):
    hidden = torch.randn(2, 12, 8)
    head = Classifier(8, 3, pooling=pooling, prompt_span=[1, 5])
    selected = hidden[:, tokens]
    expected = selected if selected.dim() == 2 else selected.mean(dim=1)
    torch.testing.assert_close(head.pool(hidden), expected)


def test_prompt_pooling_without_prompts_is_refused():
    with pytest.raises(ValueError, match="prompt_tuning.yaml"):
        Classifier(8, 3, pooling="speech")
    with pytest.raises(ValueError, match="'embeddings' and 'later_layers'"):
        prompt_tuning(torch.nn.Identity(), "ffn", 8)


def test_shallow_prompts_prepend_when_the_backbone_has_no_special_tokens():
    """A backbone with PROMPT_POSITION (0, 0) (no CLS token, e.g. wav2vec2) gets prompts first."""
    prompt = ShallowPrompt(torch.nn.Identity(), 8, prompt_len=3, prompt_position=(0, 0))
    x = torch.randn(2, 5, 8)
    out = prompt(x)
    torch.testing.assert_close(out[:, :3], prompt.prompts.expand(2, -1, -1))
    torch.testing.assert_close(out[:, 3:], x)
    assert prompt.span == [0, 3]
