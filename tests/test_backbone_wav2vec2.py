"""The wav2vec 2.0-family lobe (wav2vec2, HuBERT, WavLM; post-LN and pre-LN layouts): loading
through backbone_source, equivalence with transformers, input processing, padding invariance,
the insertion-point map, what trains, per-family options and per-family yaml defaults."""

import pytest
import ruamel.yaml
import torch
import transformers

from petl_modules.backbones import Backbone
from petl_modules.backbones.features import Waveform
from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS, Wav2Vec2Backbone
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.classifier import Classifier
from petl_modules.tiny import tiny_waveform_config
from petl_modules.training.compose import ConfigError, compose_hparams, load_hparams

from conftest import REPO, WAVEFORM_CHECKPOINTS, WAVEFORM_LAYOUTS
from waveform_helpers import padded_batch

LAYOUTS = WAVEFORM_LAYOUTS
CHECKPOINTS = WAVEFORM_CHECKPOINTS


@pytest.fixture(scope="module")
def checkpoints(waveform_checkpoints):
    return waveform_checkpoints


@pytest.fixture(scope="module")
def wav2vec2_base(wav2vec2_base_folder):
    return wav2vec2_base_folder


# ---------------------------------------------------------------- loading and equivalence
@pytest.mark.parametrize("model_type", list(WAVEFORM_MODELS))
def test_backbone_dispatches_every_family_to_the_waveform_lobe(checkpoints, model_type):
    lobe = Backbone(checkpoints[model_type, "post_ln"], max_frames=400, position_embeddings="adapt")
    assert isinstance(lobe, Wav2Vec2Backbone)
    assert lobe.family == "wav2vec2" and lobe.model_type == model_type and not lobe.has_cls_token


def test_unsupported_model_type_error_lists_the_supported_ones(tmp_path):
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="model_type 'bert'") as error:
        Backbone(str(tmp_path))
    for model_type in ("audio-spectrogram-transformer", "hubert", "wav2vec2", "wavlm"):
        assert model_type in str(error.value)


@pytest.mark.parametrize("model_type,layout", CHECKPOINTS)
def test_lobe_output_equals_plain_transformers_model_with_padding(checkpoints, model_type, layout):
    folder = checkpoints[model_type, layout]
    lobe = Backbone(folder, clip_seconds=None).eval()
    plain = WAVEFORM_MODELS[model_type][1].from_pretrained(folder).eval()
    wav, lengths = padded_batch([1.0, 0.6, 0.3])
    # No preprocessor_config.json: an attention mask exactly with a layer-norm CNN (large models).
    assert lobe.use_attention_mask == (layout == "pre_ln")
    samples = torch.arange(wav.shape[1])[None] < (lengths * wav.shape[1])[:, None]
    with torch.no_grad():
        hidden, mask = lobe(wav, lengths)
        expected = plain(wav, attention_mask=samples.long() if lobe.use_attention_mask else None)
        unpadded, _ = lobe(wav)
        expected_unpadded = plain(wav)
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unpadded, expected_unpadded.last_hidden_state, atol=1e-5, rtol=1e-4)
    frames = plain._get_feat_extract_output_lengths(torch.tensor([16000, 9600, 4800]))
    assert mask.sum(dim=1).tolist() == frames.tolist()


def test_sdpa_and_eager_attention_agree(checkpoints):
    folder = checkpoints["wav2vec2", "pre_ln"]
    wav, lengths = padded_batch([0.5, 0.3])
    sdpa = Backbone(folder, clip_seconds=None).eval()(wav, lengths)[0]
    eager = Backbone(folder, clip_seconds=None, attn_implementation="eager").eval()(wav, lengths)[0]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- inputs and padding
def test_waveform_processor_matches_the_transformers_feature_extractor():
    wav = torch.randn(12000) * 0.3 + 0.1
    expected = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(
        wav.numpy(), sampling_rate=16000, return_tensors="pt").input_values[0]
    torch.testing.assert_close(Waveform()(wav), expected, atol=1e-5, rtol=1e-5)
    cut = Waveform(clip_samples=8000)(wav)  # cut first, then normalised over what is kept
    assert cut.shape == (8000,) and abs(float(cut.mean())) < 1e-5
    torch.testing.assert_close(Waveform(normalize=False)(wav), wav)


def test_preprocessor_config_decides_normalisation_and_attention_mask(checkpoints, tmp_path):
    folder = tmp_path / "with_extractor"
    transformers.Wav2Vec2Model.from_pretrained(checkpoints["wav2vec2", "post_ln"]).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True).save_pretrained(folder)
    lobe = Backbone(str(folder), clip_seconds=2.0)
    assert lobe.use_attention_mask and not lobe.input_processor.normalize
    assert lobe.input_processor.clip_samples == 32000
    default = Backbone(checkpoints["wav2vec2", "post_ln"], clip_seconds=2.0)
    assert not default.use_attention_mask and default.input_processor.normalize


@pytest.mark.parametrize("model_type,layout,clip", [
    ("wav2vec2", "pre_ln", None),  # attention mask: padding-invariant at any batch length
    ("wavlm", "pre_ln", None),
    ("hubert", "post_ln", 1.2),  # no attention mask (base models): padded to the clip
    ("wav2vec2", "post_ln", 1.2),
])
def test_pooled_embedding_of_a_padded_utterance_equals_it_alone(checkpoints, model_type, layout, clip):
    lobe = Backbone(checkpoints[model_type, layout], clip_seconds=clip).eval()
    head = Classifier(lobe.hidden_size, 3)
    wav, lengths = padded_batch([1.0, 0.45])
    short = wav[1:, : int(0.45 * 16000)]
    with torch.no_grad():
        batched = head.pool(*lobe(wav, lengths))[1]
        alone = head.pool(*lobe(short))[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_clip_cuts_and_pads_every_batch_to_the_same_frames(checkpoints):
    lobe = Backbone(checkpoints["wav2vec2", "post_ln"], clip_seconds=0.5).eval()
    assert lobe.input_processor(torch.randn(16000)).shape == (8000,)
    with torch.no_grad():
        hidden, mask = lobe(torch.randn(2, 4000), torch.tensor([1.0, 0.5]))
    frames = int(lobe.frame_lengths(torch.tensor(8000)))
    assert hidden.shape[1] == frames and mask.shape == (2, frames)
    assert mask.sum(1).tolist() == lobe.frame_lengths(torch.tensor([4000, 2000])).tolist()


# ---------------------------------------------------------------- insertion points
@pytest.mark.parametrize("model_type,layout", CHECKPOINTS)
def test_insertion_points_resolve_to_the_installed_transformers_modules(checkpoints, model_type, layout):
    lobe = Backbone(checkpoints[model_type, layout])
    layers = lobe.model.encoder.layers
    expected = {
        "layer": list(layers),
        "later_layers": list(layers)[1:],
        "attention": [layer.attention for layer in layers],
        "ffn": [layer.feed_forward for layer in layers],
        "ffn_in": [layer.feed_forward.intermediate_dense for layer in layers],
        "ffn_out": [layer.feed_forward.output_dense for layer in layers],
        "ln_attention": [layer.layer_norm for layer in layers],
        "ln_ffn": [layer.final_layer_norm for layer in layers],
        "q": [layer.attention.q_proj for layer in layers],
        "k": [layer.attention.k_proj for layer in layers],
        "v": [layer.attention.v_proj for layer in layers],
        "o": [layer.attention.out_proj for layer in layers],
        "embeddings": [lobe.model.encoder.dropout],
        "final_norm": [lobe.model.encoder.layer_norm] if layout == "pre_ln" else [],
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, modules in expected.items():
        assert [m for _, m in lobe.modules_at_optional(point)] == modules, point
    for point in ("ln_attention", "ln_ffn", "final_norm"):
        assert all(isinstance(m, torch.nn.LayerNorm) for _, m in lobe.modules_at_optional(point))
    assert all(isinstance(m, torch.nn.Linear) for p in "qkvo" for _, m in lobe.modules_at(p))


# ---------------------------------------------------------------- what trains
def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cnn_feature_encoder_and_mask_embedding_never_train(checkpoints, layout):
    model = AdaptedBackbone(Backbone(checkpoints["wav2vec2", layout]), trainable=["all"])
    names = trainable_names(model)
    assert not any(".feature_extractor." in n or "masked_spec_embed" in n for n in names)
    total = sum(p.numel() for p in model.parameters())
    cnn = sum(p.numel() for p in model.adapted_model.model.feature_extractor.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total - cnn - 32


def test_top_layers_all_trains_everything_above_the_cnn(checkpoints):
    post_ln = AdaptedBackbone(Backbone(checkpoints["hubert", "post_ln"]), trainable=["top_layers:all"])
    everything = AdaptedBackbone(Backbone(checkpoints["hubert", "post_ln"]), trainable=["all"])
    assert trainable_names(post_ln) == trainable_names(everything)


@pytest.mark.parametrize("model_type", list(WAVEFORM_MODELS))
def test_frozen_backbone_gives_the_same_output_in_train_mode(checkpoints, model_type):
    """Frozen layers stay in eval mode (no dropout, no LayerDrop) and SpecAugment is off by default."""
    model = AdaptedBackbone(Backbone(checkpoints[model_type, "post_ln"]), trainable=["final_norm"])
    wav, lengths = padded_batch([0.5, 0.4])
    model.train()
    train = model(wav, lengths)[0]
    model.eval()
    torch.testing.assert_close(train, model(wav, lengths)[0])


def test_apply_spec_augment_masks_time_steps_in_training_only(checkpoints):
    lobe = Backbone(checkpoints["wav2vec2", "post_ln"], apply_spec_augment=True)
    lobe.config.mask_time_prob = 0.5
    model = AdaptedBackbone(lobe, trainable=["final_norm"])
    wav, lengths = padded_batch([1.0])
    model.eval()
    reference = model(wav, lengths)[0]
    model.train()
    torch.manual_seed(0)
    masked = model(wav, lengths)[0]
    assert not torch.allclose(masked, reference)
    model.eval()
    torch.testing.assert_close(model(wav, lengths)[0], reference)


def test_apply_spec_augment_without_a_mask_embedding_is_a_clear_error(tmp_path):
    config = tiny_waveform_config("hubert", mask_time_prob=0.0, mask_feature_prob=0.0)
    transformers.HubertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no masked_spec_embed.*apply_spec_augment=False"):
        Backbone(str(tmp_path), apply_spec_augment=True)


def test_gradient_checkpointing_gives_the_same_gradients(checkpoints):
    wav, lengths = padded_batch([0.5, 0.3])
    grads = []
    for checkpointing in (False, True):
        lobe = Backbone(checkpoints["wavlm", "pre_ln"], gradient_checkpointing=checkpointing)
        model = AdaptedBackbone(lobe, trainable=["biases"]).train()
        model(wav, lengths)[0].pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_wav2vec2_base_parameter_counts(wav2vec2_base):
    """Wav2Vec2Config() (wav2vec2-base shape): the counts of the issue, head excluded."""

    def count(*trainable):
        model = AdaptedBackbone(Backbone(wav2vec2_base), trainable=list(trainable))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    lobe = Backbone(wav2vec2_base)
    assert sum(p.numel() for p in lobe.parameters()) == 94_371_712
    assert count("final_norm") == 0  # linear: the base model has no final LayerNorm
    assert count("top_layers:3", "final_norm") == 21_263_616  # full FT, reference's last 3 layers
    assert count("biases") == 12 * 8448  # BitFit: Linear and LayerNorm biases of the layers
    cnn = sum(p.numel() for p in lobe.model.feature_extractor.parameters())
    assert count("top_layers:all", "final_norm") == 94_371_712 - cnn - 768  # less masked_spec_embed


# ---------------------------------------------------------------- options and yaml layers
def test_options_of_other_families_are_ignored_and_unknown_ones_rejected(checkpoints, tiny_ast):
    Backbone(checkpoints["wav2vec2", "post_ln"], max_frames=64, position_embeddings="zeros")
    Backbone(str(tiny_ast), max_frames=64, clip_seconds=8.0, apply_spec_augment=False)
    with pytest.raises(ValueError, match="clip_second") as error:
        Backbone(checkpoints["wav2vec2", "post_ln"], clip_second=8.0)
    assert "clip_seconds" in str(error.value)
    assert set(Wav2Vec2Backbone.options()) == {
        "clip_seconds", "apply_spec_augment", "attn_implementation", "gradient_checkpointing"}


def composed(method, dataset, **overrides):
    """The composed yaml of ``hparams/<method>.yaml`` + ``recipes/<dataset>``, as a mapping."""
    text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / dataset, overrides)
    return ruamel.yaml.YAML().load(text)


def test_family_defaults_follow_the_backbone_and_the_command_line_wins(checkpoints, tiny_ast, tmp_path):
    common = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"))
    wav2vec2 = dict(common, backbone_source=checkpoints["wav2vec2", "post_ln"])
    hparams = composed("full_ft", "FSC/fsc.yaml", **wav2vec2)
    assert hparams["unfrozen_layers"] == 3 and hparams["number_of_epochs"] == 50
    assert "family_defaults" not in hparams
    ast = composed("full_ft", "FSC/fsc.yaml", backbone_source=str(tiny_ast), **common)
    assert ast["unfrozen_layers"] == "all" and ast["number_of_epochs"] == 75
    hparams = composed("full_ft", "FSC/fsc.yaml", unfrozen_layers=1, number_of_epochs=7, **wav2vec2)
    assert hparams["unfrozen_layers"] == 1 and hparams["number_of_epochs"] == 7


def test_clip_length_defaults_to_the_duration_ast_sees(checkpoints, tmp_path):
    overrides = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                     backbone_source=checkpoints["wav2vec2", "post_ln"])
    text = compose_hparams(REPO / "hparams" / "linear.yaml", REPO / "recipes" / "FSC" / "fsc.yaml", overrides)
    hparams = load_hparams(text)
    assert hparams["clip_seconds"] == 4.0 and hparams["backbone"].clip_samples == 64000
    assert load_hparams(text, clip_seconds=None)["backbone"].clip_samples is None


def test_family_defaults_with_an_unknown_family_or_key_is_a_config_error(checkpoints, tmp_path):
    method = tmp_path / "method.yaml"
    dataset = tmp_path / "dataset.yaml"
    method.write_text((REPO / "hparams" / "linear.yaml").read_text())
    source = {"backbone_source": checkpoints["wav2vec2", "post_ln"], "data_folder": str(tmp_path)}
    dataset.write_text("dataset: X\nfamily_defaults:\n    wav2vec: {lr: 1}\n")
    with pytest.raises(ConfigError, match="ast, beats, w2v-bert, wav2vec2, whisper"):
        compose_hparams(method, dataset, source)
    dataset.write_text("dataset: X\nfamily_defaults:\n    wav2vec2: {number_of_epoch: 1}\n")
    with pytest.raises(ConfigError, match="number_of_epoch"):
        compose_hparams(method, dataset, source)
