"""The data2vec-audio lobe (``transformers.Data2VecAudioModel``, e.g. ``facebook/data2vec-audio-base``).

data2vec-audio has wav2vec 2.0's encoder: the same module names (``feature_extractor``,
``feature_projection``, ``encoder.{pos_conv_embed, layer_norm, dropout, layers.N.{attention.
{q,k,v,out}_proj, layer_norm, feed_forward.{intermediate_dense, output_dense}, final_layer_norm}}``),
the same post-LN layer and the same encoder forward. So it is ``Wav2Vec2Backbone`` (family
``wav2vec2``: same input, insertion points, what trains, family defaults) with three differences,
read off transformers 5.24 (``models/data2vec/modeling_data2vec_audio.py``) and pinned by
``tests/test_backbone_data2vec_audio.py``:

- the layers are always post-LN (wav2vec2-base's layout; the config has no ``do_stable_layer_norm``),
  so there is no final LayerNorm;
- every convolution of the CNN feature encoder is followed by a LayerNorm per frame (wav2vec2's
  ``feat_extract_norm: layer``; the config has no ``feat_extract_norm``): the CNN never mixes
  padding into valid frames, and the model takes an attention mask (also when the checkpoint has no
  ``preprocessor_config.json``);
- the positional embedding is a stack of ``num_conv_pos_embeddings`` (5) grouped convolutions of
  kernel ``conv_pos_kernel_size`` (19), each followed by a LayerNorm without parameters and GELU
  (wav2vec2: one weight-normalised convolution of kernel 128).

Padding. transformers zeroes the padded frames once, before the first positional convolution; the
second one then reads the non-zero values the first wrote on padded frames next to valid ones, so
the plain model's output for an utterance depends on the padding of its batch (on every frame,
through attention). The lobe zeroes the padded frames before every positional convolution, which
is what an utterance alone sees (each convolution zero-pads it): an utterance padded in a batch
gets exactly its output alone, as with wav2vec2 (pinned by the tests). Without padding the lobe is
the plain model.
"""

import transformers

from petl_modules.backbones.base import register
from petl_modules.backbones.wav2vec2 import Wav2Vec2Backbone


@register("data2vec-audio")
class Data2VecAudioBackbone(Wav2Vec2Backbone):
    """data2vec-audio (``transformers.Data2VecAudioModel``): ``Wav2Vec2Backbone``'s lobe, options
    and insertion points (post-LN layout), with data2vec-audio's model class and positional
    embedding (see the module doc)."""

    def _model_class(self, config):
        return transformers.Data2VecAudioModel

    def _layout(self, config):
        """Post-LN layers; a CNN normalised per frame (LayerNorm after every convolution)."""
        return False, True

    def _position_embeddings(self, hidden, attention_mask):
        """The stack of positional convolutions, padded frames zeroed before each one (see the
        module doc); with no attention mask, as transformers runs it."""
        embedding = self.model.encoder.pos_conv_embed
        if attention_mask is None:
            return embedding(hidden)
        keep = attention_mask[:, None, :].to(hidden.dtype)  # [B, 1, T]
        hidden = hidden.transpose(1, 2)
        for layer in embedding.layers:
            hidden = layer(hidden * keep)
        return hidden.transpose(1, 2)
