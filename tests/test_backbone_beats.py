"""The BEATs lobe (``petl_modules/backbones/beats.py``) on SpeechBrain's own model: equality with
``speechbrain.lobes.models.beats.BEATs``, the released ``.pt`` format read once and checked (pickle
refused), padding masked, the insertion points, prefix tuning's attention hook, the model folder,
and the trainable counts of every method file on the BEATs_iter3 shape."""

import argparse
import math
from pathlib import Path

import pytest
import torch
from speechbrain.lobes.models import beats as sb_beats
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules.backbones import Backbone, lobe_class
from petl_modules.backbones.base import checkpoint_fingerprint
from petl_modules.backbones.beats import (
    BEATsBackbone,
    BEATsCheckpointError,
    BEATsFeedForward,
    BEATsLayer,
    BEATsModel,
    BEATsSelfAttention,
    read_checkpoint,
)
from petl_modules.methods import METHODS, method_config
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.prompt import PrefixTuning
from petl_modules.model import PETLModel
from petl_modules.model.spec import PETLModelError
from petl_modules.tiny import save_tiny_beats, tiny_beats_config
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO


def speechbrain_beats(path):
    """SpeechBrain's ``BEATs`` of the checkpoint, loaded as SpeechBrain loads one (its
    ``load_state_dict``, which reads the released files' weight-norm names)."""
    checkpoint = torch.load(path, weights_only=True)
    model = BEATsModel(checkpoint["cfg"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def waveforms(*seconds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=generator) for s in seconds]


# ---------------------------------------------------------------- SpeechBrain's output
@pytest.mark.parametrize("finetuned", [False, True])
def test_the_lobe_gives_speechbrains_beats_output(tmp_path, finetuned):
    path = save_tiny_beats(tmp_path / "b.pt", finetuned_model=finetuned, predictor_class=5)
    lobe = Backbone(str(path)).eval()
    assert isinstance(lobe, BEATsBackbone) and lobe_class(path) is BEATsBackbone
    wavs = torch.stack(waveforms(1.0, 1.0))
    with torch.no_grad():
        hidden, mask = lobe(torch.stack([lobe.input_processor(w) for w in wavs]))
        expected = speechbrain_beats(path).extract_features(wavs, torch.ones(2))[0]
    assert hidden.shape == (2, 6 * 8, 64) and bool(mask.all())  # 98 frames: 6 blocks x 8 bands
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)


def test_the_input_is_speechbrains_preprocess(tiny_beats):
    lobe = Backbone(tiny_beats, clip_seconds=0.5)
    (wav,) = waveforms(1.0)
    expected = sb_beats.BEATs.preprocess(None, wav[None, :8000])[0]
    assert torch.equal(lobe.input_processor(wav), expected)
    assert lobe.input_processor.config()["type"] == "beats_fbank"
    assert lobe.input_processor.min_samples == 400 + 15 * 160  # one 16-frame patch


def test_an_utterance_gets_its_output_alone_or_padded_in_a_batch(tiny_beats):
    lobe = Backbone(tiny_beats).eval()
    short, long = (lobe.input_processor(w) for w in waveforms(0.6, 1.3))
    inputs, lengths = batch_pad_right([long, short])
    with torch.no_grad():
        batched, mask = lobe(inputs, lengths)
        alone, _ = lobe(short[None])
    # 0.6 s: 58 frames, 3 whole patches of 16 frames (the partial fourth is padding, as alone)
    assert mask.sum(1).tolist() == [8 * (long.shape[0] // 16), 8 * 3] and alone.shape[1] == 24
    torch.testing.assert_close(batched[1, :24], alone[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the checkpoint file
def test_the_file_is_read_once_with_weights_only_and_speechbrain_never_loads_it(tiny_beats, monkeypatch):
    calls, paths = [], []
    load, init = torch.load, sb_beats.BEATs.__init__

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    def speechbrains_init(self, ckp_path=None, *args, **kwargs):
        paths.append(ckp_path)
        return init(self, ckp_path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    monkeypatch.setattr(sb_beats.BEATs, "__init__", speechbrains_init)
    default = sb_beats.BEATsConfig
    lobe = Backbone(tiny_beats)
    assert calls == [True]
    assert paths and set(paths) == {None}  # SpeechBrain's own __init__ builds it, never given the file
    assert sb_beats.BEATsConfig is default  # the config it was handed is SpeechBrain's name again
    cfg = torch.load(tiny_beats, weights_only=True)["cfg"]
    assert lobe.model.cfg.encoder_embed_dim == cfg["encoder_embed_dim"] != default().encoder_embed_dim
    assert lobe.fingerprint() == checkpoint_fingerprint(tiny_beats)  # the tensors as loaded
    assert lobe.fingerprint()["kind"] == "tensors"


def test_a_file_that_needs_pickle_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"cfg": argparse.Namespace(encoder_layers=2), "model": {}}, path)
    with pytest.raises(BEATsCheckpointError, match="cannot be read without unpickling.*weights_only=True"
                                                   ".*never unpickles"):
        Backbone(str(path))


@pytest.mark.parametrize("change,message", [
    (lambda c: c["model"].pop("encoder.layers.1.fc2.bias"), "encoder.layers.1.fc2.bias: missing"),
    (lambda c: c["model"].update(extra=torch.zeros(2)), "extra: not a tensor of the model"),
    (lambda c: c["model"].update({"encoder.layers.0.fc1.weight": torch.zeros(3, 3)}), "shape \\[3, 3\\]"),
    (lambda c: c["cfg"].update(encoder_layers="2"), "encoder_layers='2' \\(expected int\\)"),
    (lambda c: c["cfg"].update(activation_fn="glu"), "GLU_Linear has no forward"),
    (lambda c: c.pop("cfg"), "a dict with 'cfg' and 'model'"),
])
def test_the_files_tensors_and_cfg_are_checked(tiny_beats, tmp_path, change, message):
    checkpoint = torch.load(tiny_beats, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "wrong.pt")
    with pytest.raises(BEATsCheckpointError, match=message):
        Backbone(str(tmp_path / "wrong.pt"))


def test_an_export_is_the_same_checkpoint_in_speechbrains_names(tiny_beats, tmp_path):
    lobe = Backbone(tiny_beats)
    lobe.export_pretrained(tmp_path / "out")
    cfg, state = read_checkpoint(tmp_path / "out" / "beats.pt")
    assert "encoder.pos_conv.0.parametrizations.weight.original0" in state
    assert checkpoint_fingerprint(tmp_path / "out" / "beats.pt") == lobe.fingerprint()
    assert Backbone(str(tmp_path / "out" / "beats.pt")).fingerprint() == lobe.fingerprint()


def test_a_file_no_lobe_reads_is_named(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="is a file that no lobe reads.*BEATs \\(.pt\\)"):
        lobe_class(tmp_path / "model.bin")


# ---------------------------------------------------------------- insertion points
def test_insertion_points_resolve_to_speechbrains_modules(tiny_beats):
    lobe = Backbone(tiny_beats)
    layers = lobe.model.encoder.layers
    assert all(isinstance(layer, BEATsLayer) for layer in layers)
    expected = {
        "embeddings": [lobe.input_dropout],
        "layer": list(layers),
        "later_layers": list(layers)[1:],
        "attention": [layer.attention for layer in layers],
        "ffn": [layer.ffn for layer in layers],
        "ffn_in": [layer.fc1 for layer in layers],
        "ffn_out": [layer.fc2 for layer in layers],
        "ln_attention": [layer.self_attn_layer_norm for layer in layers],
        "ln_ffn": [layer.final_layer_norm for layer in layers],
        "q": [layer.self_attn.q_proj for layer in layers],
        "k": [layer.self_attn.k_proj for layer in layers],
        "v": [layer.self_attn.v_proj for layer in layers],
        "o": [layer.self_attn.out_proj for layer in layers],
        "final_norm": [],  # post-LN (DeepNorm): no final LayerNorm
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, modules in expected.items():
        assert [m for _, m in lobe.modules_at_optional(point)] == modules, point
    assert all(isinstance(m, sb_beats.MultiheadAttention) for m in (layer.self_attn for layer in layers))
    assert all(isinstance(m, BEATsSelfAttention) and not list(m.parameters()) for m in expected["attention"])
    assert all(isinstance(m, BEATsFeedForward) and not list(m.parameters()) for m in expected["ffn"])
    assert lobe.input_norm("ffn") is None  # post-LN: no LayerNorm feeds a sublayer alone


def test_prefix_attention_reproduces_speechbrains_attention_with_its_relative_position_bias(tiny_beats):
    """With no prefix tokens the hook's attention is SpeechBrain's exactly: the gated relative
    position bias of every layer and the padding mask included."""
    plain = Backbone(tiny_beats).eval()
    model = AdaptedBackbone(Backbone(tiny_beats), PrefixTuning, ["attention"],
                            adapter_kwargs={"prompt_len": 4}).eval()
    assert all(m.prefix_keys.shape == (2, 64) for m in model.modules() if isinstance(m, PrefixTuning))
    inputs, lengths = batch_pad_right([plain.input_processor(w) for w in waveforms(1.0, 0.6)])
    with torch.no_grad():
        prefixed = model(inputs, lengths)[0]
        for module in model.modules():
            if isinstance(module, PrefixTuning):
                module.prefix_keys = torch.nn.Parameter(torch.empty(0, 64))
                module.prefix_values = torch.nn.Parameter(torch.empty(0, 64))
        empty, mask = model(inputs, lengths)
        reference, _ = plain(inputs, lengths)
    torch.testing.assert_close(empty[mask], reference[mask], rtol=0, atol=1e-5)
    assert not torch.allclose(prefixed[mask], reference[mask])


# ---------------------------------------------------------------- the model folder
def test_a_model_folder_names_the_file_and_loads_on_a_copy_of_it(tiny_beats, tmp_path):
    model = PETLModel.create(tiny_beats, method_config("lora", {"reduction_rate": 16}), ["a", "b"])
    model.save_pretrained(tmp_path / "m")
    backbone = model.spec.to_json()["backbone"]
    assert backbone["family"] == "beats" and backbone["model_type"] is None
    assert backbone["local_name"] == "tiny_beats.pt" and backbone["hub_id"] is None
    assert backbone["fingerprint"]["kind"] == "tensors"
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(tiny_beats).read_bytes())
    loaded = PETLModel.from_pretrained(tmp_path / "m", backbone_source=str(copy))
    wav = waveforms(0.8)
    torch.testing.assert_close(loaded.classify_waveforms(wav)[0], model.classify_waveforms(wav)[0])
    other = save_tiny_beats(tmp_path / "other.pt", seed=1)
    with pytest.raises(PETLModelError, match="fingerprints of their weights differ"):
        PETLModel.from_pretrained(tmp_path / "m", backbone_source=str(other))


# ---------------------------------------------------------------- BEATs_iter3 counts
# Trainable parameters of each method file's defaults on the BEATs_iter3 shape (FSC recipe), the
# head excluded. D = 768, 12 post-LN layers: no final LayerNorm and no LayerNorm before a
# sublayer trains (as on wav2vec2-base), so the counts are wav2vec2-base's but for BitFit (BEATs'
# gate of the relative position bias has a bias: 8 per layer) and full fine-tuning.
BEATS_ITER3_COUNTS = {
    "linear": 0,
    "full_ft": 90_311_792,  # every parameter: the patch embedding and positional convolution too
    "bitfit": 12 * (4 * 768 + 3072 + 768 + 8 + 2 * 768),  # q, k, v, out, fc1, fc2, gate, 2 LN
    "lora": 12 * 2 * 2 * 768 * 6,
    "dora": 12 * 2 * (2 * 768 * 6 + 768),
    "ia3": 12 * (768 + 768 + 3072),
    "vera": 12 * 2 * (256 + 768),
    "layer_sum": 13,
    "prefix_tuning": 12 * 24 * 768,
    "prompt_tuning": 12 * 25 * 768,  # deep
    "adapter": 12 * 21_024,  # conformer, Pfeiffer at the FFN, r = 8, kernel 31
    "dense_moa": 12 * (7 * 9_990 + 768 * 7 + 7),
    "soft_moa": 12 * (7 * 9_990 + 768 * 7),
}


@pytest.mark.slow  # writes and reads a 360 MB checkpoint 14 times
def test_beats_iter3_trainable_counts(beats_iter3_file, tmp_path):
    assert set(BEATS_ITER3_COUNTS) == set(METHODS), "a method file without a pinned count"
    counts = {}
    for method in METHODS:
        text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
                               {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                                "backbone_source": beats_iter3_file})
        model = load_hparams(text)["petl_model"]
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == BEATS_ITER3_COUNTS
    lobe = Backbone(beats_iter3_file)
    assert (lobe.hidden_size, lobe.num_layers, lobe.config.encoder_attention_heads,
            lobe.config.encoder_ffn_embed_dim, lobe.config.input_patch_size) == (768, 12, 12, 3072, 16)
    assert sum(p.numel() for p in lobe.parameters()) == 90_311_792
    assert math.isclose(lobe.model.encoder.layers[0].deep_norm_alpha, 24 ** 0.25)


def test_the_tiny_config_is_speechbrains_config_with_small_sizes():
    assert set(tiny_beats_config()) == set(vars(sb_beats.BEATsConfig()))
