"""The Whisper encoder lobe (``petl_modules/backbones/whisper.py``): dispatch, loading the three
checkpoint layouts, equality with transformers' encoder (30 s, i.e. the tiny checkpoint's full
2 s input) and with the encoder's own layers on a shorter clip (positions sliced), the log-mel
input processor against ``WhisperFeatureExtractor``, the insertion points (the FFN one created by
the lobe), the eval-mode policy, every method file training every tensor, the whisper-base
trainable counts, and (slow) recipe runs."""

import math
from pathlib import Path

import pytest
import ruamel.yaml
import torch
import transformers
from conftest import REPO, zero_gradient_by_construction
from transformers.models.whisper.modeling_whisper import (
    WhisperEncoder,
    WhisperEncoderLayer,
)

from petl_modules.backbones import FAMILIES, Backbone
from petl_modules.backbones.features import WhisperLogMel
from petl_modules.backbones.whisper import (
    WhisperBackbone,
    WhisperFeedForward,
    WhisperLayer,
)
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.adapters import Adapter
from petl_modules.tiny import tiny_whisper_config, tiny_whisper_feature_extractor
from petl_modules.training.compose import compose_hparams, load_hparams

METHODS = sorted(p.stem for p in (REPO / "hparams").glob("*.yaml"))
FULL_FRAMES = 200  # the tiny checkpoint: 100 positions x conv stride 2


def plain_encoder(folder):
    """transformers' own encoder of ``folder`` (through ``WhisperModel``, as a user would)."""
    return transformers.WhisperModel.from_pretrained(folder).get_encoder().eval()


def features(seconds, batch=2, clip_seconds=None, seed=0):
    """Log-mel features ``[B, frames, 80]`` of random clips, through the tiny checkpoint's
    extractor settings (80 mel bins) cut or padded to ``clip_seconds`` (None: 2 s, the full input)."""
    generator = torch.Generator().manual_seed(seed)
    processor = WhisperLogMel(round((clip_seconds or 2.0) * 16000))
    return torch.stack([processor(0.1 * torch.randn(int(seconds * 16000), generator=generator))
                        for _ in range(batch)])


def sliced_reference(encoder, inputs):
    """The encoder's own pieces (its convolutions, its first positions, its ``WhisperEncoderLayer``s
    as transformers runs them, its LayerNorm) on ``inputs [B, frames, mel]`` of any length."""
    hidden = torch.nn.functional.gelu(encoder.conv1(inputs.transpose(1, 2)))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        assert isinstance(layer, WhisperEncoderLayer)
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


# ---------------------------------------------------------------- loading and equality
def test_whisper_checkpoints_get_the_whisper_lobe(tiny_whisper):
    assert FAMILIES["whisper"] is WhisperBackbone
    lobe = Backbone(tiny_whisper, max_frames=64, position_embeddings="zeros")  # other families' options
    assert isinstance(lobe, WhisperBackbone) and lobe.family == "whisper"
    assert lobe.input_kind == "spectrogram" and not lobe.has_cls_token and lobe.PROMPT_POSITION == (0, 0)
    assert (lobe.hidden_size, lobe.num_layers) == (64, 2)
    assert set(WhisperBackbone.options()) == {"clip_seconds", "attn_implementation", "gradient_checkpointing"}
    assert not hasattr(lobe.model, "decoder") and isinstance(lobe.model, WhisperEncoder)


def test_full_input_equals_transformers_whisper_encoder(tiny_whisper):
    lobe = Backbone(tiny_whisper).eval()
    assert lobe.input_processor.frames == FULL_FRAMES and lobe.clip_samples == 32000
    inputs = features(1.3)
    with torch.no_grad():
        hidden, mask = lobe(inputs)
        expected = plain_encoder(tiny_whisper)(inputs.transpose(1, 2)).last_hidden_state
    assert mask is None and hidden.shape == (2, 100, 64)
    torch.testing.assert_close(hidden, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("clip_seconds", [0.5, 1.01])
def test_short_clip_equals_the_encoder_layers_with_sliced_positions(tiny_whisper, clip_seconds):
    lobe = Backbone(tiny_whisper, clip_seconds=clip_seconds).eval()
    inputs = features(0.8, clip_seconds=clip_seconds)
    frames = round(clip_seconds * 16000) // 160
    assert inputs.shape == (2, frames, 80) and lobe.input_processor.frames == frames
    with torch.no_grad():
        hidden, _ = lobe(inputs)
        expected = sliced_reference(plain_encoder(tiny_whisper), inputs)
    assert hidden.shape[1] == math.ceil(frames / 2)
    torch.testing.assert_close(hidden, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="Whisper expects the mel input features to be of length"):
        plain_encoder(tiny_whisper)(inputs.transpose(1, 2))  # why the lobe runs the pieces itself


def test_sdpa_and_eager_attention_agree(tiny_whisper):
    inputs = features(0.5, clip_seconds=0.5)
    with torch.no_grad():
        sdpa = Backbone(tiny_whisper, clip_seconds=0.5).eval()(inputs)[0]
        eager = Backbone(tiny_whisper, clip_seconds=0.5, attn_implementation="eager").eval()(inputs)[0]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_every_checkpoint_layout_loads_the_same_encoder(tiny_whisper, tmp_path):
    """Hub layout (``model.encoder.*``), ``WhisperModel`` (``encoder.*``), the encoder alone (an
    export); the state dict keeps the checkpoint's names; a checkpoint without the encoder's
    weights is refused."""
    inputs = features(1.0, clip_seconds=1.0)
    full = transformers.WhisperModel.from_pretrained(tiny_whisper)
    full.save_pretrained(tmp_path / "model")
    full.get_encoder().save_pretrained(tmp_path / "encoder")
    outputs = []
    for folder in (tiny_whisper, tmp_path / "model", tmp_path / "encoder"):
        lobe = Backbone(str(folder), clip_seconds=1.0).eval()
        assert sorted(lobe.model.state_dict()) == sorted(full.get_encoder().state_dict())
        with torch.no_grad():
            outputs.append(lobe(inputs)[0])
    for output in outputs[1:]:
        torch.testing.assert_close(output, outputs[0], atol=0, rtol=0)
    state, missing = WhisperBackbone.checkpoint_state(str(tmp_path / "model"))
    assert not missing and sorted(state) == sorted(full.get_encoder().state_dict())
    transformers.WhisperModel(tiny_whisper_config()).decoder.save_pretrained(tmp_path / "decoder")
    with pytest.raises(ValueError, match="not a Whisper encoder checkpoint|lacks Whisper encoder weights"):
        Backbone(str(tmp_path / "decoder"))


def test_export_writes_an_encoder_the_lobe_loads_back(tiny_whisper, tmp_path):
    lobe = Backbone(tiny_whisper, clip_seconds=1.0).eval()
    lobe.export_pretrained(tmp_path)
    inputs = features(1.0, clip_seconds=1.0)
    with torch.no_grad():
        torch.testing.assert_close(Backbone(str(tmp_path), clip_seconds=1.0).eval()(inputs)[0], lobe(inputs)[0])


# ---------------------------------------------------------------- inputs
def test_log_mel_processor_is_the_whisper_feature_extractor():
    extractor = transformers.WhisperFeatureExtractor()
    wav = 0.1 * torch.randn(20000)
    full = WhisperLogMel(480000)(wav)
    expected = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_features[0]
    torch.testing.assert_close(full, expected.T, atol=0, rtol=0)
    clip = WhisperLogMel(64000)(wav)  # 4 s: padded to the clip, not to 30 s
    expected = extractor(wav.numpy(), sampling_rate=16000, padding="max_length", max_length=64000,
                         truncation=True, return_tensors="pt").input_features[0]
    assert clip.shape == (400, 80)
    torch.testing.assert_close(clip, expected.T, atol=0, rtol=0)
    long = WhisperLogMel(8000)
    assert long(torch.randn(48000)).shape == (50, 80) and long.samples_needed == 8000
    assert long.min_samples == 400 and long.sample_rate == 16000


def test_preprocessor_config_decides_the_log_mel_settings(tiny_whisper, tmp_path):
    lobe = Backbone(tiny_whisper)
    assert lobe.input_processor.config() == {
        "type": "whisper_log_mel", "clip_samples": 32000, "feature_size": 80, "sampling_rate": 16000,
        "hop_length": 160, "n_fft": 400, "padding_value": 0.0, "dither": 0.0}
    transformers.WhisperModel.from_pretrained(tiny_whisper).save_pretrained(tmp_path)
    transformers.WhisperFeatureExtractor(feature_size=80, hop_length=320, n_fft=800).save_pretrained(tmp_path)
    coarse = Backbone(str(tmp_path), clip_seconds=1.0)
    assert coarse.input_processor.settings["hop_length"] == 320 and coarse.input_processor.frames == 50
    transformers.WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="feature_size 128"):
        Backbone(str(tmp_path))
    (tmp_path / "preprocessor_config.json").unlink()  # Whisper's defaults, the config's mel bins
    assert Backbone(str(tmp_path), clip_seconds=1.0).input_processor.settings["hop_length"] == 160


def test_clip_longer_than_the_positions_is_refused(tiny_whisper):
    with pytest.raises(ValueError, match="clips of up to 2 s"):
        Backbone(tiny_whisper, clip_seconds=2.5)
    lobe = Backbone(tiny_whisper, clip_seconds=1.0)
    with pytest.raises(ValueError, match="more than the 100 position embeddings"):
        lobe(torch.zeros(1, 210, 80))
    with pytest.raises(ValueError, match="Expected log-mel features"):
        lobe(torch.zeros(1, 16000))


# ---------------------------------------------------------------- insertion points
def test_insertion_points_resolve_to_the_pretrained_modules(tiny_whisper):
    lobe = Backbone(tiny_whisper)
    plain = plain_encoder(tiny_whisper)
    layers = lobe.model.layers
    assert all(isinstance(layer, WhisperLayer) for layer in layers)
    expected = {
        "embeddings": [lobe.input_dropout],
        "layer": list(layers),
        "later_layers": list(layers)[1:],
        "attention": [layer.self_attn for layer in layers],
        "ffn": [layer.ffn for layer in layers],
        "ffn_in": [layer.fc1 for layer in layers],
        "ffn_out": [layer.fc2 for layer in layers],
        "ln_attention": [layer.self_attn_layer_norm for layer in layers],
        "ln_ffn": [layer.final_layer_norm for layer in layers],
        "q": [layer.self_attn.q_proj for layer in layers],
        "k": [layer.self_attn.k_proj for layer in layers],
        "v": [layer.self_attn.v_proj for layer in layers],
        "o": [layer.self_attn.out_proj for layer in layers],
        "final_norm": [lobe.model.layer_norm],
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, modules in expected.items():
        assert [m for _, m in lobe.modules_at(point)] == modules, point
    assert all(isinstance(m, WhisperFeedForward) and not list(m.parameters()) for m in expected["ffn"])
    assert all(isinstance(m, torch.nn.LayerNorm) for p in ("ln_attention", "ln_ffn", "final_norm")
               for m in expected[p])
    assert all(isinstance(m, torch.nn.Linear) for p in "qkvo" for m in expected[p])
    assert all(layer.self_attn.k_proj.bias is None for layer in layers)  # Whisper's keys have no bias
    # The layers keep the checkpoint's submodule names: the same state dict as transformers'.
    assert list(lobe.model.state_dict()) == list(plain.state_dict())
    assert lobe.trained_modules("ffn") == [
        "model.layers.0.fc1", "model.layers.0.fc2", "model.layers.1.fc1", "model.layers.1.fc2",
        "model.layers.0.ffn", "model.layers.1.ffn"]


def test_ffn_point_is_the_feed_forward_sublayer(tiny_whisper):
    """The FFN module's output is ``fc2(act(fc1(LN2(h))))``: a parallel adapter there with a zero
    up-projection leaves the output unchanged, and a sequential one replacing the FFN output by 0
    gives ``h + MHSA`` per layer."""
    lobe = Backbone(tiny_whisper, clip_seconds=1.0).eval()
    inputs = features(1.0, clip_seconds=1.0)
    with torch.no_grad():
        reference = lobe(inputs)[0]
        layer = lobe.model.layers[0]
        x = torch.randn(2, 7, 64)
        torch.testing.assert_close(layer.ffn(x), layer.fc2(layer.activation_fn(layer.fc1(x))))
    model = AdaptedBackbone(Backbone(tiny_whisper, clip_seconds=1.0), Adapter, ["ffn"], ["final_norm"],
                            {"adapter_block": "bottleneck", "reduction_rate": 16})
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs)[0], reference, atol=0, rtol=0)
        for _, adapter in model.adapted_model.modules_at("ffn"):
            adapter.adapter.up.weight.fill_(1.0)
        assert not torch.allclose(model(inputs)[0], reference)


def test_frozen_backbone_gives_the_same_output_in_train_mode(tmp_path):
    """Dropouts of the frozen pretrained modules stay off in training (eval-mode policy)."""
    torch.manual_seed(0)
    config = tiny_whisper_config(dropout=0.3, attention_dropout=0.3, activation_dropout=0.3,
                                 encoder_layerdrop=0.5)
    transformers.WhisperModel(config).save_pretrained(tmp_path)
    tiny_whisper_feature_extractor(config).save_pretrained(tmp_path)
    model = AdaptedBackbone(Backbone(str(tmp_path), clip_seconds=1.0), trainable=["final_norm"])
    inputs = features(1.0, clip_seconds=1.0)
    model.train()
    train = model(inputs)[0]
    model.eval()
    torch.testing.assert_close(train, model(inputs)[0])
    full = AdaptedBackbone(Backbone(str(tmp_path), clip_seconds=1.0), trainable=["top_layers:all"])
    full.train()
    assert not torch.allclose(full(inputs)[0], train)  # fine-tuned layers: dropout and LayerDrop on


def test_gradient_checkpointing_gives_the_same_gradients(tiny_whisper):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        lobe = Backbone(tiny_whisper, clip_seconds=0.5, gradient_checkpointing=checkpointing)
        model = AdaptedBackbone(lobe, Adapter, ["ffn"], ["final_norm", "input_norm:ffn"],
                                {"adapter_block": "conformer", "reduction_rate": 16, "kernel_size": 3})
        model.train()
        model(features(0.5, clip_seconds=0.5))[0].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


# ---------------------------------------------------------------- every method file
def compose(method, folder, tmp_path, dataset="FSC/fsc.yaml", **overrides):
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(folder), **overrides)
    return compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / dataset, options)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_file_trains_every_tensor(tiny_whisper, tmp_path, method):
    """Two AdamW steps on the tiny checkpoint: finite losses, and every trainable tensor gets a
    non-zero gradient (identity-start methods have zero gradients before the zero up-projection
    on the first step)."""
    overrides = {"clip_seconds": 0.5}
    if method == "full_ft":
        overrides["unfrozen_layers"] = 1
    if "reduction_rate" in ruamel.yaml.YAML().load((REPO / "hparams" / f"{method}.yaml").read_text()):
        overrides["reduction_rate"] = 16
    hparams = load_hparams(compose(method, tiny_whisper, tmp_path, **overrides))
    model, head = hparams["petl_model"], hparams["classifier"]
    params = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    params.update({f"head.{n}": p for n, p in head.named_parameters()})
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2)
    torch.manual_seed(0)
    inputs, labels = features(0.5, batch=4, clip_seconds=0.5), torch.tensor([0, 1, 2, 3])
    nonzero = set()
    model.train()
    head.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(*model(inputs)), labels)
        assert torch.isfinite(loss), method
        loss.backward()
        nonzero |= {n for n, p in params.items() if p.grad is not None and bool(torch.any(p.grad != 0))}
        optimizer.step()
    dead = sorted(n for n in set(params) - nonzero if not zero_gradient_by_construction(n))
    assert not dead, f"{method}: no gradient for {dead}"
    assert any(n.startswith("model.") for n in params), f"{method}: nothing of the backbone trains"


def test_prompts_and_prefixes_change_the_sequence_as_the_contract_says(tiny_whisper, tmp_path):
    inputs = features(0.5, clip_seconds=0.5)  # 25 tokens
    hparams = load_hparams(compose("prompt_tuning", tiny_whisper, tmp_path, clip_seconds=0.5, prompt_len=5))
    assert hparams["pooling"] == "speech" and hparams["prompt_span"] == [0, 5]  # family default
    hidden, mask = hparams["petl_model"](inputs)
    assert hidden.shape == (2, 30, 64) and mask is None
    hparams = load_hparams(compose("prefix_tuning", tiny_whisper, tmp_path, clip_seconds=0.5, prompt_len=4))
    model = hparams["petl_model"].eval()
    for _, prefix in model.adapted_model.modules_at("attention"):
        assert prefix.prefix_keys.shape == (2, 64)
    with torch.no_grad():
        prefixed = model(inputs)[0]
        plain = Backbone(tiny_whisper, clip_seconds=0.5).eval()(inputs)[0]
    assert prefixed.shape == plain.shape and not torch.allclose(prefixed, plain)


# ---------------------------------------------------------------- whisper-base counts
# Trainable parameters of each method file's defaults on the whisper-base encoder shape (FSC
# recipe: conformer kernel 31), the classification head excluded. D = 512, 6 pre-LN layers, so
# every method also trains the final LayerNorm (1,024); adapters/MoA the LayerNorm before the
# adapted sublayer (1,024 per layer).
WHISPER_BASE_COUNTS = {
    "linear": 1_024,
    "full_ft": 20_590_592 - 1500 * 512,  # everything but the frozen sinusoidal positions
    "bitfit": 6 * 5_120 + 512,  # q, v, out, fc1 (2048), fc2, 2 LN biases per layer (k has none)
    "lora": 6 * 2 * 2 * 512 * 4 + 1_024,  # Wq, Wv; r = 512 / 128
    "prefix_tuning": 6 * 24 * 512 + 1_024,
    "prompt_tuning": 6 * 25 * 512 + 1_024,  # deep
    "adapter": 6 * (9_396 + 1_024) + 1_024,  # conformer r = 5, kernel 31, Pfeiffer at the FFN
    "dense_moa": 6 * (7 * 4_612 + 512 * 7 + 7 + 1_024) + 1_024,  # 7 bottlenecks r = 4 + router, MHSA
    "soft_moa": 6 * (7 * 4_612 + 512 * 7 + 1_024) + 1_024,  # 7 bottlenecks + Phi (512 x 7 x 1)
    "dora": 6 * 2 * (2 * 512 * 4 + 512) + 1_024,  # LoRA's Wq, Wv + a magnitude per output
    "ia3": 6 * (512 + 512 + 2_048) + 1_024,  # keys, values, FFN activations
    "vera": 6 * 2 * (256 + 512) + 1_024,
    "layer_sum": 7,  # the embedding + 6 layers; the final LayerNorm stays frozen
}


def test_whisper_base_trainable_counts(whisper_base_folder, tmp_path):
    assert set(WHISPER_BASE_COUNTS) == set(METHODS), "a method file without a pinned count"
    counts = {}
    for method in METHODS:
        model = load_hparams(compose(method, whisper_base_folder, tmp_path))["petl_model"]
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == {
        "adapter": 63_544, "bitfit": 31_232, "dense_moa": 222_418, "full_ft": 19_822_592,
        "linear": 1_024, "lora": 50_176, "prefix_tuning": 74_752, "prompt_tuning": 77_824,
        "soft_moa": 222_376, "dora": 56_320, "ia3": 19_456, "vera": 10_240, "layer_sum": 7,
    }
    assert counts == WHISPER_BASE_COUNTS
    lobe = Backbone(whisper_base_folder)
    assert sum(p.numel() for p in lobe.parameters()) == 20_590_592
    assert lobe.input_processor.frames == 3000 and lobe.clip_samples == 480000  # null: 30 s


# ---------------------------------------------------------------- recipes (slow)
@pytest.mark.slow
def test_fsc_recipe_runs_end_to_end_on_whisper(tiny_whisper, fsc_data, tmp_path):
    """Train, test with the best checkpoint, and classify files with the saved PETL model folder."""
    from recipe_helpers import run_in_process

    from petl_modules.classify import PETLClassifier

    out = tmp_path / "run"
    results = run_in_process("FSC", [
        str(REPO / "hparams" / "adapter.yaml"), f"--data_folder={fsc_data}",
        f"--backbone_source={tiny_whisper}", f"--output_folder={out}", "--number_of_epochs=1",
        "--batch_size=8", "--num_workers=0", "--clip_seconds=1.0", "--reduction_rate=16",
    ])
    assert isinstance(results, dict), results
    assert results["backbone"] == "whisper" and results["model_type"] == "whisper"
    assert results["method"] == "adapter"
    conformer = 64 * 8 + 8 + 4 * 31 + 4 + 2 * 4 + 4 * 64 + 64 + 2 * 64  # pw 2r, dw k31, BN, pw, LN
    assert results["trainable_params_without_head"] == 2 * (2 * 64 + conformer) + 2 * 64
    (fold,) = results["folds"]
    assert math.isfinite(fold["test_loss"]) and 0.0 <= fold["test_accuracy"] <= 1.0

    classifier = PETLClassifier.from_folder(Path(out) / "petl_model")
    lobe = classifier.mods["petl_model"].adapted_model
    assert isinstance(lobe, WhisperBackbone) and lobe.clip_samples == 16000
    wavs = sorted((Path(fsc_data) / "wavs").rglob("*.wav"))[:2]
    predictions, unreadable = classifier.classify_files(wavs)
    assert not unreadable and all(p["label"] in fold["class_names"] for p in predictions)
