"""The w2v-BERT 2.0 lobe (``petl_modules/backbones/w2v_bert.py``): equality with transformers'
``Wav2Vec2BertModel`` fed by its ``SeamlessM4TFeatureExtractor``, padding masked, the Conformer
layer's insertion points, prefix tuning's attention hook, the linear probe's cache, and the
trainable counts of every method file on the w2v-BERT 2.0 shape."""

import pytest
import torch
import transformers
from speechbrain.utils.data_utils import batch_pad_right
from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert

from petl_modules.backbones import Backbone
from petl_modules.backbones.w2v_bert import W2VBertBackbone
from petl_modules.methods import METHODS
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.classifier import Classifier
from petl_modules.methods.prompt import PrefixTuning, prompt_tuning
from petl_modules.tiny import save_tiny_w2v_bert
from petl_modules.training.cache import head_input, normalised_pooled
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO


def waveforms(*seconds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=generator) for s in seconds]


def test_the_lobe_gives_transformers_output_with_the_checkpoints_feature_extractor(tiny_w2v_bert):
    lobe = Backbone(tiny_w2v_bert).eval()
    assert isinstance(lobe, W2VBertBackbone) and lobe.family == "w2v-bert"
    plain = transformers.Wav2Vec2BertModel.from_pretrained(tiny_w2v_bert).eval()
    extractor = transformers.SeamlessM4TFeatureExtractor.from_pretrained(tiny_w2v_bert)
    wavs = waveforms(1.0, 0.55)
    batch = extractor([w.numpy() for w in wavs], sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = plain(batch["input_features"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden, mask = lobe(*batch_pad_right([lobe.input_processor(w) for w in wavs]))
    assert torch.equal(mask, batch["attention_mask"].bool())
    torch.testing.assert_close(hidden[mask], expected[mask], rtol=0, atol=1e-6)


def test_features_are_the_extractors_valid_stacked_frames(tiny_w2v_bert):
    lobe = Backbone(tiny_w2v_bert, clip_seconds=0.51)
    extractor = transformers.SeamlessM4TFeatureExtractor.from_pretrained(tiny_w2v_bert)
    (wav,) = waveforms(1.0)
    out = extractor(wav[:8160].numpy(), sampling_rate=16000, return_tensors="pt")
    features = lobe.input_processor(wav)  # cut to the 0.51 s clip: 49 fbank frames, 24 stacked + 1 masked
    assert features.shape == (24, 160) and out["attention_mask"][0].tolist() == [1] * 24 + [0]
    assert torch.equal(features, out["input_features"][0, :24])
    assert lobe.input_processor.config()["type"] == "w2v_bert_fbank"


def test_an_utterance_gets_its_output_alone_or_padded_in_a_batch(tiny_w2v_bert):
    lobe = Backbone(tiny_w2v_bert).eval()
    short, long = (lobe.input_processor(w) for w in waveforms(0.4, 1.2))
    with torch.no_grad():
        batched, mask = lobe(*batch_pad_right([long, short]))
        alone, _ = lobe(short[None])
    assert mask[1].sum() == alone.shape[1] == short.shape[0]
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-5)


def test_insertion_points_map_onto_the_conformer_layer(tiny_w2v_bert):
    lobe = Backbone(tiny_w2v_bert)
    layers = lobe.model.encoder.layers
    # transformers' own layer class, not a subclass nor a re-hosted copy of its forward
    assert all(type(layer) is modeling_wav2vec2_bert.Wav2Vec2BertEncoderLayer for layer in layers)
    expected = {
        "embeddings": [lobe.model.encoder.dropout],
        "layer": list(layers),
        "later_layers": list(layers)[1:],
        "attention": [layer.self_attn for layer in layers],
        "ffn": [f for layer in layers for f in (layer.ffn1, layer.ffn2)],  # both half-step FFNs
        "ffn_in": [f.intermediate_dense for layer in layers for f in (layer.ffn1, layer.ffn2)],
        "ffn_out": [f.output_dense for layer in layers for f in (layer.ffn1, layer.ffn2)],
        "ln_attention": [layer.self_attn_layer_norm for layer in layers],
        "ln_ffn": [n for layer in layers for n in (layer.ffn1_layer_norm, layer.ffn2_layer_norm)],
        "q": [layer.self_attn.linear_q for layer in layers],
        "k": [layer.self_attn.linear_k for layer in layers],
        "v": [layer.self_attn.linear_v for layer in layers],
        "o": [layer.self_attn.linear_out for layer in layers],
        "final_norm": [layers[-1].final_layer_norm],  # the model's output is that LayerNorm's
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, modules in expected.items():
        assert [m for _, m in lobe.modules_at(point)] == modules, point
    # the convolution module is no insertion point: no method reaches it
    assert not any(m is layer.conv_module for p in expected for m in expected[p] for layer in layers)
    prompted = AdaptedBackbone(Backbone(tiny_w2v_bert), prompt_tuning, ["embeddings", "later_layers"],
                               ["final_norm"], {"prompt_len": 3})
    trained = [n for n, p in prompted.named_parameters() if p.requires_grad and "prompts" not in n]
    assert trained == [f"adapted_model.model.encoder.layers.1.pretrained_module.final_layer_norm.{p}"
                       for p in ("weight", "bias")]  # found inside the wrapped last layer


def test_prefix_attention_reproduces_the_relative_key_attention(tiny_w2v_bert):
    plain = Backbone(tiny_w2v_bert).eval()
    model = AdaptedBackbone(Backbone(tiny_w2v_bert), PrefixTuning, ["attention"],
                            adapter_kwargs={"prompt_len": 4}).eval()
    inputs, lengths = batch_pad_right([plain.input_processor(w) for w in waveforms(1.0, 0.6)])
    with torch.no_grad():
        prefixed = model(inputs, lengths)[0]
        for module in model.modules():
            if isinstance(module, PrefixTuning):
                module.prefix_keys = torch.nn.Parameter(torch.empty(0, 32))
                module.prefix_values = torch.nn.Parameter(torch.empty(0, 32))
        empty, mask = model(inputs, lengths)
        reference, _ = plain(inputs, lengths)
    torch.testing.assert_close(empty[mask], reference[mask], rtol=0, atol=1e-5)
    assert not torch.allclose(prefixed[mask], reference[mask])


def test_linear_probing_caches_the_last_layers_layernorm_input(tiny_w2v_bert):
    model = AdaptedBackbone(Backbone(tiny_w2v_bert), trainable=["final_norm"]).eval()
    head = Classifier(32, 3)
    inputs, lengths = batch_pad_right([model.adapted_model.input_processor(w) for w in waveforms(0.7, 0.4)])
    with torch.no_grad():
        torch.testing.assert_close(head(head_input(model, normalised_pooled(model, head, inputs, lengths))),
                                   head(*model(inputs, lengths)), rtol=1e-5, atol=1e-5)


def test_checkpoints_with_transformers_adapter_layers_are_refused(tmp_path):
    save_tiny_w2v_bert(tmp_path, add_adapter=True)
    with pytest.raises(ValueError, match="add_adapter=True.*facebook/w2v-bert-2.0"):
        Backbone(str(tmp_path))


# ---------------------------------------------------------------- w2v-BERT 2.0 counts
# Trainable parameters of each method file's defaults on the w2v-BERT 2.0 shape (FSC recipe), the
# head excluded. D = 1024, 24 pre-LN Conformer layers; every method trains the last layer's output
# LayerNorm (the final_norm, 2,048); adapters at the FFN sit at both half-step FFNs and train their
# two LayerNorms; MoA at MHSA trains the attention's LayerNorm.
LN = 2 * 1024
W2V_BERT_2_COUNTS = {
    "linear": LN,
    "full_ft": 580_492_096,  # everything but masked_spec_embed (transformers' masking, unused)
    "bitfit": 24 * (4 * 1024 + 2 * (4096 + 1024) + 6 * 1024),  # 4 attention, 2 x 2 FFN, 6 LN (final one too)
    "lora": 24 * 2 * 2 * 1024 * 8 + LN,  # Wq, Wv; r = 1024 / 128
    "dora": 24 * 2 * (2 * 1024 * 8 + 1024) + LN,
    "ia3": 24 * (1024 + 1024 + 2 * 4096) + LN,  # k, v, and both FFNs' intermediate activations
    "vera": 24 * 2 * (256 + 1024) + LN,
    "layer_sum": 25,
    "prefix_tuning": 24 * 24 * 1024 + LN,
    "prompt_tuning": 24 * 25 * 1024 + LN,  # deep
    # conformer adapter, r = round(1024 / 96) = 11, kernel 31, at both FFNs, each with its LN
    "adapter": 24 * 2 * (2 * 1024 + (1024 * 22 + 22) + (11 * 31 + 11) + 2 * 11 + (11 * 1024 + 1024)
                         + LN) + LN,
    "dense_moa": 24 * (7 * (2 * 1024 * 8 + 8 + 1024) + 1024 * 7 + 7 + LN) + LN,  # r = 8, router, MHSA
    "soft_moa": 24 * (7 * (2 * 1024 * 8 + 8 + 1024) + 1024 * 7 + LN) + LN,  # 7 experts + Phi
}


@pytest.mark.slow
def test_w2v_bert_2_trainable_counts(w2v_bert_2_folder, tmp_path):
    assert set(W2V_BERT_2_COUNTS) == set(METHODS), "a method file without a pinned count"
    counts = {}
    for method in METHODS:
        text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
                               {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                                "backbone_source": w2v_bert_2_folder})
        model = load_hparams(text)["petl_model"]
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        del model
    assert counts == W2V_BERT_2_COUNTS
    lobe = Backbone(w2v_bert_2_folder)
    config = lobe.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (1024, 24, 16, 4096)
    assert sum(p.numel() for p in lobe.parameters()) == W2V_BERT_2_COUNTS["full_ft"] + 1024
