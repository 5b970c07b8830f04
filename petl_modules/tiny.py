"""Tiny random backbone configs, for the tests, the demo and the benchmark (nothing is downloaded).

Saved with ``save_pretrained``, they exercise the real loading path of every lobe.
"""

import transformers

from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS


def tiny_ast_config(**overrides):
    """A small random AST config for tests and the demo (hidden 64, 2 layers, 4 heads)."""
    options = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_length=128,
        num_mel_bins=128,
    )
    options.update(overrides)
    return transformers.ASTConfig(**options)


def tiny_waveform_config(model_type="wav2vec2", pre_ln=False, feat_extract_norm="group", **overrides):
    """A small random wav2vec2 / HuBERT / WavLM config for tests (hidden 32, 2 layers, 4 heads, a
    3-layer CNN of stride 320 as the real ones: 49 frames per second).

    ``pre_ln`` sets ``do_stable_layer_norm`` (the large models' layout); ``feat_extract_norm`` is
    ``group`` (base models) or ``layer`` (large models).
    """
    options = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=pre_ln,
        feat_extract_norm=feat_extract_norm,
        mask_time_length=2,
    )
    options.update(overrides)
    return WAVEFORM_MODELS[model_type][0](**options)


def tiny_data2vec_audio_config(**overrides):
    """A small random data2vec-audio config (hidden 32, 2 layers, 4 heads, the CNN of
    ``tiny_waveform_config``), with data2vec-audio-base's positional embedding: 5 convolutions of
    kernel 19 (4 groups instead of 16, for the width of 32)."""
    options = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=5,
        conv_pos_kernel_size=19,
        num_conv_pos_embedding_groups=4,
        mask_time_length=2,
    )
    options.update(overrides)
    return transformers.Data2VecAudioConfig(**options)
