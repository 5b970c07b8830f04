"""The Whisper encoder lobe (``openai/whisper-tiny`` ... ``-large-v3``: ``WhisperModel``'s encoder).

Two things the transformers encoder does not offer, done here without subclassing its classes:

- Clips shorter than 30 s. ``WhisperEncoder.forward`` refuses any input but
  ``2 * max_source_positions`` frames (3000, 30 s). The lobe runs the encoder's pieces itself
  (``conv1``, ``conv2``, the first ``T`` sinusoidal position embeddings, the layers, the final
  LayerNorm) on a clip of ``clip_seconds``: ``T`` tokens of 20 ms. On 30 s it is exactly
  ``WhisperEncoder``'s output (pinned by tests).
- An FFN sublayer. ``WhisperEncoderLayer`` calls ``fc1``, the activation and ``fc2`` inline, so
  there is no module whose input is ``LN2(h)`` and output the FFN's. Each pretrained layer is
  re-hosted in ``WhisperLayer`` (ours): the same submodule objects under the same names (so the
  state dict, ``save_pretrained`` and the checkpoint's weight names are unchanged), plus ``ffn``,
  a parameterless ``WhisperFeedForward`` that runs the layer's own ``fc1 -> activation -> fc2``.
  Adapters and MoA at ``ffn`` wrap that module.
"""

import contextlib
import logging

import torch
import transformers
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from petl_modules.backbones.base import Backbone, register
from petl_modules.backbones.layerdrop import layer_step
from petl_modules.backbones.loading import loading_options, read_config
from petl_modules.backbones.features import WhisperLogMel
from petl_modules.contract import checkpoint_contexts, token_mask
from petl_modules.options import Option

logger = logging.getLogger(__name__)

class WhisperFeedForward(torch.nn.Module):
    """The FFN sublayer of a ``WhisperLayer``: ``fc2(dropout(act(fc1(x))))``, as
    ``WhisperEncoderLayer`` computes it inline.

    It owns no parameters: it calls its layer's ``fc1``, ``activation_fn`` and ``fc2`` (looked up at
    call time, so a module wrapped there is used), which stay registered in the layer under their
    checkpoint names. The layer is held as a plain attribute, not a submodule (no cycle).
    """

    def __init__(self, layer):
        super().__init__()
        self.__dict__["_layer"] = layer  # not registered: the layer owns fc1 / fc2

    def forward(self, x):
        layer = self._layer
        hidden = layer.activation_fn(layer.fc1(x))
        hidden = torch.nn.functional.dropout(hidden, p=layer.activation_dropout, training=self.training)
        return layer.fc2(hidden)


class WhisperLayer(torch.nn.Module):
    """A pretrained ``WhisperEncoderLayer``'s submodules, run as it runs them, with ``ffn``
    (``WhisperFeedForward``) as the FFN sublayer:
    ``h = h + drop(self_attn(LN1(h))); h = h + drop(ffn(LN2(h)))`` (pre-LN).

    The submodules keep their names (``self_attn``, ``self_attn_layer_norm``, ``activation_fn``,
    ``fc1``, ``fc2``, ``final_layer_norm``), so ``state_dict`` is the pretrained layer's.
    The attention is called as ``self_attn(x, attention_mask=None)`` (its first argument
    positional, as PETL wrappers take it) and returns ``(output, ...)``.
    """

    def __init__(self, layer):
        super().__init__()
        for name in ("self_attn", "self_attn_layer_norm", "activation_fn", "fc1", "fc2", "final_layer_norm"):
            setattr(self, name, getattr(layer, name))
        self.dropout = float(layer.dropout)
        self.activation_dropout = float(layer.activation_dropout)
        self.ffn = WhisperFeedForward(self)

    def forward(self, hidden, attention_mask=None, **kwargs):
        residual = hidden
        out = self.self_attn(self.self_attn_layer_norm(hidden), attention_mask=attention_mask)[0]
        hidden = residual + torch.nn.functional.dropout(out, p=self.dropout, training=self.training)
        residual = hidden
        out = self.ffn(self.final_layer_norm(hidden))
        hidden = residual + torch.nn.functional.dropout(out, p=self.dropout, training=self.training)
        if hidden.dtype == torch.float16:  # as WhisperEncoderLayer
            clamp = torch.finfo(hidden.dtype).max - 1000
            hidden = torch.clamp(hidden, min=-clamp, max=clamp)
        return hidden


def read_whisper_feature_extractor(source, num_mel_bins):
    """The checkpoint's ``WhisperFeatureExtractor`` (``preprocessor_config.json``); without one,
    transformers' defaults with the config's ``num_mel_bins`` (the openai checkpoints' settings)."""
    try:
        extractor = transformers.WhisperFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        logger.info(
            f"'{source}' has no preprocessor_config.json: Whisper's default log-mel settings "
            f"({num_mel_bins} mel bins, 16 kHz, hop 160, n_fft 400)."
        )
        return transformers.WhisperFeatureExtractor(feature_size=num_mel_bins)
    if extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"'{source}': preprocessor_config.json has feature_size {extractor.feature_size} but the "
            f"model takes num_mel_bins {num_mel_bins}."
        )
    return extractor


@contextlib.contextmanager
def _quiet_loading():
    """transformers lists every decoder weight it leaves unread: the lobe checks what matters."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def load_encoder(source, attn_implementation):
    """``(WhisperEncoder, loading info)`` of ``source``, whichever model saved it: the hub's
    ``WhisperForConditionalGeneration`` (weights ``model.encoder.*``), a ``WhisperModel``
    (``encoder.*``), both read through ``WhisperForAudioClassification`` (the transformers class
    that holds the encoder alone as ``encoder``; its small head is dropped), or a
    ``WhisperEncoder`` saved alone (``conv1.*``, what ``export_pretrained`` writes). The decoder's
    weights are never read. Without the encoder's weights: ``missing_keys`` names them.
    ``attn_implementation``: ``sdpa`` or ``eager`` (``loading_options``)."""
    kwargs = loading_options(source, attn_implementation)
    config = read_config(source)
    try:
        with _quiet_loading():
            model, info = transformers.WhisperForAudioClassification.from_pretrained(
                source, config=config, output_loading_info=True, **kwargs)
            if not any(key.startswith("encoder.") for key in info.get("missing_keys", ())):
                return model.encoder, dict(info, missing_keys=set())  # (only the head is missing)
            return WhisperEncoder.from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    except RuntimeError as err:  # weights of other shapes under the encoder's names
        raise ValueError(f"Backbone '{source}' is not a Whisper encoder checkpoint: {err}") from None


@register("whisper")
class WhisperBackbone(Backbone):
    """The Whisper encoder (``WhisperModel``'s encoder only; no decoder is built) as a lobe.

    Input: log-mel features ``[B, frames, mel]`` of a clip (``input_processor``:
    ``WhisperLogMel``, the checkpoint's ``preprocessor_config.json`` settings; every utterance cut
    or zero-padded to ``clip_seconds`` before the spectrogram, as Whisper pads to 30 s). Output:
    the final LayerNorm's output ``[B, ceil(frames / 2), D]``, one token per 20 ms; every token is
    valid (the silence padding is input, as in Whisper's training; no CLS token).

    Shorter clips than 30 s: the sinusoidal position embeddings are sliced (the first
    ``ceil(frames / 2)``), the layers run on those tokens only. Cheaper than padding every
    utterance to 3000 frames (attention is quadratic: a 4 s clip costs ~1/50 of 30 s) and the
    positions a clip's tokens get are the ones they would have at the start of a 30 s input. What
    is lost: the trailing 30 s of silence Whisper always saw in pre-training (fine-tuning adapts to
    that, and ``clip_seconds=null`` runs the full 30 s, exactly the pretrained encoder's input).

    Insertion points: pre-LN layers ``model.layers.N`` (``WhisperLayer``, see the module
    docstring) with ``self_attn`` (``attention``; ``q_proj``, ``k_proj`` (no bias), ``v_proj``,
    ``out_proj``), ``self_attn_layer_norm`` (``ln_attention``), ``ffn`` (the lobe's
    ``WhisperFeedForward`` over the layer's ``fc1``/``fc2``), ``final_layer_norm`` (``ln_ffn``);
    ``model.layer_norm`` (``final_norm``); ``embeddings`` wraps the input dropout after the
    position embeddings (tokens it adds go in front). As a ``trainable`` spec, ``embeddings`` trains
    the two convolutions; the sinusoidal position embeddings never train (frozen by transformers).

    Arguments
    ---------
    source : str
        Hub id (``openai/whisper-base``, ...) or a local ``save_pretrained`` folder of a
        ``WhisperForConditionalGeneration``, a ``WhisperModel`` or a ``WhisperEncoder``.
    clip_seconds : float or None
        Every utterance cut or zero-padded to this duration; None: the encoder's full input
        (``2 * max_source_positions`` frames, 30 s). At most that.
    attn_implementation : str
        ``sdpa`` (default) or ``eager``.
    gradient_checkpointing : bool
        Recompute each layer in backward (also frozen ones a PETL module trains through).
    **other_options
        Options of the other families' lobes (e.g. ``max_frames``): ignored.
    """

    family = "whisper"
    input_kind = "spectrogram"  # log-mel features [B, frames, mel]: SpecAugment masks them as AST's
    MODEL_OPTIONS = {"clip_seconds": Option(float, None, "every utterance cut and zero-padded to this "
                                            "duration (null: the full 30 s input)", minimum=0,
                                            exclusive_minimum=True, nullable=True)}
    PROMPT_POSITION = (0, 0)  # no special token: prompts are prepended
    INSERTION_POINTS = {
        "embeddings": ["input_dropout"],
        "layer": ["model.layers.[0-9]", "model.layers.[0-9][0-9]"],
        "later_layers": ["model.layers.[1-9]", "model.layers.[0-9][0-9]"],
        "attention": ["model.layers.*.self_attn"],
        "ffn": ["model.layers.*.ffn"],
        "ffn_in": ["model.layers.*.fc1"],
        "ffn_out": ["model.layers.*.fc2"],
        "ln_attention": ["model.layers.*.self_attn_layer_norm"],
        "ln_ffn": ["model.layers.*.final_layer_norm"],
        "q": ["model.layers.*.self_attn.q_proj"],
        "k": ["model.layers.*.self_attn.k_proj"],
        "v": ["model.layers.*.self_attn.v_proj"],
        "o": ["model.layers.*.self_attn.out_proj"],
        "final_norm": ["model.layer_norm"],
    }

    def __init__(
        self,
        source,
        clip_seconds=None,
        attn_implementation="sdpa",
        gradient_checkpointing=False,
        **other_options,
    ):
        super().__init__(other_options)
        self.source = str(source)
        self.model, info = load_encoder(source, attn_implementation)
        self.remember_checkpoint(self.model.state_dict(), info.get("missing_keys", ()))
        missing = sorted(set(info.get("missing_keys", ())))
        if missing:
            raise ValueError(
                f"Backbone '{source}' lacks Whisper encoder weights ({', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}): expected a WhisperForConditionalGeneration, "
                "WhisperModel or WhisperEncoder checkpoint."
            )
        self.config = self.model.config
        for index, layer in enumerate(self.model.layers):
            self.model.layers[index] = WhisperLayer(layer)
        self.model.embed_positions.requires_grad_(False)
        self.input_dropout = torch.nn.Dropout(self.config.dropout)
        self.gradient_checkpointing = bool(gradient_checkpointing)

        extractor = read_whisper_feature_extractor(source, self.config.num_mel_bins)
        strides = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        full = self.config.max_source_positions * strides * extractor.hop_length  # 30 s
        self.clip_seconds = clip_seconds
        self.clip_samples = full if clip_seconds is None else round(float(clip_seconds) * extractor.sampling_rate)
        if not 0 < self.clip_samples <= full:
            raise ValueError(
                f"clip_seconds={clip_seconds}: the Whisper encoder '{source}' takes clips of up to "
                f"{full / extractor.sampling_rate:g} s ({self.config.max_source_positions} positions "
                "of 20 ms); use a shorter clip, or null for the full input."
            )
        self.input_processor = WhisperLogMel.from_extractor(extractor, self.clip_samples)

    # ---------------------------------------------------------------- transformers' task class
    def _clip_chunk(self):
        """``(chunk_length, None)``: the clip in whole seconds (``WhisperFeatureExtractor``'s
        ``chunk_length``, which pads every input to it) when the encoder can take exactly that many
        frames; else ``(None, why not)``."""
        logmel = self.input_processor
        seconds = self.clip_samples / logmel.sample_rate
        if not float(seconds).is_integer() or logmel.frames % 2:
            return None, (f"clip_seconds={self.clip_seconds:g}: WhisperFeatureExtractor pads every "
                          "input to whole seconds (chunk_length); train with a clip of whole "
                          "seconds, or clip_seconds=null (the full input)")
        return int(seconds), None

    def feature_extractor(self):
        """``WhisperFeatureExtractor`` with the checkpoint's settings and the run's clip as its
        ``chunk_length``; None when the clip is not whole seconds (``_clip_chunk``)."""
        chunk, _ = self._clip_chunk()
        if chunk is None:
            return None
        settings = dict(self.input_processor.settings)
        return transformers.WhisperFeatureExtractor(chunk_length=chunk, **settings)

    def classification_model(self, classifier):
        """``WhisperForAudioClassification`` for a head of pooling ``mean`` (its pooling: the mean
        of the encoder's tokens, a projector set to the identity, our linear layer) on the run's
        clip: ``max_source_positions`` is the clip's tokens, their sinusoidal embeddings the first
        ones (what the lobe adds), so its encoder takes the clip's frames as the lobe does."""
        if classifier.pooling != "mean":
            return None, f"pooling '{classifier.pooling}': WhisperForAudioClassification pools the mean of the tokens"
        chunk, why = self._clip_chunk()
        if chunk is None:
            return None, why
        tokens = self.input_processor.frames // 2
        state = dict(self.pretrained_model().state_dict())
        state["embed_positions.weight"] = state["embed_positions.weight"][:tokens]
        model = self._task_model(transformers.WhisperForAudioClassification, classifier, state=state,
                                 part="encoder", max_source_positions=tokens,
                                 classifier_proj_size=self.hidden_size, use_weighted_layer_sum=False)
        return self._identity_projector(model, classifier), None

    @classmethod
    def checkpoint_state(cls, source):
        """The encoder's weights as the lobe loads them (any layout; the decoder left out), and the
        names the checkpoint lacks: what the fingerprint of a PETL model folder hashes."""
        encoder, info = load_encoder(source, "eager")
        state = encoder.state_dict()
        return state, set(info.get("missing_keys", ())) & set(state)

    # ---------------------------------------------------------------- what trains
    def trained_modules(self, point):
        """``embeddings``: the two convolutions (and the input dropout's mode); ``ffn``: each
        layer's ``fc1`` and ``fc2`` (the ``ffn`` module holds none of them)."""
        if point == "embeddings":
            return ["model.conv1", "model.conv2", "input_dropout"]
        names = super().trained_modules(point)
        if point == "ffn":
            names = [f"{n.rsplit('.', 1)[0]}.{fc}" for n in names for fc in ("fc1", "fc2")] + names
        return names

    def trainable_parameter_names(self, specs):
        """As ``Backbone``'s, less the sinusoidal position embeddings (always frozen)."""
        return [n for n in super().trainable_parameter_names(specs) if n != "model.embed_positions.weight"]

    # ---------------------------------------------------------------- forward
    def embed(self, features):
        """``features [B, mel, frames]`` -> tokens ``[B, ceil(frames / 2), D]`` with the first
        position embeddings added (``WhisperEncoder.forward``'s first steps, positions sliced)."""
        encoder = self.model
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        tokens = hidden.shape[1]
        if tokens > encoder.embed_positions.num_embeddings:
            raise ValueError(
                f"{features.shape[-1]} frames give {tokens} tokens, more than the "
                f"{encoder.embed_positions.num_embeddings} position embeddings of '{self.source}'."
            )
        return hidden + encoder.embed_positions.weight[:tokens]

    def forward(self, inputs, lengths=None):
        """``inputs [B, frames, mel]`` -> ``(hidden [B, T, D], None)``; every token is valid (each
        utterance is padded to the clip by the input processor, as Whisper pads to 30 s)."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"Expected log-mel features [B, frames, {self.config.num_mel_bins}], got a tensor of "
                f"shape {list(inputs.shape)}."
            )
        hidden = self.input_dropout(self.embed(inputs.transpose(1, 2)))  # the `embeddings` point
        with token_mask(None):
            for layer in self.model.layers:
                hidden = layer_step(layer, self.config.encoder_layerdrop, hidden,
                                    run=lambda state: self._run_layer(layer, state))
        return self.model.layer_norm(hidden), None

    def _run_layer(self, layer, hidden):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                layer, hidden, use_reentrant=False, context_fn=checkpoint_contexts
            )
        return layer(hidden)
