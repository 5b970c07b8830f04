"""Tiny random backbone configs, for the tests, the demo and the benchmark (nothing is downloaded).

Saved with ``save_pretrained`` (BEATs: as its released ``.pt`` files), they exercise the real
loading path of every lobe. ``save_tiny(family, folder)`` writes the demo's.
"""

import transformers


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


# The waveform encoders' tiny shape: hidden 32, 2 layers, 4 heads, a 3-layer CNN of stride 320 as
# the real ones (49 frames per second), a positional convolution of 4 groups.
TINY_WAVEFORM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 8, 8),
    conv_kernel=(10, 8, 8),
    num_conv_pos_embedding_groups=4,
    mask_time_length=2,
)


def tiny_waveform_config(model_type="wav2vec2", pre_ln=False, feat_extract_norm="group", **overrides):
    """A small random wav2vec2 / HuBERT / WavLM config for tests (hidden 32, 2 layers, 4 heads, a
    3-layer CNN of stride 320 as the real ones: 49 frames per second).

    ``pre_ln`` sets ``do_stable_layer_norm`` (the large models' layout); ``feat_extract_norm`` is
    ``group`` (base models) or ``layer`` (large models).
    """
    options = dict(TINY_WAVEFORM, num_conv_pos_embeddings=16, do_stable_layer_norm=pre_ln,
                   feat_extract_norm=feat_extract_norm)
    options.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **options)


def tiny_data2vec_audio_config(**overrides):
    """A small random data2vec-audio config (hidden 32, 2 layers, 4 heads, the CNN of
    ``tiny_waveform_config``), with data2vec-audio-base's positional embedding: 5 convolutions of
    kernel 19 (4 groups instead of 16, for the width of 32)."""
    options = dict(TINY_WAVEFORM, num_conv_pos_embeddings=5, conv_pos_kernel_size=19)
    options.update(overrides)
    return transformers.Data2VecAudioConfig(**options)


def tiny_whisper_config(**overrides):
    """A small random Whisper config (encoder d_model 64, 2 layers, 4 heads, FFN 128, 80 mel bins,
    100 positions: a 2 s full input of 200 frames; a 1-layer decoder that the lobe never loads)."""
    options = dict(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=100,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        max_target_positions=16,
        vocab_size=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    options.update(overrides)
    return transformers.WhisperConfig(**options)


def tiny_whisper_feature_extractor(config):
    """The ``WhisperFeatureExtractor`` of ``config``: its mel bins, and a chunk as long as its
    positions cover (``2 * max_source_positions`` frames of 10 ms)."""
    seconds = 2 * config.max_source_positions * 160 / 16000
    seconds = int(seconds) if float(seconds).is_integer() else seconds
    return transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=seconds)


def tiny_beats_config(**overrides):
    """A small random BEATs cfg (SpeechBrain's ``BEATsConfig`` fields): 16x16 patches embedded in
    32, 2 post-LN (DeepNorm) layers of 64, 4 heads, FFN 128, a positional convolution of kernel 16
    in 4 groups, the gated relative position bias of the released models (32 buckets)."""
    from speechbrain.lobes.models.beats import BEATsConfig

    options = dict(vars(BEATsConfig()), embed_dim=32, encoder_embed_dim=64, encoder_layers=2,
                   encoder_attention_heads=4, encoder_ffn_embed_dim=128, conv_pos=16, conv_pos_groups=4,
                   deep_norm=True, layer_norm_first=False, relative_position_embedding=True,
                   num_buckets=32, max_distance=64, gru_rel_pos=True, dropout=0.0, attention_dropout=0.0)
    options.update(overrides)
    return options


def save_tiny_beats(path, seed=0, **overrides):
    """A tiny random BEATs checkpoint (``tiny_beats_config``) written as the released files are
    (``{"cfg", "model"}``, the positional convolution's ``weight_g``/``weight_v``); returns its path."""
    from petl_modules.backbones.beats import save_checkpoint

    return save_checkpoint(tiny_beats_config(**overrides), path, seed=seed)


def tiny_w2v_bert_config(**overrides):
    """A small random w2v-BERT config (hidden 32, 2 Conformer layers, 4 heads, FFN 64, depthwise
    kernel 5, relative_key positions of +-8 / 4; w2v-BERT 2.0's 160 input features)."""
    options = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   conv_depthwise_kernel_size=5, left_max_position_embeddings=8,
                   right_max_position_embeddings=4)
    options.update(overrides)
    return transformers.Wav2Vec2BertConfig(**options)


def save_tiny_w2v_bert(folder, seed=0, **overrides):
    """A tiny random ``Wav2Vec2BertModel`` and w2v-BERT 2.0's feature extractor settings
    (``SeamlessM4TFeatureExtractor``: 80 mel bins, 2 frames stacked), saved with
    ``save_pretrained``; returns the folder."""
    import torch

    torch.manual_seed(seed)
    transformers.Wav2Vec2BertModel(tiny_w2v_bert_config(**overrides)).save_pretrained(folder)
    transformers.SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(folder)
    return folder


def save_tiny_ast(folder, seed=0, **overrides):
    """A tiny random ``ASTModel`` (``tiny_ast_config``) saved with ``save_pretrained``; returns the
    folder."""
    import torch

    torch.manual_seed(seed)
    transformers.ASTModel(tiny_ast_config(**overrides)).save_pretrained(folder)
    return folder


# What ``save_tiny`` writes per family: the saver and the file that shows it is written (a BEATs
# checkpoint is one ``.pt`` file, the others a ``save_pretrained`` folder).
TINY_SAVERS = {
    "ast": (save_tiny_ast, "config.json"),
    "beats": (save_tiny_beats, "tiny_beats.pt"),
    "w2v-bert": (save_tiny_w2v_bert, "config.json"),
}


def save_tiny(family, folder, seed=0):
    """A tiny random checkpoint of ``family`` (a key of ``TINY_SAVERS``) in ``folder``, written once;
    returns what ``--backbone_source`` takes (the folder; BEATs: its ``.pt`` file)."""
    from pathlib import Path

    if family not in TINY_SAVERS:
        raise ValueError(f"No tiny random {family!r} backbone: choose one of {', '.join(TINY_SAVERS)}.")
    saver, marker = TINY_SAVERS[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = folder / marker
    if not written.is_file():
        saver(written if marker.endswith(".pt") else folder, seed=seed)
    return written if marker.endswith(".pt") else folder
