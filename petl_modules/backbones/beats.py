"""The BEATs lobe (Chen et al., ICML 2023, arXiv 2212.09058) on SpeechBrain's own model,
``speechbrain.lobes.models.beats``, and the released ``.pt`` checkpoints.

BEATs is not a transformers model: a released checkpoint (``BEATs_iter3.pt``,
``BEATs_iter3_plus_AS2M.pt``, ...) is one ``torch.save`` file holding a dict ``{"cfg": {...},
"model": {name: tensor}}`` (fine-tuned ones add ``label_dict``). Here it is:

- read once with ``torch.load(weights_only=True)`` (``read_checkpoint``): a file that needs
  pickle to load (any object but tensors and plain values) is refused with the reason, never
  unpickled; ``cfg`` is checked against SpeechBrain's ``BEATsConfig`` fields and their types, and
  ``model`` against exactly the names and shapes of the model that ``cfg`` builds (the released
  files' ``weight_g``/``weight_v`` of the positional convolution are the ``weight_norm``
  parametrization SpeechBrain's model has: renamed, same tensors);
- built from that dict (``BEATsModel``: SpeechBrain's ``BEATs`` built by its own ``__init__``
  from the checked ``cfg``; given a path, that ``__init__`` would load the file itself, and
  without one build the full-size default model: it gets neither), and loaded ``strict``;
- fingerprinted from the tensors as loaded (``kind: tensors``, names in SpeechBrain's naming), so
  a re-saved copy (``export_pretrained``) has the same fingerprint.

``--backbone_source=/path/BEATs_iter3.pt`` selects this lobe (``Backbone.reads_file``: a ``.pt``
file; there is no ``config.json`` nor ``model_type``); a model folder records ``family: beats``,
``model_type: null`` and the file's name.

The input is BEATs' own (``BEATsFbank``: SpeechBrain's ``BEATs.preprocess``), one utterance at a
time, not padded; a batch is padded with zeros and the padded frames are masked: a patch token is
valid when its 16 frames are all valid (an utterance alone has exactly those patches), padded
tokens are zeroed before the positional convolution and masked out of attention (SpeechBrain's
``key_padding_mask``), of the PETL modules (``token_mask``) and of pooling. So an utterance is
classified the same alone or padded in any batch.

Insertion points: the transformer runs here layer by layer (as ``TransformerEncoder.
extract_features`` does, with the token count free for prompts), in ``BEATsLayer``: each
SpeechBrain ``TransformerSentenceEncoderLayer``'s submodules under their own names (weights and
state dict unchanged) with two parameterless sublayers, ``attention`` (the self-attention,
batch-first, with the padding mask and the relative position bias) and ``ffn``
(``fc2(dropout(act(fc1 x)))``), which the layer calls inline. The released models are post-LN
with DeepNorm (``x = LN(alpha x + f(x))``, alpha = (2 L)^(1/4)), like wav2vec2-base: no final
LayerNorm (``linear`` trains the head only) and no LayerNorm feeding a sublayer alone. Prefix
tuning recomputes the attention with the extra keys and values and the gated relative position
bias of its queries (``_beats_attend_with_prefix``; the prefix keys get no position bias).
"""

import contextlib
import logging
import pickle
import threading
from pathlib import Path

import torch
from speechbrain.lobes.models import beats as sb_beats

from petl_modules.backbones.base import Backbone, register
from petl_modules.backbones.layerdrop import layer_step
from petl_modules.backbones.features import BEATsFbank
from petl_modules.contract import (
    attend_with_prefix,
    checkpoint_contexts,
    prefix_attention,
    prefix_key_width,
    token_mask,
)
from petl_modules.options import Option

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "beats.pt"  # what export_pretrained writes
# The released files' positional-convolution weight norm (torch.nn.utils.weight_norm) and
# SpeechBrain's (torch.nn.utils.parametrizations.weight_norm): the same two tensors.
LEGACY_NAMES = {"encoder.pos_conv.0.weight_g": "encoder.pos_conv.0.parametrizations.weight.original0",
                "encoder.pos_conv.0.weight_v": "encoder.pos_conv.0.parametrizations.weight.original1"}
# cfg values the lobe cannot run, and why.
UNSUPPORTED = {
    ("layer_norm_first", True): "pre-LN BEATs layers: the released models are post-LN (deep_norm)",
    ("activation_fn", "glu"): "SpeechBrain's GLU_Linear has no forward",
}


class BEATsCheckpointError(ValueError):
    """A file that is not a BEATs checkpoint this lobe can read, and why."""


# ==================================================================== the checkpoint file
def config_types():
    """``{field: type}`` of SpeechBrain's ``BEATsConfig`` (its defaults' types)."""
    return {name: type(value) for name, value in vars(sb_beats.BEATsConfig()).items()}


def check_config(cfg, path):
    """The checkpoint's ``cfg`` as a plain dict of SpeechBrain's ``BEATsConfig`` fields, each of
    its field's type (ints accepted for floats); ``BEATsCheckpointError`` naming what is wrong."""
    if not isinstance(cfg, dict):
        raise BEATsCheckpointError(f"'{path}': 'cfg' is {type(cfg).__name__}, not a dict of the model's settings.")
    types, checked, problems = config_types(), {}, []
    for name, value in cfg.items():
        if name not in types:
            logger.info(f"'{path}': cfg '{name}' is not a field of SpeechBrain's BEATsConfig; ignored.")
            continue
        kind = types[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            problems.append(f"{name}={value!r} (expected {kind.__name__})")
        checked[name] = value
    for (name, value), why in UNSUPPORTED.items():
        if checked.get(name, getattr(sb_beats.BEATsConfig(), name)) == value:
            problems.append(f"{name}={value!r}: {why}")
    if problems:
        raise BEATsCheckpointError(f"'{path}' has a BEATs cfg this lobe cannot build: " + "; ".join(problems) + ".")
    return checked


def read_checkpoint(path):
    """``(cfg dict, {name: tensor})`` of a BEATs ``.pt`` file, read once with
    ``torch.load(weights_only=True)`` (never unpickling an object); the tensors' names in
    SpeechBrain's naming (``LEGACY_NAMES``), not yet checked against a model."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise BEATsCheckpointError(
            f"'{path}' cannot be read without unpickling objects (torch.load(weights_only=True) refused "
            f"it: {reason}). PETL-AST never unpickles a checkpoint: re-save it, where it was made, as "
            "a plain dict of values and tensors: torch.save({'cfg': dict(cfg), 'model': "
            "model.state_dict()}, path)."
        ) from None
    except (OSError, EOFError) as err:
        raise BEATsCheckpointError(f"'{path}' is not a readable torch checkpoint ({err}).") from None
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= set(checkpoint):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise BEATsCheckpointError(
            f"'{path}' is not a BEATs checkpoint: a released one is a dict with 'cfg' and 'model' "
            f"(found {found}).")
    state = checkpoint["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise BEATsCheckpointError(f"'{path}': 'model' is not a dict of named tensors.")
    return check_config(checkpoint["cfg"], path), {LEGACY_NAMES.get(k, k): v for k, v in state.items()}


def check_state(model, state, path):
    """Raises ``BEATsCheckpointError`` unless ``state`` holds exactly ``model``'s tensors, each of
    its shape and a floating dtype."""
    own = model.state_dict()
    problems = [f"{n}: missing" for n in sorted(set(own) - set(state))]
    problems += [f"{n}: not a tensor of the model its cfg builds" for n in sorted(set(state) - set(own))]
    problems += [f"{n}: shape {list(state[n].shape)} ({state[n].dtype}), the model's {list(own[n].shape)}"
                 for n in sorted(set(own) & set(state))
                 if state[n].shape != own[n].shape or not state[n].is_floating_point()]
    if problems:
        raise BEATsCheckpointError(
            f"'{path}' does not hold the BEATs model its cfg describes ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:10]))


# ==================================================================== SpeechBrain's model
class BEATsModel(sb_beats.BEATs):
    """SpeechBrain's ``BEATs``, built by its own ``__init__`` from a checked ``cfg`` dict.

    SpeechBrain's ``__init__`` takes a checkpoint path (it loads the file itself) or nothing (it
    then builds the default full-size model): the one thing it does not take is a config. So it
    runs here with no path while its module's ``BEATsConfig`` answers with the checked config
    (``_config_given``); every submodule, forward and state-dict name is SpeechBrain's.

    Arguments
    ---------
    cfg : dict
        ``BEATsConfig`` fields (``check_config``).
    """

    def __init__(self, cfg):
        with _config_given(sb_beats.BEATsConfig(cfg)):
            super().__init__(ckp_path=None, freeze=False)


_BUILDING = threading.Lock()


@contextlib.contextmanager
def _config_given(config):
    """While held, ``speechbrain.lobes.models.beats.BEATsConfig(...)`` returns ``config`` (one model
    built at a time: the lock keeps other threads' constructions off the swapped name)."""
    with _BUILDING:
        original = sb_beats.BEATsConfig
        sb_beats.BEATsConfig = lambda cfg=None: config
        try:
            yield
        finally:
            sb_beats.BEATsConfig = original


def build_model(cfg, state=None, path="the checkpoint"):
    """``BEATsModel(cfg)`` with ``state`` loaded (checked first), in eval mode."""
    model = BEATsModel(cfg)
    if state is not None:
        check_state(model, state, path)
        model.load_state_dict(state, strict=True)
    return model.eval()


# ==================================================================== layers with sublayers
class BEATsSelfAttention(torch.nn.Module):
    """The self-attention sublayer of a ``BEATsLayer``, batch-first: ``x [B, T, D]`` (+ the padding
    ``padding_mask [B, T]``, True = padded, and the relative ``position_bias [B * H, T, T]`` of the
    first layer) -> ``(output [B, T, D], position_bias)``, by the layer's SpeechBrain
    ``MultiheadAttention`` (which works time-first). Parameterless: the layer owns ``self_attn``
    (looked up at call time; held as a plain attribute, not a submodule)."""

    def __init__(self, layer):
        super().__init__()
        self.__dict__["_layer"] = layer

    @property
    def self_attn(self):
        return self._layer.self_attn

    def forward(self, x, padding_mask=None, position_bias=None):
        x = x.transpose(0, 1)
        out, _, position_bias = self.self_attn(query=x, key=x, value=x, key_padding_mask=padding_mask,
                                               need_weights=False, position_bias=position_bias)
        return out.transpose(0, 1), position_bias


class BEATsFeedForward(torch.nn.Module):
    """The FFN sublayer of a ``BEATsLayer``: ``fc2(dropout2(act(fc1 x)))``, as SpeechBrain's layer
    computes it inline; parameterless (the layer owns ``fc1``, ``fc2``)."""

    def __init__(self, layer):
        super().__init__()
        self.__dict__["_layer"] = layer

    def forward(self, x):
        layer = self._layer
        return layer.fc2(layer.dropout2(layer.activation_fn(layer.fc1(x))))


class BEATsLayer(torch.nn.Module):
    """A SpeechBrain ``TransformerSentenceEncoderLayer``'s submodules (same names, so the state dict
    is the pretrained layer's), run batch-first as it runs them, post-LN with DeepNorm:
    ``h = LN_a(alpha h + drop(attention(h))); h = LN_f(alpha h + drop(ffn(h)))``."""

    NAMES = ("self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm", "dropout1",
             "dropout2", "dropout3")

    def __init__(self, layer):
        super().__init__()
        for name in self.NAMES:
            setattr(self, name, getattr(layer, name))
        self.activation_fn = layer.activation_fn
        self.deep_norm_alpha = float(layer.deep_norm_alpha)
        self.attention = BEATsSelfAttention(self)
        self.ffn = BEATsFeedForward(self)

    def forward(self, x, padding_mask=None, position_bias=None):
        """``x [B, T, D]`` -> ``(x, position_bias)``."""
        out, position_bias = self.attention(x, padding_mask, position_bias)
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha + self.dropout1(out))
        x = self.final_layer_norm(x * self.deep_norm_alpha + self.dropout3(self.ffn(x)))
        return x, position_bias


def beats_attention_bias(attention, hidden, position_bias=None):
    """The relative position bias of BEATs' attention on ``hidden [B, T, D]`` (the layer's input),
    as SpeechBrain's ``MultiheadAttention`` adds it to the scores: ``(bias [B, H, T, T] or None,
    position_bias [B * H, T, T] or None)`` (the ungated one, for the next layers); gated by the
    queries when ``gru_rel_pos``."""
    if not attention.has_relative_attention_bias:
        return None, position_bias
    batch, length, _ = hidden.shape
    heads = attention.num_heads
    if position_bias is None:
        position_bias = attention.compute_bias(length, length).unsqueeze(0).repeat(batch, 1, 1, 1)
        position_bias = position_bias.view(batch * heads, length, length)
    bias = position_bias
    if attention.gru_rel_pos:
        query = attention.q_proj(hidden).view(batch, length, heads, -1).transpose(1, 2)  # [B, H, T, d]
        gates = attention.grep_linear(query).view(batch, heads, length, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
        gate = gate_a * (gate_b * attention.grep_a - 1.0) + 2.0
        bias = gate.view(batch * heads, length, 1) * position_bias
    return bias.view(batch, heads, length, length).to(hidden.dtype), position_bias


@attend_with_prefix.register(BEATsSelfAttention)
def _beats_attend_with_prefix(attention, hidden, prefix_keys, prefix_values, start, padding_mask=None,
                              position_bias=None):
    """BEATs' attention with prefix keys and values (``base.attend_with_prefix``): the queries'
    gated relative position bias over the host's keys, none on the prefix keys, padded keys masked;
    returns ``(output, position_bias)`` as ``BEATsSelfAttention``."""
    self_attn = attention.self_attn
    bias, position_bias = beats_attention_bias(self_attn, hidden, position_bias)
    if padding_mask is not None:
        if bias is None:
            bias = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], hidden.shape[1])
        bias = bias.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return prefix_attention(self_attn, hidden, prefix_keys, prefix_values, start, bias), position_bias


@prefix_key_width.register(BEATsSelfAttention)
def _beats_prefix_key_width(attention):
    return attention.self_attn.k_proj.out_features


# ==================================================================== the lobe
CLIP_SECONDS = Option(float, None, "every utterance cut to this duration (null: whole utterances); "
                      "padding in a batch is masked", minimum=0, exclusive_minimum=True, nullable=True)


@register("beats")
class BEATsBackbone(Backbone):
    """BEATs (SpeechBrain's ``BEATs``) from a released ``.pt`` checkpoint, as a lobe.

    Input: BEATs' normalised fbank ``[B, frames, 128]`` of each utterance (``BEATsFbank``),
    zero-padded in a batch, with relative ``lengths``. Output: the last layer's ``[B, P, D]`` (P
    patch tokens: frames // 16 time blocks x 8 frequency bands, time-major) and the mask of valid
    tokens. See the module docstring for the checkpoint, the padding and the insertion points.

    Arguments
    ---------
    source : str
        A BEATs ``.pt`` file (``{"cfg", "model"}``).
    clip_seconds : float or None
        Cut every utterance to this duration (in the input processor); None: whole utterances.
    gradient_checkpointing : bool
        Recompute each layer in backward (also frozen ones a PETL module trains through).
    **other_options
        Options of the other families' lobes (e.g. ``max_frames``): ignored.
    """

    family = "beats"
    input_kind = "spectrogram"  # fbank [B, frames, 128]: SpecAugment masks it as AST's
    takes_lengths = True
    FILE_KIND = "BEATs (.pt)"
    MODEL_OPTIONS = {"clip_seconds": CLIP_SECONDS}
    PROMPT_POSITION = (0, 0)  # no special token: prompts are prepended
    INSERTION_POINTS = {
        "embeddings": ["input_dropout"],
        "layer": ["model.encoder.layers.[0-9]", "model.encoder.layers.[0-9][0-9]"],
        "later_layers": ["model.encoder.layers.[1-9]", "model.encoder.layers.[0-9][0-9]"],
        "attention": ["model.encoder.layers.*.attention"],
        "ffn": ["model.encoder.layers.*.ffn"],
        "ffn_in": ["model.encoder.layers.*.fc1"],
        "ffn_out": ["model.encoder.layers.*.fc2"],
        "ln_attention": ["model.encoder.layers.*.self_attn_layer_norm"],
        "ln_ffn": ["model.encoder.layers.*.final_layer_norm"],
        "q": ["model.encoder.layers.*.self_attn.q_proj"],
        "k": ["model.encoder.layers.*.self_attn.k_proj"],
        "v": ["model.encoder.layers.*.self_attn.v_proj"],
        "o": ["model.encoder.layers.*.self_attn.out_proj"],
        "final_norm": [],  # post-LN: the last layer's LayerNorms sit on the residual stream
    }

    def __init__(self, source, clip_seconds=None, gradient_checkpointing=False, **other_options):
        super().__init__(other_options)
        self.source = str(source)
        cfg, state = read_checkpoint(source)
        self.model = build_model(cfg, state, source)
        self.remember_checkpoint(state)  # the tensors as loaded, before anything changes
        self.config = self.model.cfg
        self.config.model_type = None  # no transformers config.json: found by its family
        self.cfg_dict = dict(cfg)
        encoder = self.model.encoder
        for index, layer in enumerate(encoder.layers):
            encoder.layers[index] = BEATsLayer(layer)
        self.input_dropout = torch.nn.Dropout(encoder.dropout)  # the functional dropout before the layers
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.clip_seconds = clip_seconds
        clip = None if clip_seconds is None else round(float(clip_seconds) * 16000)
        self.input_processor = BEATsFbank(clip, patch_frames=self.config.input_patch_size)

    # ---------------------------------------------------------------- the checkpoint format
    @classmethod
    def reads_file(cls, path):
        """A ``.pt`` file is a BEATs checkpoint (its content is checked when it is loaded)."""
        return Path(path).suffix == ".pt"

    @classmethod
    def checkpoint_state(cls, source):
        """The tensors of the file as the lobe loads them (checked against the model its cfg
        builds), and no missing names."""
        cfg, state = read_checkpoint(source)
        check_state(BEATsModel(cfg), state, source)
        return state, set()

    def pretrained_model(self):
        return self.model

    def export_pretrained(self, out_dir):
        """Writes ``<out_dir>/beats.pt``, the released format (``{"cfg", "model"}``, tensors and plain
        values only: ``torch.load(weights_only=True)`` reads it); ``--backbone_source`` takes it."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()}
        torch.save({"cfg": dict(self.cfg_dict), "model": state}, Path(out_dir) / CHECKPOINT_FILE)

    @classmethod
    def copy_preprocessor_config(cls, source, out_dir):
        return False  # the input settings are BEATs' own (BEATsFbank)

    # ---------------------------------------------------------------- what trains
    @property
    def hidden_size(self):
        return self.config.encoder_embed_dim

    @property
    def num_layers(self):
        return self.config.encoder_layers

    def input_norm(self, point):
        """Post-LN layers: no LayerNorm feeds a sublayer alone (see ``Backbone.input_norm``)."""
        super().input_norm(point)
        return None

    def trained_modules(self, point):
        """``embeddings``: the patch embedding, its LayerNorm and projection, the positional
        convolution and the LayerNorm after it; ``ffn``: each layer's ``fc1`` and ``fc2``."""
        if point == "embeddings":
            names = ["model.patch_embedding", "model.layer_norm", "model.encoder.pos_conv",
                     "model.encoder.layer_norm", "input_dropout"]
            return names + (["model.post_extract_proj"] if self.model.post_extract_proj is not None else [])
        names = super().trained_modules(point)
        if point == "ffn":
            names = [f"{n.rsplit('.', 1)[0]}.{fc}" for n in names for fc in ("fc1", "fc2")] + names
        return names

    # ---------------------------------------------------------------- forward
    def token_mask(self, frames, tokens_per_block, total):
        """``[B, total]`` bool: a patch token is valid when its time block's frames are all valid
        (``frames [B]``, valid frames of each utterance)."""
        blocks = torch.div(frames, self.config.input_patch_size, rounding_mode="floor")
        index = torch.arange(total, device=frames.device) // tokens_per_block
        return index[None, :] < blocks[:, None]

    def forward(self, inputs, lengths=None):
        """``inputs [B, frames, 128]`` (+ ``lengths [B]`` relative) -> ``(hidden [B, P, D], mask)``."""
        if inputs.dim() != 3 or inputs.shape[-1] != BEATsFbank.num_mel_bins:
            raise ValueError(f"Expected BEATs fbank features [B, frames, 128], got a tensor of shape "
                             f"{list(inputs.shape)}.")
        batch, total_frames, _ = inputs.shape
        if total_frames < self.config.input_patch_size:
            raise ValueError(f"{total_frames} frames: BEATs needs at least {self.config.input_patch_size} "
                             "(one patch, 175 ms).")
        model = self.model
        features = model.patch_embedding(inputs.unsqueeze(1))  # [B, E, blocks, bands]
        bands = features.shape[-1]
        features = features.reshape(batch, features.shape[1], -1).transpose(1, 2)
        features = model.layer_norm(features)
        if model.post_extract_proj is not None:
            features = model.post_extract_proj(features)
        features = model.dropout_input(features)
        frames = torch.full((batch,), total_frames, device=inputs.device, dtype=torch.long)
        if lengths is not None:
            frames = torch.round(lengths.to(inputs.device).float() * total_frames).long()
        mask = self.token_mask(frames, bands, features.shape[1])
        hidden, added = self._encode(features, mask)
        return hidden, torch.cat([mask.new_ones(batch, added), mask], dim=1)

    def _encode(self, hidden, mask):
        """``TransformerEncoder.extract_features``, batch-first, with the token count free:
        ``(last hidden [B, P + T, D], P)``, P tokens added in front at the ``embeddings`` point."""
        encoder = self.model.encoder
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        hidden = hidden + encoder.pos_conv(hidden.transpose(1, 2)).transpose(1, 2)
        hidden = encoder.layer_norm(hidden)  # post-LN: the embedding LayerNorm
        hidden = self.input_dropout(hidden)  # the `embeddings` point
        added = hidden.shape[1] - mask.shape[1]
        mask = torch.cat([mask.new_ones(mask.shape[0], added), mask], dim=1)
        # (an exported graph keeps the mask: whether a batch has padding depends on the input)
        padding = ~mask if torch.compiler.is_exporting() or not bool(mask.all()) else None
        position_bias = None
        decay = getattr(encoder, "layer_wise_gradient_decay_ratio", 1.0)
        with token_mask(mask):
            for layer in encoder.layers:
                if decay != 1.0:  # as SpeechBrain: gradients shrink on their way down the layers
                    hidden = sb_beats.GradMultiply.apply(hidden, decay)
                hidden, position_bias = layer_step(
                    layer, self.config.encoder_layerdrop, (hidden, position_bias),
                    run=lambda state: self._run_layer(layer, state[0], padding, state[1]))
        return hidden, added

    def _run_layer(self, layer, hidden, padding, position_bias):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, hidden, padding, position_bias,
                                                     use_reentrant=False, context_fn=checkpoint_contexts)
        return layer(hidden, padding, position_bias)


def beats_iter3_config():
    """The cfg of the released BEATs_iter3 shape: 16x16 patches embedded in 512, 12 post-LN
    (DeepNorm) layers of 768, 12 heads, FFN 3072, a positional convolution of kernel 128 in 16
    groups, a gated relative position bias of 320 buckets (for parameter counts and timings;
    random weights)."""
    return dict(vars(sb_beats.BEATsConfig()), deep_norm=True, layer_norm_first=False,
                relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
                layer_wise_gradient_decay_ratio=0.6, encoder_layerdrop=0.05, dropout=0.0,
                attention_dropout=0.0, activation_dropout=0.0)


def save_checkpoint(cfg, path, seed=0, legacy_names=True):
    """Writes a BEATs checkpoint of ``cfg`` with random weights to ``path`` (``{"cfg", "model"}``,
    as released: ``legacy_names`` writes the positional convolution's ``weight_g``/``weight_v``)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        state = build_model(cfg).state_dict()
    if legacy_names:
        back = {new: old for old, new in LEGACY_NAMES.items()}
        state = {back.get(name, name): tensor for name, tensor in state.items()}
    torch.save({"cfg": dict(cfg), "model": state}, path)
    return Path(path)

