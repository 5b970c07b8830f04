"""Deterministic tensors for the model folders of older formats in ``tests/data/legacy_v<N>/``.

Those folders were written by the code of their format version (``format_version`` 1, 2 and 3;
``tests/data/write_legacy_folders.py`` wrote 2 and 3); only their JSON (``petl_config.json``, and
the probabilities the old code computed) is kept in the repository. The tensors and the base
checkpoints are regenerated here, the same way the old code's script filled them: every tensor, in
name order, from one seeded generator.
"""

import torch


def fill(tensors, seed, scale):
    """Fills ``{name: tensor}`` in place, in name order: ``scale * N(0, 1)`` from a generator seeded
    ``seed`` (BatchNorm ``running_var``: ``1 + |.|``; integer tensors: 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(tensors):
            tensor = tensors[name]
            if not tensor.is_floating_point():
                tensor.fill_(1)
                continue
            values = scale * torch.randn(tuple(tensor.shape), generator=generator)
            if name.endswith("running_var"):
                values = 1 + values.abs()
            tensor.copy_(values.to(tensor.dtype))
    return tensors


def tiny_base(folder):
    """The base checkpoint of the legacy folders (a hidden-32, 1-layer AST), saved to ``folder``."""
    import transformers

    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_length=128, num_mel_bins=128)
    model = transformers.ASTModel(config)
    fill(dict(model.state_dict()), seed=0, scale=0.02)
    model.save_pretrained(folder)
    return folder


def tiny_wav2vec2_base(folder):
    """The wav2vec2 base checkpoint of the format_version 3 folders (hidden 32, 1 post-LN layer,
    a 2-layer CNN of stride 10), saved to ``folder``."""
    import transformers

    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="group", do_stable_layer_norm=False)
    model = transformers.Wav2Vec2Model(config)
    fill(dict(model.state_dict()), seed=0, scale=0.02)
    model.save_pretrained(folder)
    return folder


BASES = {"ast": tiny_base, "wav2vec2": tiny_wav2vec2_base}


def waveforms(seconds, seed=0):
    """The inputs the expected probabilities were computed on."""
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(16000 * s), generator=generator) for s in seconds]


def probabilities(modules, wavs, multilabel=False):
    """Class probabilities ``[B, C]`` of ``{"petl_model", "classifier"}`` on the waveforms ``wavs``
    (sigmoid per class for a multi-label model, else softmax)."""
    from speechbrain.utils.data_utils import batch_pad_right

    processor = modules["petl_model"].adapted_model.input_processor
    inputs, lengths = batch_pad_right([processor(w) for w in wavs])
    with torch.no_grad():
        hidden, mask = modules["petl_model"](inputs, lengths)
        logits = modules["classifier"](hidden, mask)
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
