"""The data2vec-audio lobe (``petl_modules/backbones/data2vec_audio.py``): dispatch from
``model_type``, equivalence with ``transformers.Data2VecAudioModel`` (without padding: the plain
model; padded in a batch: the plain model on the utterance alone), the installed transformers'
module layout it relies on, every method file training every tensor, batch invariance with whole
utterances, family defaults, the trainable counts of the data2vec-audio-base shape, and (slow) a
recipe end to end."""

import math
from pathlib import Path

import pytest
import ruamel.yaml
import torch
import transformers

from petl_modules.methods import method_class
from petl_modules.backbones import FAMILIES, Backbone
from petl_modules.backbones.data2vec_audio import Data2VecAudioBackbone
from petl_modules.backbones.wav2vec2 import Wav2Vec2Backbone
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.tiny import tiny_data2vec_audio_config
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO, zero_gradient_by_construction
from waveform_helpers import padded_batch

METHODS = sorted(p.stem for p in (REPO / "hparams").glob("*.yaml"))
ATOL = 1e-5


def plain_model(folder):
    return transformers.Data2VecAudioModel.from_pretrained(folder).eval()


def compose(method, folder, tmp_path, dataset="FSC/fsc.yaml", **overrides):
    """The composed yaml of ``hparams/<method>.yaml`` + a recipe on ``folder``, as a mapping."""
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(folder), **overrides)
    return compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / dataset, options)


def build(method, folder, tmp_path, **overrides):
    """``(petl_model, classifier)`` of a method file on the tiny checkpoint (hidden 32, 2 layers:
    a reduction rate that leaves a bottleneck, one unfrozen layer)."""
    if method == "full_ft":
        overrides.setdefault("unfrozen_layers", 1)
    if "reduction_rate" in method_class(method).options():
        overrides.setdefault("reduction_rate", 8)
    hparams = load_hparams(compose(method, folder, tmp_path, **overrides))
    return hparams["petl_model"], hparams["classifier"]


# ---------------------------------------------------------------- dispatch and inputs
def test_data2vec_audio_checkpoints_get_their_lobe_in_the_wav2vec2_family(tiny_data2vec_audio):
    assert FAMILIES["data2vec-audio"] is Data2VecAudioBackbone
    lobe = Backbone(tiny_data2vec_audio, max_frames=64)  # another family's option: ignored
    assert isinstance(lobe, Data2VecAudioBackbone) and isinstance(lobe, Wav2Vec2Backbone)
    assert lobe.family == "wav2vec2" and lobe.model_type == "data2vec-audio"
    assert not lobe.pre_ln and not lobe.has_cls_token
    assert lobe.use_attention_mask and lobe.input_processor.normalize  # preprocessor_config.json
    assert Data2VecAudioBackbone.options() == Wav2Vec2Backbone.options()


def test_without_preprocessor_config_the_layer_norm_cnn_takes_an_attention_mask(tiny_data2vec_audio, tmp_path):
    plain_model(tiny_data2vec_audio).save_pretrained(tmp_path)
    lobe = Backbone(str(tmp_path), clip_seconds=2.0)
    assert lobe.use_attention_mask and lobe.input_processor.normalize
    assert lobe.clip_samples == 32000


# ---------------------------------------------------------------- equivalence with transformers
def test_lobe_output_equals_the_plain_model_without_padding(tiny_data2vec_audio):
    lobe = Backbone(tiny_data2vec_audio, clip_seconds=None).eval()
    plain = plain_model(tiny_data2vec_audio)
    wav, _ = padded_batch([0.7, 0.7])
    with torch.no_grad():
        hidden, mask = lobe(wav)
        expected = plain(wav).last_hidden_state
        with_mask = plain(wav, attention_mask=torch.ones_like(wav, dtype=torch.long)).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden, with_mask, atol=1e-5, rtol=1e-4)
    assert bool(mask.all())


def test_padded_utterance_gets_the_plain_model_output_of_it_alone(tiny_data2vec_audio):
    """With the attention mask the lobe zeroes padded frames before each positional convolution:
    every utterance of a padded batch gets the plain model's output on it alone. transformers
    zeroes them once, so its own padded output differs (the reason for the lobe's loop)."""
    lobe = Backbone(tiny_data2vec_audio, clip_seconds=None).eval()
    plain = plain_model(tiny_data2vec_audio)
    durations = [1.0, 0.6, 0.3]
    wav, lengths = padded_batch(durations)
    samples = torch.arange(wav.shape[1])[None] < (lengths * wav.shape[1])[:, None]
    with torch.no_grad():
        hidden, mask = lobe(wav, lengths)
        padded_plain = plain(wav, attention_mask=samples.long()).last_hidden_state
        for row, seconds in enumerate(durations):
            alone = plain(wav[row:row + 1, : round(seconds * 16000)]).last_hidden_state[0]
            frames = alone.shape[0]
            assert int(mask[row].sum()) == frames and bool(mask[row, :frames].all())
            torch.testing.assert_close(hidden[row, :frames], alone, atol=1e-5, rtol=1e-4)
            if row:
                assert not torch.allclose(padded_plain[row, :frames], alone, atol=1e-3)
    torch.testing.assert_close(hidden[0], padded_plain[0], atol=1e-5, rtol=1e-4)  # unpadded row


def test_without_attention_mask_the_lobe_is_the_plain_model_on_the_padded_batch(tiny_data2vec_audio, tmp_path):
    plain = plain_model(tiny_data2vec_audio)
    plain.save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(tmp_path)
    lobe = Backbone(str(tmp_path), clip_seconds=None).eval()
    assert not lobe.use_attention_mask
    wav, lengths = padded_batch([0.8, 0.4])
    with torch.no_grad():
        torch.testing.assert_close(lobe(wav, lengths)[0], plain(wav).last_hidden_state, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the installed transformers' layout
def test_insertion_points_and_modules_are_the_installed_transformers_ones(tiny_data2vec_audio):
    lobe = Backbone(tiny_data2vec_audio)
    model = lobe.model
    layers = model.encoder.layers
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
        "embeddings": [model.encoder.dropout],
        "final_norm": [],  # post-LN: the encoder's layer_norm normalises the embeddings
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, modules in expected.items():
        assert [m for _, m in lobe.modules_at_optional(point)] == modules, point
    assert all(isinstance(m, torch.nn.Linear) for p in "qkvo" for _, m in lobe.modules_at(p))
    assert all(isinstance(m, torch.nn.LayerNorm) for p in ("ln_attention", "ln_ffn") for _, m in lobe.modules_at(p))
    # What the lobe's positional embedding loop relies on: 5 convolutions of kernel 19, each
    # followed by a LayerNorm without parameters (data2vec-audio-base's; the tiny one has 4 groups).
    convs = model.encoder.pos_conv_embed.layers
    assert len(convs) == 5
    for layer in convs:
        assert isinstance(layer.conv, torch.nn.Conv1d) and layer.conv.kernel_size == (19,)
        assert layer.conv.padding == (9,) and layer.conv.groups == 4
        assert isinstance(layer.layer_norm, torch.nn.LayerNorm) and not layer.layer_norm.elementwise_affine
    assert all(isinstance(c.layer_norm, torch.nn.LayerNorm) for c in model.feature_extractor.conv_layers)
    # `embeddings` trains the feature projection, the positional convolutions and the embedding
    # LayerNorm; never the CNN nor masked_spec_embed.
    names = set(lobe.trainable_parameter_names(["embeddings"]))
    prefixes = ("model.feature_projection.", "model.encoder.pos_conv_embed.", "model.encoder.layer_norm.")
    assert names == {n for n, _ in lobe.named_parameters() if n.startswith(prefixes)}
    everything = set(lobe.trainable_parameter_names(["all"]))
    assert not any(".feature_extractor." in n or "masked_spec_embed" in n for n in everything)


def test_default_config_has_the_data2vec_audio_base_shape():
    config = transformers.Data2VecAudioConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (768, 12, 12, 3072)
    assert (config.num_conv_pos_embeddings, config.conv_pos_kernel_size,
            config.num_conv_pos_embedding_groups) == (5, 19, 16)
    tiny = tiny_data2vec_audio_config()
    assert (tiny.num_conv_pos_embeddings, tiny.conv_pos_kernel_size) == (5, 19)


# ---------------------------------------------------------------- every method file
def perturb(model, seed=0):
    """Trainable tensors moved by N(0, 0.3), PETL BatchNorms given non-trivial statistics, so that
    every inserted module acts on the output (an identity start would make invariance trivial)."""
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


@pytest.mark.parametrize("method", METHODS)
def test_every_method_file_trains_every_tensor(method, tiny_data2vec_audio, tmp_path):
    """Two optimiser steps on a padded batch: finite losses and a non-zero gradient for every
    trainable tensor in one of them (a tensor before a zero up-projection gets none on step 1)."""
    torch.manual_seed(0)
    model, head = build(method, tiny_data2vec_audio, tmp_path, clip_seconds=None)
    assert isinstance(model.adapted_model, Data2VecAudioBackbone)
    params = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    params.update({f"head.{n}": p for n, p in head.named_parameters() if p.requires_grad})
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    wav, lengths = padded_batch([0.6, 0.35])
    labels = torch.tensor([0, 1])
    nonzero = set()
    model.train(), head.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(*model(wav, lengths)), labels)
        assert math.isfinite(loss.item()), f"{method}: loss {loss.item()}"
        loss.backward()
        nonzero.update(n for n, p in params.items() if p.grad is not None and bool((p.grad != 0).any()))
        optimizer.step()
    dead = sorted(n for n in set(params) - nonzero if not zero_gradient_by_construction(n))
    assert not dead, f"{method}: {len(dead)} of {len(params)} trainable tensors got no gradient: {dead}"


@pytest.mark.parametrize("method", METHODS)
def test_an_utterance_alone_and_padded_in_a_batch_gets_the_same_logits(method, tiny_data2vec_audio, tmp_path):
    """Whole utterances (``clip_seconds=None``): data2vec-audio takes an attention mask."""
    model, head = build(method, tiny_data2vec_audio, tmp_path, clip_seconds=None)
    model = perturb(model)
    wav, lengths = padded_batch([1.0, 0.45])
    with torch.no_grad():
        alone = head(*model(wav[1:, : round(0.45 * 16000)]))[0]
        batched = head(*model(wav, lengths))[1]
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)


def test_frozen_backbone_gives_the_same_output_in_train_mode(tiny_data2vec_audio):
    """Frozen layers stay in eval mode: no dropout, no LayerDrop (0.1 in data2vec-audio configs)."""
    model = AdaptedBackbone(Backbone(tiny_data2vec_audio), trainable=["final_norm"])
    assert model.adapted_model.config.layerdrop > 0
    wav, lengths = padded_batch([0.5, 0.4])
    model.train()
    train = model(wav, lengths)[0]
    model.eval()
    torch.testing.assert_close(train, model(wav, lengths)[0])


def test_wav2vec2_family_defaults_apply(tiny_data2vec_audio, tmp_path):
    yaml = ruamel.yaml.YAML()
    full_ft = yaml.load(compose("full_ft", tiny_data2vec_audio, tmp_path))
    assert full_ft["unfrozen_layers"] == 3 and full_ft["number_of_epochs"] == 50
    prompt = yaml.load(compose("prompt_tuning", tiny_data2vec_audio, tmp_path, dataset="SpeechCommands/speechcommands.yaml"))
    assert prompt["pooling"] == "speech"


# ---------------------------------------------------------------- the data2vec-audio-base shape
@pytest.fixture(scope="module")
def data2vec_audio_base(tmp_path_factory):
    """``Data2VecAudioConfig()`` (data2vec-audio-base's shape: 93,164,288 parameters), random
    weights, saved with save_pretrained (~3 s once)."""
    folder = tmp_path_factory.mktemp("data2vec_audio_base")
    torch.manual_seed(0)
    transformers.Data2VecAudioModel(transformers.Data2VecAudioConfig()).save_pretrained(folder)
    return str(folder)


# Trainable parameters of each method file's defaults (FSC recipe: conformer kernel 31), the
# classification head excluded. Post-LN: no final LayerNorm, no LayerNorm before a sublayer.
BASE_COUNTS = {
    "linear": 0,
    "full_ft": 3 * 7_087_872,  # the last 3 layers (wav2vec2 family default)
    "bitfit": 12 * 8448,  # biases of every Linear and LayerNorm of the layers
    "lora": 12 * 2 * 2 * 768 * 6,  # Wq, Wv; r = 768 / 128
    "prefix_tuning": 12 * 24 * 768,
    "prompt_tuning": 12 * 25 * 768,  # deep
    "adapter": 12 * 21_024,  # conformer, Pfeiffer (FFN), r = 8, kernel 31
    "dense_moa": 12 * (7 * 9_990 + 768 * 7 + 7),  # 7 bottleneck experts (r = 6) + router, at MHSA
    "soft_moa": 12 * (7 * 9_990 + 768 * 7),  # 7 experts + Phi (d x 7 x 1)
    "dora": 12 * 2 * (2 * 768 * 6 + 768),  # LoRA's Wq, Wv + a magnitude per output
    "ia3": 12 * (768 + 768 + 3072),  # keys, values, FFN activations
    "vera": 12 * 2 * (256 + 768),  # lambda_d (rank 256) + lambda_b per projection
    "layer_sum": 13,  # the embedding + 12 layers
}


def test_data2vec_audio_base_trainable_counts(data2vec_audio_base, tmp_path):
    assert set(BASE_COUNTS) == set(METHODS), "a method file without a pinned count"
    counts = {}
    for method in METHODS:
        model = load_hparams(compose(method, data2vec_audio_base, tmp_path))["petl_model"]
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == {
        "adapter": 252_288, "bitfit": 101_376, "dense_moa": 903_756, "full_ft": 21_263_616,
        "linear": 0, "lora": 221_184, "prefix_tuning": 221_184, "prompt_tuning": 230_400,
        "soft_moa": 903_672, "dora": 239_616, "ia3": 55_296, "vera": 24_576, "layer_sum": 13,
    }
    assert counts == BASE_COUNTS
    lobe = Backbone(data2vec_audio_base)
    assert sum(p.numel() for p in lobe.parameters()) == 93_164_288
    cnn = sum(p.numel() for p in lobe.model.feature_extractor.parameters())
    everything = AdaptedBackbone(lobe, trainable=["top_layers:all", "final_norm"])
    trainable = sum(p.numel() for p in everything.parameters() if p.requires_grad)
    assert trainable == 93_164_288 - cnn - 768  # less the CNN and masked_spec_embed


# ---------------------------------------------------------------- a recipe end to end
@pytest.mark.slow
def test_fsc_recipe_runs_end_to_end_on_data2vec_audio(tiny_data2vec_audio, fsc_data, tmp_path):
    from petl_modules.classify import PETLClassifier

    from recipe_helpers import run_in_process

    out = tmp_path / "run"
    results = run_in_process("FSC", [
        str(REPO / "hparams" / "adapter.yaml"), f"--data_folder={fsc_data}",
        f"--backbone_source={tiny_data2vec_audio}", f"--output_folder={out}",
        "--number_of_epochs=1", "--batch_size=8", "--num_workers=0", "--max_frames=64",
        "--reduction_rate=8",
    ])
    assert isinstance(results, dict), results
    assert results["backbone"] == "wav2vec2" and results["model_type"] == "data2vec-audio"
    assert results["method"] == "adapter"
    conformer = 32 * 8 + 8 + 4 * 31 + 4 + 2 * 4 + 4 * 32 + 32  # pw 2r, dw k31, BN, pw (LN: no)
    assert results["trainable_params_without_head"] == 2 * (2 * 32 + conformer)
    (fold,) = results["folds"]
    assert math.isfinite(fold["test_loss"]) and 0.0 <= fold["test_accuracy"] <= 1.0

    classifier = PETLClassifier.from_folder(Path(out) / "petl_model")
    assert isinstance(classifier.mods["petl_model"].adapted_model, Data2VecAudioBackbone)
    wavs = sorted((Path(fsc_data) / "wavs").rglob("*.wav"))[:2]
    predictions, unreadable = classifier.classify_files(wavs)
    assert not unreadable and all(p["label"] in fold["class_names"] for p in predictions)
