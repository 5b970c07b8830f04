"""The w2v-BERT 2.0 lobe (``facebook/w2v-bert-2.0``, model_type ``wav2vec2-bert``:
``transformers.Wav2Vec2BertModel``), a Conformer encoder.

Input: the checkpoint's feature extractor (``preprocessor_config.json``, transformers'
``SeamlessM4TFeatureExtractor``): an 80-bin Kaldi-style log-mel fbank of the 16 kHz waveform,
normalised per mel bin over the utterance, two consecutive frames stacked into 160 features
(``W2VBertFeatures``; 20 ms per frame), one utterance at a time and not padded; a batch is padded
with zeros and the lobe passes the attention mask of the valid frames (padding changes nothing for
the valid frames: an utterance gets its output alone or in any batch).

Each layer is a Conformer block, pre-LN, with two half-step FFNs::

    h = h + 0.5 * FFN1(LN_f1(h))
    h = h + MHSA(LN_a(h))                  (relative position bias: relative_key distances)
    h = h + Conv(h)                        (its own LayerNorm inside; causal depthwise conv)
    h = LN_out(h + 0.5 * FFN2(LN_f2(h)))

The layers are transformers' own ``Wav2Vec2BertEncoderLayer``s, untouched: the insertion points are
names of their submodules (PETL wrappers take the attention's input by transformers' keyword
``hidden_states=`` as the layer passes it: ``petl_modules.contract.host_input``). The lobe runs
the layers one by one as ``Wav2Vec2BertEncoder`` does (``_encode``), with the token count free for
prompts. The insertion points: ``ffn`` is both half-step FFNs (``ffn1``, ``ffn2``: an adapter or a MoA at the FFN
is one per half-step FFN, its output halved with the FFN's), ``ffn_in``/``ffn_out`` their
``intermediate_dense``/``output_dense``, ``ln_ffn`` their LayerNorms (``ffn1_layer_norm``,
``ffn2_layer_norm``), ``attention`` the self-attention (``q``, ``k``, ``v``, ``o``: ``linear_q``,
``linear_k``, ``linear_v``, ``linear_out``; ``ln_attention``: ``self_attn_layer_norm``), and
``final_norm`` the last layer's ``final_layer_norm`` (the encoder has none after it: the model's
output is that LayerNorm's). The convolution module is no insertion point: every method leaves it
frozen (full fine-tuning trains it; BitFit its LayerNorms' biases: its convolutions have none).
"""

import logging

import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.wav2vec2_bert.modeling_wav2vec2_bert import Wav2Vec2BertSelfAttention

from petl_modules.backbones.base import Backbone, register
from petl_modules.backbones.layerdrop import layer_step
from petl_modules.backbones.loading import loading_options, read_config
from petl_modules.contract import (
    attend_with_prefix,
    checkpoint_contexts,
    prefix_attention,
    prefix_key_width,
    token_mask,
)
from petl_modules.options import Option

logger = logging.getLogger(__name__)

POSITION_EMBEDDINGS = ("relative_key", None)  # w2v-BERT 2.0's, and none


class W2VBertFeatures:
    """The checkpoint's ``SeamlessM4TFeatureExtractor`` on one utterance cut to ``clip_samples``:
    ``[frames, 160]`` stacked fbank frames, only the valid ones (the extractor pads an odd frame
    count to even and masks the last stacked frame; dropping it gives the valid frames' outputs the
    mask would give).

    Arguments
    ---------
    extractor : transformers.SeamlessM4TFeatureExtractor
        The checkpoint's (its ``num_mel_bins``, ``stride``, ``sampling_rate``).
    clip_samples : int or None
        Samples kept from the start of each utterance (None: the whole utterance).
    """

    def __init__(self, extractor, clip_samples=None):
        self.extractor = extractor
        self.clip_samples = None if clip_samples is None else int(clip_samples)
        if self.clip_samples is not None and self.clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive or None, got {clip_samples}.")

    @property
    def sample_rate(self):
        return self.extractor.sampling_rate

    @property
    def samples_needed(self):
        return self.clip_samples

    @property
    def min_samples(self):
        """Two 25 ms frames (one stacked frame); shorter input is padded with zeros."""
        return 400 + 160 * (self.extractor.stride - 1)

    def __call__(self, wav):
        """``[S]`` waveform -> ``[frames, num_mel_bins * stride]`` features."""
        wav = wav.reshape(-1).float()
        if self.clip_samples is not None:
            wav = wav[: self.clip_samples]
        if wav.shape[0] < self.min_samples:
            wav = torch.nn.functional.pad(wav, (0, self.min_samples - wav.shape[0]))
        out = self.extractor(wav.numpy(), sampling_rate=self.sample_rate, return_attention_mask=True,
                             return_tensors="pt")
        return out["input_features"][0][out["attention_mask"][0].bool()].float()

    def config(self):
        """The settings that rebuild this processor (for saved models and caches)."""
        extractor = self.extractor
        return {"type": "w2v_bert_fbank", "clip_samples": self.clip_samples,
                "num_mel_bins": extractor.num_mel_bins, "stride": extractor.stride,
                "sampling_rate": extractor.sampling_rate, "feature_size": extractor.feature_size}


def read_feature_extractor(source):
    """The checkpoint's ``SeamlessM4TFeatureExtractor`` (``preprocessor_config.json``); without
    one, its defaults (w2v-BERT 2.0's settings: 80 mel bins, stride 2, 16 kHz)."""
    try:
        return transformers.SeamlessM4TFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        logger.info(f"'{source}' has no preprocessor_config.json: w2v-BERT 2.0's feature settings "
                    "(80 mel bins, 2 frames stacked, 16 kHz).")
        return transformers.SeamlessM4TFeatureExtractor()


@attend_with_prefix.register(Wav2Vec2BertSelfAttention)
def _w2v_bert_attend_with_prefix(attention, hidden, prefix_keys, prefix_values, start,
                                 attention_mask=None, relative_position_embeddings=None):
    """w2v-BERT's attention with prefix keys and values (``base.attend_with_prefix``): its
    ``relative_key`` position bias (the queries against the distance embeddings) over the host's
    keys, none on the prefix keys; ``attention_mask`` the 4-D additive or boolean mask of the
    layer. Returns ``(output, None)`` as the attention does."""
    batch, length, _ = hidden.shape
    bias = None
    if attention.position_embeddings_type == "relative_key":
        query = attention.linear_q(hidden).view(batch, length, attention.num_heads, -1).transpose(1, 2)
        positions = torch.arange(length, device=hidden.device)
        distance = (positions[None, :] - positions[:, None]).clamp(
            -attention.left_max_position_embeddings, attention.right_max_position_embeddings)
        embedding = attention.distance_embedding(distance + attention.left_max_position_embeddings)
        bias = torch.einsum("bhld,lrd->bhlr", query, embedding.to(query.dtype)) * attention.scaling
    if attention_mask is not None:
        padding = attention_mask if attention_mask.dtype != torch.bool else \
            torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
                ~attention_mask, float("-inf"))
        bias = padding if bias is None else bias + padding
    out = prefix_attention(_W2VBertProjections(attention), hidden, prefix_keys, prefix_values, start, bias)
    return out, None


class _W2VBertProjections:
    """w2v-BERT's attention under the projection names ``prefix_attention`` reads."""

    def __init__(self, attention):
        self.q_proj, self.k_proj = attention.linear_q, attention.linear_k
        self.v_proj, self.o_proj = attention.linear_v, attention.linear_out
        self.num_heads, self.scaling = attention.num_heads, attention.scaling
        self.dropout, self.training = attention.dropout.p, attention.training


@prefix_key_width.register(Wav2Vec2BertSelfAttention)
def _w2v_bert_prefix_key_width(attention):
    return attention.linear_k.out_features


CLIP_SECONDS = Option(float, None, "every utterance cut to this duration (null: whole utterances); "
                      "padding in a batch is masked", minimum=0, exclusive_minimum=True, nullable=True)


@register("wav2vec2-bert")
class W2VBertBackbone(Backbone):
    """w2v-BERT 2.0 (``transformers.Wav2Vec2BertModel``) as a lobe.

    Input: ``[B, frames, 160]`` stacked fbank features (``W2VBertFeatures``), zero-padded in a
    batch, with relative ``lengths``. Output: the last layer's ``[B, T, D]`` (its final LayerNorm's)
    and the mask of valid frames. See the module docstring for the layer and its insertion points.

    Arguments
    ---------
    source : str
        Hub id (``facebook/w2v-bert-2.0``) or a local ``save_pretrained`` folder; its
        ``preprocessor_config.json`` gives the features.
    clip_seconds : float or None
        Cut every utterance to this duration (in the input processor); None: whole utterances.
    attn_implementation : str
        ``sdpa`` (default) or ``eager``.
    gradient_checkpointing : bool
        Recompute each layer in backward (also frozen ones a PETL module trains through).
    **other_options
        Options of the other families' lobes (e.g. ``max_frames``): ignored.
    """

    family = "w2v-bert"
    input_kind = "spectrogram"  # stacked fbank [B, frames, 160]
    takes_lengths = True
    MODEL_OPTIONS = {"clip_seconds": CLIP_SECONDS}
    PROMPT_POSITION = (0, 0)

    def __init__(self, source, clip_seconds=None, attn_implementation="sdpa", gradient_checkpointing=False,
                 **other_options):
        super().__init__(other_options)
        self.source = str(source)
        config = read_config(source)
        self.model, info = transformers.Wav2Vec2BertModel.from_pretrained(
            source, output_loading_info=True, **loading_options(source, attn_implementation))
        self.remember_checkpoint(self.model.state_dict(), info.get("missing_keys", ()))
        self.config = self.model.config
        unsupported = [f"{key}={getattr(config, key)!r}" for key, ok in (
            ("add_adapter", False), ("use_intermediate_ffn_before_adapter", False))
            if getattr(config, key) != ok]
        if config.position_embeddings_type not in POSITION_EMBEDDINGS:
            unsupported.append(f"position_embeddings_type={config.position_embeddings_type!r}")
        if unsupported:
            raise ValueError(
                f"Backbone '{source}' has {', '.join(unsupported)}: the w2v-BERT lobe runs encoders "
                "without transformers' adapter layers and with relative_key (w2v-BERT 2.0's) or no "
                "position embeddings. Pick such a checkpoint (facebook/w2v-bert-2.0).")
        encoder = self.model.encoder
        self.gradient_checkpointing = bool(gradient_checkpointing)
        last = len(encoder.layers) - 1
        layers = "model.encoder.layers"
        self.INSERTION_POINTS = {
            "embeddings": ["model.encoder.dropout"],
            "layer": [f"{layers}.[0-9]", f"{layers}.[0-9][0-9]"],
            "later_layers": [f"{layers}.[1-9]", f"{layers}.[0-9][0-9]"],
            "attention": [f"{layers}.*.self_attn"],
            "ffn": [f"{layers}.*.ffn1", f"{layers}.*.ffn2"],
            "ffn_in": [f"{layers}.*.ffn[12].intermediate_dense"],
            "ffn_out": [f"{layers}.*.ffn[12].output_dense"],
            "ln_attention": [f"{layers}.*.self_attn_layer_norm"],
            "ln_ffn": [f"{layers}.*.ffn1_layer_norm", f"{layers}.*.ffn2_layer_norm"],
            "q": [f"{layers}.*.self_attn.linear_q"],
            "k": [f"{layers}.*.self_attn.linear_k"],
            "v": [f"{layers}.*.self_attn.linear_v"],
            "o": [f"{layers}.*.self_attn.linear_out"],
            # the last layer's output LayerNorm (also when a PETL module wraps that layer)
            "final_norm": [f"{layers}.{last}.*final_layer_norm"],
        }
        extractor = read_feature_extractor(source)
        if extractor.num_mel_bins * extractor.stride != config.feature_projection_input_dim:
            raise ValueError(
                f"'{source}': preprocessor_config.json gives {extractor.num_mel_bins} x "
                f"{extractor.stride} features, the model takes {config.feature_projection_input_dim}.")
        self.clip_seconds = clip_seconds
        clip = None if clip_seconds is None else round(float(clip_seconds) * extractor.sampling_rate)
        self.input_processor = W2VBertFeatures(extractor, clip)

    def feature_extractor(self):
        """The ``SeamlessM4TFeatureExtractor`` the input processor runs (the checkpoint's, or
        w2v-BERT 2.0's settings); ``clip_seconds`` is not one of its settings."""
        return self.input_processor.extractor

    def classification_model(self, classifier):
        """``Wav2Vec2BertForSequenceClassification`` for a head of pooling ``mean``: the mean
        over the valid frames (its attention mask), a projector set to the identity, our linear
        layer (``classifier_proj_size`` = hidden size, no weighted layer sum). The note says which
        files ``pipeline`` sees otherwise than ``classify`` when the run cut them to
        ``clip_seconds``."""
        if classifier.pooling != "mean":
            return None, (f"pooling '{classifier.pooling}': Wav2Vec2BertForSequenceClassification "
                          "pools the mean of the frames")
        model = self._task_model(transformers.Wav2Vec2BertForSequenceClassification, classifier,
                                 classifier_proj_size=self.hidden_size, use_weighted_layer_sum=False)
        note = None
        if self.clip_seconds is not None:
            note = (f"pipeline feeds whole files, but this run cut every file to clip_seconds="
                    f"{self.clip_seconds:g}: files longer than that get other scores than classify; "
                    "train with --clip_seconds=null for scores equal on every file")
        return self._identity_projector(model, classifier), note

    # ---------------------------------------------------------------- what trains
    def trained_modules(self, point):
        """``embeddings``: the feature projection (its LayerNorm and Linear)."""
        if point == "embeddings":
            return ["model.feature_projection", "model.encoder.dropout"]
        return super().trained_modules(point)

    def trainable_parameter_names(self, specs):
        """As ``Backbone``'s, less ``masked_spec_embed`` (transformers' time masking, unused)."""
        return [n for n in super().trainable_parameter_names(specs) if n != "model.masked_spec_embed"]

    # ---------------------------------------------------------------- forward
    def forward(self, inputs, lengths=None):
        """``inputs [B, frames, 160]`` (+ ``lengths [B]`` relative) -> ``(hidden [B, T, D], mask)``."""
        width = self.config.feature_projection_input_dim
        if inputs.dim() != 3 or inputs.shape[-1] != width:
            raise ValueError(f"Expected w2v-BERT features [B, frames, {width}], got a tensor of shape "
                             f"{list(inputs.shape)}.")
        batch, frames, _ = inputs.shape
        valid = torch.full((batch,), frames, device=inputs.device, dtype=torch.long)
        if lengths is not None:
            valid = torch.round(lengths.to(inputs.device).float() * frames).long()
        mask = torch.arange(frames, device=inputs.device)[None, :] < valid[:, None]
        hidden = self.model.feature_projection(inputs)[0]
        hidden, added = self._encode(hidden, mask)
        return hidden, torch.cat([mask.new_ones(batch, added), mask], dim=1)

    def _encode(self, hidden, mask):
        """``Wav2Vec2BertEncoder.forward`` with the token count free: ``(hidden [B, P + T, D],
        P)``, P tokens added in front at the ``embeddings`` point."""
        encoder = self.model.encoder
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        hidden = encoder.dropout(hidden)  # the `embeddings` point
        added = hidden.shape[1] - mask.shape[1]
        mask = torch.cat([mask.new_ones(mask.shape[0], added), mask], dim=1)
        layer_mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        positions = encoder.embed_positions(hidden) if encoder.embed_positions is not None else None
        with token_mask(mask):
            for layer in encoder.layers:
                hidden = layer_step(layer, self.config.layerdrop, hidden, run=lambda state:
                                    self._run_layer(layer, state, layer_mask, positions, mask))
        return hidden, added

    def _run_layer(self, layer, hidden, layer_mask, positions, mask):
        """One ``Wav2Vec2BertEncoderLayer`` (or the PETL module wrapping it) called as the encoder
        calls it: the 4-D attention mask, the position embeddings and the ``[B, T]`` mask of the
        convolution module."""
        arguments = dict(attention_mask=layer_mask, relative_position_embeddings=positions,
                         conv_attention_mask=mask)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False,
                                                     context_fn=checkpoint_contexts, **arguments)
        return layer(hidden, **arguments)
