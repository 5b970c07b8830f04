"""The wav2vec 2.0 family lobe: wav2vec2, HuBERT and WavLM (``transformers.{Wav2Vec2,Hubert,WavLM}Model``)."""

import logging

import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from petl_modules.backbones.base import Backbone, register
from petl_modules.backbones.layerdrop import layer_step
from petl_modules.backbones.loading import loading_options, read_config
from petl_modules.backbones.features import Waveform
from petl_modules.contract import attend_with_prefix, checkpoint_contexts, prefix_attention, token_mask
from petl_modules.options import Option

logger = logging.getLogger(__name__)

CLIP_SECONDS = Option(float, None, "every utterance cut and zero-padded to this duration (null: "
                      "whole utterances)", minimum=0, exclusive_minimum=True, nullable=True)

WAVEFORM_MODELS = {
    "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
    "hubert": (transformers.HubertConfig, transformers.HubertModel),
    "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
}


def wavlm_attention_bias(attention, hidden, position_bias=None):
    """WavLM's gated relative position bias, as ``WavLMAttention.forward`` computes it.

    Arguments
    ---------
    attention : WavLMAttention
        The attention module (layer 0 holds the bucket embedding that creates the bias).
    hidden : torch.Tensor
        ``[B, T, D]`` input of the attention (the gate reads it).
    position_bias : torch.Tensor, optional
        ``[B * H, T, T]`` bias passed on from the first layer (None in the first layer).

    Returns
    -------
    gated : torch.Tensor
        ``[B, H, T, T]`` additive attention bias.
    position_bias : torch.Tensor
        ``[B * H, T, T]``, for the next layers.
    """
    batch, length, _ = hidden.shape
    heads = attention.num_heads
    if position_bias is None:
        position_bias = attention.compute_bias(length, length)
        position_bias = position_bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * heads, length, length)
    per_head = hidden.view(batch, length, heads, -1).permute(0, 2, 1, 3)  # [B, H, T, d]
    projected = attention.gru_rel_pos_linear(per_head).view(*per_head.shape[:-1], 2, 4).sum(-1)
    gate_a, gate_b = torch.sigmoid(projected).chunk(2, dim=-1)
    gate = gate_a * (gate_b * attention.gru_rel_pos_const - 1.0) + 2.0  # [B, H, T, 1]
    gated = gate.view(batch * heads, -1, 1) * position_bias
    return gated.view(batch, heads, length, length), position_bias


@attend_with_prefix.register(transformers.models.wavlm.modeling_wavlm.WavLMAttention)
def _wavlm_attend_with_prefix(attention, hidden, prefix_keys, prefix_values, start, *args, **kwargs):
    """WavLM's attention with prefix keys/values (``base.attend_with_prefix``): called with
    ``attention_mask [B, T]`` (1 = valid key) and ``position_bias``, it returns
    ``(output, None, position_bias)``; its gated relative position bias is recomputed, and the
    prefix keys get none."""
    padding = kwargs.get("attention_mask", args[0] if args else None)
    bias, position_bias = wavlm_attention_bias(attention, hidden, kwargs.get("position_bias"))
    if padding is not None:
        bias = bias.masked_fill(~padding.bool()[:, None, None, :], float("-inf"))
    out = prefix_attention(attention, hidden, prefix_keys, prefix_values, start, bias)
    return out, None, position_bias


def read_feature_extractor_config(source):
    """``(do_normalize, return_attention_mask, sampling_rate)`` from ``preprocessor_config.json``,
    or None when the checkpoint has no such file."""
    try:
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return extractor.do_normalize, extractor.return_attention_mask, extractor.sampling_rate


# model_type -> transformers' classification class (mean pooling under the attention mask, a
# projector, a linear classifier), what ``classification_model`` writes.
SEQUENCE_CLASSIFIERS = {
    "wav2vec2": transformers.Wav2Vec2ForSequenceClassification,
    "hubert": transformers.HubertForSequenceClassification,
    "wavlm": transformers.WavLMForSequenceClassification,
    "data2vec-audio": transformers.Data2VecAudioForSequenceClassification,
}


@register(*WAVEFORM_MODELS)
class Wav2Vec2Backbone(Backbone):
    """wav2vec 2.0, HuBERT and WavLM (``transformers.{Wav2Vec2,Hubert,WavLM}Model``) as one lobe.

    Input: raw 16 kHz waveforms ``[B, S]`` (``input_processor``: cut to the clip, normalised when
    the checkpoint's feature extractor says ``do_normalize``), zero-padded; a batch is padded to
    the clip length when one is set, so that an utterance is seen the same way in any batch. The
    CNN feature encoder is always frozen (run without gradients). The transformer runs layer by
    layer here (same result as the transformers model, pinned by tests) so that PETL modules may
    add tokens (prompts), and WavLM's relative position bias and the padding masks follow them.
    With an attention mask, the PETL modules inside the layers see the same padding
    (``petl_modules.contract.token_mask``: convolutions and Soft-MoA routing skip it), so that an
    utterance gets the same output alone or padded in a batch.

    Both layer layouts (``config.do_stable_layer_norm``) map to the same insertion points:

    - post-LN (false, base models): ``h = LN_a(h + MHSA(h)); h = LN_f(h + FFN(h))``; the layer's
      ``layer_norm`` is LN_a (``ln_attention``, after the attention sublayer) and
      ``final_layer_norm`` LN_f (``ln_ffn``); the encoder's ``layer_norm`` normalises the
      embeddings before the first layer, and there is no final LayerNorm (``final_norm`` absent).
    - pre-LN (true, large models): ``h = h + MHSA(LN_a(h)); h = h + FFN(LN_f(h))``; the encoder's
      ``layer_norm`` follows the last layer (``final_norm``).

    ``embeddings`` wraps the encoder's input dropout, the last step of the embedding stage: its
    output is the token stream entering the first layer (after the positional convolution, and
    after the embedding LayerNorm in post-LN); tokens it adds (prompts) go in front. As a
    ``trainable`` spec, ``embeddings`` trains the feature projection, the positional convolution
    and (post-LN) the embedding LayerNorm, never the CNN nor ``masked_spec_embed``.

    Arguments
    ---------
    source : str
        Hub id (``facebook/wav2vec2-base-960h``, ``facebook/hubert-base-ls960``,
        ``microsoft/wavlm-base-plus``, or a large checkpoint) or a local ``save_pretrained`` folder.
        Its ``preprocessor_config.json`` gives ``do_normalize`` and ``return_attention_mask``; when
        absent: normalise, and pass an attention mask only with a layer-norm CNN
        (``feat_extract_norm: layer``, the large models; base models are trained without one).
    clip_seconds : float or None
        Cut (in the input processor) and zero-pad (here) every utterance to this duration; None:
        whole utterances, padded to the longest of the batch (padding-invariant only for
        checkpoints that take an attention mask).
    apply_spec_augment : bool
        transformers' time masking of the projected features with the pretrained
        ``masked_spec_embed`` (probability and span from the checkpoint's config), in training
        only. Off by default.
    attn_implementation : str
        ``sdpa`` (default) or ``eager``. WavLM has a single implementation (``eager`` is used).
    gradient_checkpointing : bool
        Recompute each transformer layer in backward (also frozen ones a PETL module trains
        through) to save memory.
    **other_options
        Options of the other families' lobes (e.g. ``max_frames``): ignored.
    """

    family = "wav2vec2"
    input_kind = "waveform"
    MODEL_OPTIONS = {"clip_seconds": CLIP_SECONDS}

    def __init__(
        self,
        source,
        clip_seconds=None,
        apply_spec_augment=False,
        attn_implementation="sdpa",
        gradient_checkpointing=False,
        **other_options,
    ):
        super().__init__(other_options)
        self.source = str(source)
        loading = loading_options(source, attn_implementation)
        config = read_config(source)
        self.model_type = config.model_type
        model_class = self._model_class(config)
        if attn_implementation == "sdpa" and not model_class._supports_sdpa:
            loading["attn_implementation"] = "eager"  # WavLM: F.multi_head_attention_forward only
        self.model, info = model_class.from_pretrained(source, output_loading_info=True, **loading)
        self.remember_checkpoint(self.model.state_dict(), info.get("missing_keys", ()))
        self.config = self.model.config
        if getattr(self.config, "add_adapter", False):
            raise ValueError(
                f"Backbone '{source}' has transformers' own adapter layers (add_adapter=True), "
                "which PETL-AST does not use: pick a checkpoint without them."
            )
        self.pre_ln, cnn_layer_norm = self._layout(self.config)
        self.apply_spec_augment = bool(apply_spec_augment)
        self.config.apply_spec_augment = self.apply_spec_augment
        if self.apply_spec_augment and getattr(self.model, "masked_spec_embed", None) is None:
            raise ValueError(
                f"apply_spec_augment=True but '{source}' has no masked_spec_embed (its config "
                "has mask_time_prob=0): use apply_spec_augment=False with this checkpoint."
            )
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.model.feature_extractor._freeze_parameters()
        self.INSERTION_POINTS = self._insertion_points()

        extractor = read_feature_extractor_config(source)
        if extractor is None:
            logger.info(
                f"'{source}' has no preprocessor_config.json: normalising the waveform, attention "
                f"mask {'on' if cnn_layer_norm else 'off'} (CNN norm "
                f"'{'layer' if cnn_layer_norm else 'group'}')."
            )
            extractor = (True, cnn_layer_norm, 16000)
        do_normalize, self.use_attention_mask, sample_rate = extractor
        self.use_attention_mask = bool(self.use_attention_mask)
        self.clip_seconds = clip_seconds
        self.clip_samples = None if clip_seconds is None else round(float(clip_seconds) * sample_rate)
        self.input_processor = Waveform(self.clip_samples, normalize=do_normalize, sample_rate=sample_rate)

    # ---------------------------------------------------------------- hooks of a related family
    def _model_class(self, config):
        """The transformers model class of the checkpoint ``config``."""
        return WAVEFORM_MODELS[config.model_type][1]

    def _layout(self, config):
        """``(pre_ln, cnn_layer_norm)``: pre-LN layers (``do_stable_layer_norm``), and a CNN
        feature encoder normalised per frame (``feat_extract_norm: layer``), which takes an
        attention mask when the checkpoint has no ``preprocessor_config.json``."""
        return bool(config.do_stable_layer_norm), config.feat_extract_norm == "layer"

    def _position_embeddings(self, hidden, attention_mask):
        """The positional convolution's output ``[B, T, D]`` for the projected features ``hidden``
        (``attention_mask [B, T]``, or None: the padded frames of ``hidden`` are already zero)."""
        return self.model.encoder.pos_conv_embed(hidden)

    def _insertion_points(self):
        layers = "model.encoder.layers"
        return {
            "embeddings": ["model.encoder.dropout"],
            "layer": [f"{layers}.[0-9]", f"{layers}.[0-9][0-9]"],
            "later_layers": [f"{layers}.[1-9]", f"{layers}.[0-9][0-9]"],
            "attention": [f"{layers}.*.attention"],
            "ffn": [f"{layers}.*.feed_forward"],
            "ffn_in": [f"{layers}.*.feed_forward.intermediate_dense"],
            "ffn_out": [f"{layers}.*.feed_forward.output_dense"],
            "ln_attention": [f"{layers}.*.layer_norm"],
            "ln_ffn": [f"{layers}.*.final_layer_norm"],
            "q": [f"{layers}.*.attention.q_proj"],
            "k": [f"{layers}.*.attention.k_proj"],
            "v": [f"{layers}.*.attention.v_proj"],
            "o": [f"{layers}.*.attention.out_proj"],
            "final_norm": ["model.encoder.layer_norm"] if self.pre_ln else [],
        }

    # ---------------------------------------------------------------- what trains
    def trained_modules(self, point):
        """``embeddings`` trains the whole embedding stage above the CNN (see the class doc)."""
        if point != "embeddings":
            return super().trained_modules(point)
        names = ["model.feature_projection", "model.encoder.pos_conv_embed"]
        return names + ([] if self.pre_ln else ["model.encoder.layer_norm"])

    def input_norm(self, point):
        """Pre-LN: the LayerNorm before the sublayer; post-LN: None (see ``Backbone.input_norm``)."""
        norm = super().input_norm(point)
        return norm if self.pre_ln else None

    def trainable_parameter_names(self, specs):
        """As ``Backbone``'s, less the CNN feature encoder and ``masked_spec_embed`` (always frozen)."""
        return [
            name for name in super().trainable_parameter_names(specs)
            if not name.startswith("model.feature_extractor.") and name != "model.masked_spec_embed"
        ]

    def padding_dependence(self):
        """Whole utterances (``clip_seconds=None``) without an attention mask: the output depends
        on the padding of the batch (see ``Backbone.padding_dependence``)."""
        if self.clip_samples is None and not self.use_attention_mask:
            return ("with clip_seconds=null this checkpoint (no attention mask) gives outputs that "
                    "depend on the padding of each batch: set --clip_seconds")
        return None

    # ---------------------------------------------------------------- transformers' task class
    def feature_extractor(self):
        """``Wav2Vec2FeatureExtractor`` with the run's settings (``do_normalize``, attention mask,
        rate). It has no clip length: ``pipeline`` feeds whole files."""
        wave = self.input_processor
        return transformers.Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=wave.sample_rate, padding_value=0.0,
            do_normalize=wave.normalize, return_attention_mask=self.use_attention_mask)

    def classification_model(self, classifier):
        """``*ForSequenceClassification`` for a head of pooling ``mean``: the mean over the valid
        frames, a projector set to the identity, our linear layer (``classifier_proj_size`` =
        hidden size, no weighted layer sum). The note says which files ``pipeline`` sees otherwise
        than ``classify`` when the run cut them to ``clip_seconds``."""
        if classifier.pooling != "mean":
            return None, (f"pooling '{classifier.pooling}': {SEQUENCE_CLASSIFIERS[self.model_type].__name__}"
                          " pools the mean of the frames")
        model = self._task_model(SEQUENCE_CLASSIFIERS[self.model_type], classifier,
                                 classifier_proj_size=self.hidden_size, use_weighted_layer_sum=False)
        note = None
        if self.clip_samples is not None:
            shorter = "" if self.use_attention_mask else (
                "; shorter ones too (this checkpoint takes no attention mask, so the run's zero "
                "padding to the clip changed their outputs)")
            note = (f"pipeline feeds whole files, but this run cut every file to clip_seconds="
                    f"{self.clip_seconds:g}: files longer than that get other scores than classify"
                    f"{shorter}; train with --clip_seconds=null for scores equal on every file")
        return self._identity_projector(model, classifier), note

    # ---------------------------------------------------------------- forward
    def frame_lengths(self, samples):
        """Valid samples ``[B]`` -> valid CNN frames ``[B]`` (long)."""
        return self.model._get_feat_extract_output_lengths(samples).long()

    def forward(self, inputs, lengths=None):
        """``inputs [B, S]`` waveforms (+ ``lengths [B]`` relative) -> ``(hidden [B, T, D], mask)``.

        ``mask [B, T]`` is True on the frames of valid samples and on the tokens a PETL module
        added in front (prompts: the classifier's pooling, ``prompt_span``, decides about them).
        """
        if inputs.dim() != 2:
            raise ValueError(f"Expected waveforms [B, S], got a tensor of shape {list(inputs.shape)}.")
        batch, total = inputs.shape
        if lengths is None:
            samples = torch.full((batch,), total, dtype=torch.long, device=inputs.device)
        else:
            samples = torch.round(lengths.to(inputs.device).float() * total).long()
        if self.clip_samples is not None:
            inputs = torch.nn.functional.pad(inputs[:, : self.clip_samples], (0, max(0, self.clip_samples - total)))
            samples = samples.clamp(max=self.clip_samples)
        with torch.no_grad():  # the CNN feature encoder is always frozen
            features = self.model.feature_extractor(inputs).transpose(1, 2)
        frames = torch.arange(features.shape[1], device=inputs.device)
        frame_mask = frames[None, :] < self.frame_lengths(samples)[:, None]
        hidden = self.model.feature_projection(features)
        if isinstance(hidden, tuple):  # wav2vec2 and WavLM also return the normalised features
            hidden = hidden[0]
        if self.apply_spec_augment and self.training:
            hidden = self._mask_time(hidden, frame_mask)
        hidden, added = self._encode(hidden, frame_mask)
        prompts = frame_mask.new_ones(batch, added)
        return hidden, torch.cat([prompts, frame_mask], dim=1)

    def _mask_time(self, hidden, frame_mask):
        """transformers' SpecAugment time masking with ``masked_spec_embed`` ([B, T, D])."""
        config = self.config
        indices = _compute_mask_indices(
            tuple(hidden.shape[:2]),
            mask_prob=config.mask_time_prob,
            mask_length=config.mask_time_length,
            attention_mask=frame_mask.long(),
            min_masks=config.mask_time_min_masks,
        )
        indices = torch.as_tensor(indices, dtype=torch.bool, device=hidden.device)
        return torch.where(indices[..., None], self.model.masked_spec_embed.to(hidden.dtype), hidden)

    def _encode(self, hidden, frame_mask):
        """The transformer encoder, as transformers runs it, with token-count changes allowed.

        ``hidden [B, T, D]`` projected features -> ``(last hidden [B, P + T, D], P)``, P tokens
        added in front by a module at the ``embeddings`` point.
        """
        encoder = self.model.encoder
        attention_mask = frame_mask if self.use_attention_mask else None
        if attention_mask is not None:
            hidden = hidden.masked_fill(~attention_mask[..., None], 0.0)
        hidden = hidden + self._position_embeddings(hidden, attention_mask)
        if not self.pre_ln:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)  # the `embeddings` insertion point
        added = hidden.shape[1] - frame_mask.shape[1]
        if attention_mask is not None and added:
            attention_mask = torch.cat([attention_mask.new_ones(hidden.shape[0], added), attention_mask], 1)
        layer_mask = self._layer_attention_mask(hidden, attention_mask)
        position_bias = None
        # PETL modules in the layers see the padding as the attention does (none without a mask).
        with token_mask(attention_mask):
            for index, layer in enumerate(encoder.layers):
                if self.model_type == "wavlm":  # its first layer computes the position bias
                    extra = {} if self.pre_ln else {"index": index}
                    hidden, position_bias = layer_step(
                        layer, self.config.layerdrop, (hidden, position_bias), keep=index == 0,
                        run=lambda state: self._run_layer(
                            layer, state[0], attention_mask=layer_mask, position_bias=state[1], **extra),
                    )
                else:
                    hidden = layer_step(layer, self.config.layerdrop, hidden, run=lambda state:
                                        self._run_layer(layer, state, attention_mask=layer_mask))
        if self.pre_ln:
            hidden = encoder.layer_norm(hidden)
        return hidden, added

    def _layer_attention_mask(self, hidden, attention_mask):
        """The mask argument of a layer: WavLM takes ``[B, T]``; wav2vec2/HuBERT the 4-D mask of
        their attention implementation."""
        if attention_mask is None or self.model_type == "wavlm":
            return attention_mask
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def _run_layer(self, layer, hidden, **kwargs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                layer, hidden, use_reentrant=False, context_fn=checkpoint_contexts, **kwargs
            )
        return layer(hidden, **kwargs)
