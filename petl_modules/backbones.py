"""Backbone lobes: a pre-trained transformers encoder plus the map of its insertion points.

``Backbone(source, ...)`` reads ``model_type`` from the checkpoint's ``config.json`` and builds the
lobe of that family (``ASTBackbone``; ``Wav2Vec2Backbone`` for wav2vec2, HuBERT and WavLM). Each
lobe takes its own keyword options and ignores the other families' (``Backbone.options``), so one
``recipe.yaml`` builds any of them. A lobe owns
everything that depends on the installed transformers version: module names (the insertion-point
patterns, pinned by tests), how inputs are prepared, and how the model is called. PETL methods
never subclass transformers internals; they wrap modules at the lobe's insertion points
(``petl_modules.adapted.AdaptedBackbone``).
"""

import fnmatch
import inspect
import logging
import re

import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from petl_modules.adapted import PETLModule, checkpoint_contexts, token_mask
from petl_modules.features import ASTFbank, Waveform

logger = logging.getLogger(__name__)

# config.json ``model_type`` -> lobe class name (filled by ``register``).
FAMILIES = {}


def register(*model_types):
    """Class decorator: the lobe handles checkpoints of these ``model_type`` values."""

    def decorate(cls):
        for model_type in model_types:
            FAMILIES[model_type] = cls
        return cls

    return decorate


def read_config(source, **kwargs):
    """Loads the transformers config of ``source`` (hub id or local folder), with a clear error."""
    try:
        return transformers.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot read the backbone checkpoint '{source}': {err}\n"
            "backbone_source must be a hub id that is reachable or already in the Hugging Face "
            "cache, or a local folder written by save_pretrained() (holding config.json and the "
            "weights). Offline: download once elsewhere and pass --backbone_source=/path/to/folder."
        ) from None


def lobe_class(source):
    """The lobe class of the checkpoint ``source``, from its config's ``model_type``."""
    model_type = read_config(source).model_type
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise ValueError(
            f"Backbone '{source}' has model_type '{model_type}', which PETL-AST does not "
            f"support. Supported model types: {supported}."
        )
    return FAMILIES[model_type]


def _layer_index(name):
    match = re.search(r"layers\.(\d+)", name)
    return int(match.group(1)) if match else None


class Backbone(torch.nn.Module):
    """A pre-trained encoder lobe with named insertion points.

    ``Backbone(source, **options)`` returns the lobe of the checkpoint's family (e.g.
    ``ASTBackbone``). Subclasses define ``INSERTION_POINTS`` (point name -> module-name patterns,
    relative to the lobe), ``input_processor`` (per-utterance features) and ``forward``.

    Arguments
    ---------
    source : str
        Hub id or local folder of a ``save_pretrained`` checkpoint.
    **options
        Options of the family's lobe (see its docstring).
    """

    INSERTION_POINTS = {}
    family = None
    # Where tokens added by prompt/prefix tuning go: (tokens kept before them, tokens they replace).
    PROMPT_POSITION = (0, 0)

    def __new__(cls, source=None, *args, **kwargs):
        if cls is Backbone:
            cls = lobe_class(source)
        return super().__new__(cls)

    def __init__(self, other_options=None):
        super().__init__()
        self.finetuned_prefixes = []
        self._check_other_options(other_options or {})

    @classmethod
    def options(cls):
        """The keyword options this family's lobe takes (its ``__init__`` arguments)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD][2:]  # no self, source

    def _check_other_options(self, other_options):
        """Options meant for another family are ignored; an option of no family is an error.

        ``recipe.yaml`` passes every family's options (``max_frames`` for AST, ``clip_seconds``
        for wav2vec2, ...) to ``Backbone``: each lobe takes its own (``options()``).
        """
        known = {name for lobe in FAMILIES.values() for name in lobe.options()}
        unknown = sorted(set(other_options) - known)
        if unknown:
            raise ValueError(
                f"Unknown backbone option(s) {unknown}. The {self.family} lobe takes "
                f"{self.options()}; the other families' options ({sorted(known - set(self.options()))}) "
                "are accepted and ignored."
            )

    # ---------------------------------------------------------------- insertion points
    def insertion_patterns(self, points):
        """Module-name patterns (fnmatch) of the named insertion ``points``."""
        patterns = []
        for point in points:
            if point not in self.INSERTION_POINTS:
                raise ValueError(
                    f"Unknown insertion point '{point}' for the {self.family} backbone. "
                    f"Known points: {', '.join(self.INSERTION_POINTS)}."
                )
            patterns.extend(self.INSERTION_POINTS[point])
        return patterns

    def locate(self, module_name, points):
        """Which of ``points`` ``module_name`` belongs to, and its layer index (or None)."""
        for point in points:
            if any(fnmatch.fnmatch(module_name, p) for p in self.INSERTION_POINTS[point]):
                return point, _layer_index(module_name)
        return None, _layer_index(module_name)

    def modules_at(self, point):
        """``[(name, module)]`` of the modules at an insertion point."""
        patterns = self.insertion_patterns([point])
        return [
            (name, module)
            for name, module in self.named_modules()
            if any(fnmatch.fnmatch(name, p) for p in patterns)
        ]

    # ---------------------------------------------------------------- what trains
    def layer_names(self):
        """Names of the transformer layer modules, bottom to top."""
        return [name for name, _ in self.modules_at("layer")]

    def bitfit_modules(self):
        """Modules whose biases BitFit trains: every Linear and LayerNorm of the transformer."""
        found = []
        for layer_name in self.layer_names() + [n for n, _ in self.modules_at_optional("final_norm")]:
            for name, module in self.get_submodule(layer_name).named_modules(prefix=layer_name):
                if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                    found.append(name)
        return found

    def modules_at_optional(self, point):
        """``modules_at`` for a point the family may not have (e.g. no final LayerNorm)."""
        return self.modules_at(point) if self.INSERTION_POINTS.get(point) else []

    def input_norm(self, point):
        """The insertion point of the LayerNorm that normalises only the input of the sublayer at
        ``point`` (``attention`` or ``ffn``), or None when the layout has none.

        Pre-LN layers (AST, large wav2vec2 models) have one before each sublayer (``ln_attention``,
        ``ln_ffn``); the LayerNorms of a post-LN layer sit on the residual stream itself, so none
        belongs to a sublayer alone (training one changes everything after it).
        """
        if point not in ("attention", "ffn"):
            raise ValueError(f"input_norm:{point}: the sublayer must be 'attention' or 'ffn'.")
        return {"attention": "ln_attention", "ffn": "ln_ffn"}[point]

    def trained_modules(self, point):
        """Names of the modules a ``trainable`` spec naming ``point`` trains: those at the point
        (a lobe whose embedding stage is several modules lists them all for ``embeddings``)."""
        return [n for n, _ in self.modules_at_optional(point)]

    def _top_layer_prefixes(self, spec):
        """Module names of ``top_layers:K``: the last K layers (``all``: every layer + embeddings)."""
        count = spec.split(":", 1)[1]
        layers = self.layer_names()
        if count == "all":
            count = len(layers)
        try:
            count = int(count)
            assert 0 <= count <= len(layers)
        except (ValueError, AssertionError):
            raise ValueError(
                f"trainable '{spec}': K must be 'all' or an integer from 0 to {len(layers)} "
                "(the backbone's number of layers)."
            ) from None
        prefixes = layers[len(layers) - count:]
        if count == len(layers):  # the whole transformer: its input embedding too
            prefixes += self.trained_modules("embeddings")
        return prefixes

    def trainable_parameter_names(self, specs):
        """Parameter names (relative to the lobe) that the ``trainable`` specs name.

        Specs: an insertion point name, ``final_norm_bias``, ``biases`` (BitFit), ``top_layers:K``
        (the last K transformer layers; ``top_layers:all`` = every layer and the embeddings, i.e.
        everything above a CNN feature encoder), ``input_norm:<attention|ffn>`` (the LayerNorm
        that feeds only that sublayer, see ``input_norm``), ``all``.
        """
        names = []
        for spec in specs:
            spec = str(spec)
            if spec == "all":
                prefixes = [""]
            elif spec == "biases":
                names += [f"{m}.bias" for m in self.bitfit_modules()
                          if self.get_submodule(m).bias is not None]
                continue
            elif spec == "final_norm_bias":
                names += [f"{m}.bias" for m, _ in self.modules_at_optional("final_norm")]
                continue
            elif spec.startswith("input_norm:"):
                norm = self.input_norm(spec.split(":", 1)[1])
                prefixes = [f"{n}." for n in self.trained_modules(norm)] if norm else []
            elif spec.startswith("top_layers:"):
                prefixes = [f"{n}." for n in self._top_layer_prefixes(spec)]
            elif spec in self.INSERTION_POINTS:
                prefixes = [f"{n}." for n in self.trained_modules(spec)]
            else:
                raise ValueError(
                    f"Unknown trainable spec '{spec}'. Use an insertion point "
                    f"({', '.join(self.INSERTION_POINTS)}), final_norm_bias, biases, "
                    "input_norm:attention, input_norm:ffn, top_layers:K or all."
                )
            names += [n for n, _ in self.named_parameters() if any(n.startswith(p) for p in prefixes)]
        return names

    def set_finetuned(self, specs):
        """Remembers which pretrained modules are fine-tuned as a whole (they follow train mode)."""
        prefixes = []
        for spec in map(str, specs):
            if spec == "all":
                prefixes.append("")
            elif spec.startswith("top_layers:"):
                prefixes += self._top_layer_prefixes(spec)
            elif spec in self.INSERTION_POINTS:
                prefixes += self.trained_modules(spec)
        self.finetuned_prefixes = prefixes

    def train(self, mode=True):
        """Train mode for PETL modules and fine-tuned layers; frozen pretrained modules stay in eval.

        SpeechBrain's Brain calls ``modules.train()`` every epoch; dropout (and layer drop) of a
        frozen backbone must stay off all the same.
        """
        super().train(mode)
        if not mode:
            return self
        petl_owned = set()
        for name, module in self.named_modules():
            if isinstance(module, PETLModule):
                petl_owned.update(n for n, _ in module.named_modules(prefix=name))
                inner = getattr(module, "pretrained_module", None)
                if isinstance(inner, torch.nn.Module):
                    prefix = f"{name}.pretrained_module"
                    petl_owned.difference_update(n for n, _ in inner.named_modules(prefix=prefix))
        for name, module in self.named_modules():
            if name in petl_owned or not name:
                continue
            plain = name.replace(".pretrained_module", "")
            module.training = any(
                plain == p or plain.startswith(p + ".") or p == "" for p in self.finetuned_prefixes
            )
        return self

    # ---------------------------------------------------------------- interface
    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_layers(self):
        return self.config.num_hidden_layers

    @property
    def has_cls_token(self):
        return False

    def forward(self, inputs, lengths=None):
        """``inputs`` (the input processor's output, batched) -> ``(hidden [B, T, D], mask)``.

        ``mask`` is ``[B, T]`` bool of valid tokens, or None when every token is valid.
        """
        raise NotImplementedError


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


@register("audio-spectrogram-transformer", "ast")
class ASTBackbone(Backbone):
    """The Audio Spectrogram Transformer (``transformers.ASTModel``) as a lobe.

    Input: Kaldi fbank features ``[B, max_frames, mel]`` (``input_processor``). Output: the final
    LayerNorm's output ``[B, 2 + patches, D]`` (CLS, distillation token, patches), exactly what
    ``ASTModel`` returns as ``last_hidden_state``.

    Arguments
    ---------
    source : str
        Hub id (default checkpoint ``MIT/ast-finetuned-audioset-10-10-0.4593``) or local folder.
    max_frames : int
        Frames of input (10 ms each). The checkpoint's position embeddings are adapted to it.
    position_embeddings : str
        ``adapt`` (default): keep the pretrained embeddings, cut along time around the centre when
        fewer frames are used, interpolated along time when more (as the original AST code does).
        ``zeros``: reproduce the reference code, whose ``ignore_mismatched_sizes=True`` replaced
        them with zeros (frozen) whenever ``max_frames`` differs from the checkpoint's.
    attn_implementation : str
        ``sdpa`` (default, PyTorch scaled-dot-product attention) or ``eager``.
    gradient_checkpointing : bool
        Recompute each layer in backward to save memory.
    **other_options
        Options of the other families' lobes (e.g. ``clip_seconds``): ignored.
    """

    INSERTION_POINTS = {
        "embeddings": ["model.embeddings"],
        "layer": ["model.layers.[0-9]", "model.layers.[0-9][0-9]"],
        "later_layers": ["model.layers.[1-9]", "model.layers.[0-9][0-9]"],
        "attention": ["model.layers.*.attention"],
        "ffn": ["model.layers.*.mlp"],
        "ln_attention": ["model.layers.*.layernorm_before"],
        "ln_ffn": ["model.layers.*.layernorm_after"],
        "q": ["model.layers.*.attention.q_proj"],
        "k": ["model.layers.*.attention.k_proj"],
        "v": ["model.layers.*.attention.v_proj"],
        "o": ["model.layers.*.attention.o_proj"],
        "final_norm": ["model.layernorm"],
    }
    family = "ast"
    PROMPT_POSITION = (1, 1)  # after the CLS token, in place of the distillation token

    def __init__(
        self,
        source,
        max_frames=1024,
        position_embeddings="adapt",
        attn_implementation="sdpa",
        gradient_checkpointing=False,
        **other_options,
    ):
        super().__init__(other_options)
        if position_embeddings not in ("adapt", "zeros"):
            raise ValueError(
                f"position_embeddings must be 'adapt' or 'zeros', got '{position_embeddings}'."
            )
        self.source = str(source)
        try:
            self.model = transformers.ASTModel.from_pretrained(
                source, attn_implementation=attn_implementation
            )
        except OSError as err:
            read_config(source)  # raises the clear message when the checkpoint is unreachable
            raise err
        self.config = self.model.config
        self.position_embeddings_mode = position_embeddings
        self._resize_position_embeddings(int(max_frames), position_embeddings)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            # context_fn: the recomputation in backward sees the forward's token mask, and PETL
            # BatchNorms do not update their running statistics a second time.
            self.model.activation_checkpointing_enable(
                {"use_reentrant": False, "context_fn": checkpoint_contexts}
            )
        self.input_processor = ASTFbank(max_frames=max_frames, num_mel_bins=self.config.num_mel_bins)

    def train(self, mode=True):
        """As ``Backbone.train``; with gradient checkpointing, every transformer layer object is
        flagged with ``mode`` so that frozen layers are recomputed in backward too.

        transformers checkpoints a layer only when the layer itself is in train mode, and a frozen
        layer stays in eval mode (``Backbone.train``): PETL methods would silently get no
        recomputation. Only the layer object's own flag is set; its dropouts stay in eval mode.
        """
        super().train(mode)
        if self.gradient_checkpointing:
            for _, layer in self.modules_at("layer"):
                getattr(layer, "pretrained_module", layer).training = mode
        return self

    @property
    def has_cls_token(self):
        return True

    def _patch_grid(self, max_frames):
        config = self.config
        freq = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        time = (max_frames - config.patch_size) // config.time_stride + 1
        return freq, time

    def _resize_position_embeddings(self, max_frames, mode):
        """Fits the position embeddings to ``max_frames`` (see the class docstring)."""
        if max_frames < self.config.patch_size:
            raise ValueError(
                f"max_frames={max_frames} is shorter than one AST patch ({self.config.patch_size} "
                "frames); use at least that many."
            )
        old_freq, old_time = self._patch_grid(self.config.max_length)
        freq, time = self._patch_grid(max_frames)
        embeddings = self.model.embeddings
        if time == old_time:
            self.config.max_length = max_frames
            return
        old = embeddings.position_embeddings.data
        dim = old.shape[-1]
        if mode == "zeros":
            new = torch.zeros(1, 2 + freq * time, dim, dtype=old.dtype)
        else:
            grid = old[:, 2:].reshape(1, old_freq, old_time, dim).permute(0, 3, 1, 2)
            if time < old_time:
                start = old_time // 2 - time // 2
                grid = grid[..., start : start + time]
            else:
                grid = torch.nn.functional.interpolate(
                    grid, size=(old_freq, time), mode="bilinear", align_corners=False
                )
            patches = grid.permute(0, 2, 3, 1).reshape(1, freq * time, dim)
            new = torch.cat([old[:, :2], patches], dim=1)
        embeddings.position_embeddings = torch.nn.Parameter(
            new.contiguous(), requires_grad=embeddings.position_embeddings.requires_grad
        )
        self.config.max_length = max_frames

    def forward(self, inputs, lengths=None):
        """``inputs [B, max_frames, mel]`` -> ``(hidden [B, T, D], None)``; every token is valid
        (padding frames are zeros of the normalised fbank, as in AST training)."""
        with token_mask(None):  # every token valid for the PETL modules too
            return self.model(input_values=inputs).last_hidden_state, None


# ==================================================================== wav2vec 2.0 family
WAVEFORM_MODELS = {
    "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
    "hubert": (transformers.HubertConfig, transformers.HubertModel),
    "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
}


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


def is_wavlm_attention(module):
    """Whether ``module`` is WavLM's attention (gated relative position bias, called with
    ``attention_mask [B, T]``, ``position_bias``, returning ``(out, weights, position_bias)``)."""
    return isinstance(module, transformers.models.wavlm.modeling_wavlm.WavLMAttention)


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


def read_feature_extractor_config(source):
    """``(do_normalize, return_attention_mask, sampling_rate)`` from ``preprocessor_config.json``,
    or None when the checkpoint has no such file."""
    try:
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return extractor.do_normalize, extractor.return_attention_mask, extractor.sampling_rate


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
    (``petl_modules.adapted.token_mask``: convolutions and Soft-MoA routing skip it), so that an
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
        config = read_config(source)
        self.model_type = config.model_type
        model_class = WAVEFORM_MODELS[self.model_type][1]
        if attn_implementation == "sdpa" and not model_class._supports_sdpa:
            attn_implementation = "eager"  # WavLM: F.multi_head_attention_forward only
        self.model = model_class.from_pretrained(source, attn_implementation=attn_implementation)
        self.config = self.model.config
        if getattr(self.config, "add_adapter", False):
            raise ValueError(
                f"Backbone '{source}' has transformers' own adapter layers (add_adapter=True), "
                "which PETL-AST does not use: pick a checkpoint without them."
            )
        self.pre_ln = bool(self.config.do_stable_layer_norm)
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
                f"mask {'on' if self.config.feat_extract_norm == 'layer' else 'off'} (CNN norm "
                f"'{self.config.feat_extract_norm}')."
            )
            extractor = (True, self.config.feat_extract_norm == "layer", 16000)
        do_normalize, self.use_attention_mask, sample_rate = extractor
        self.use_attention_mask = bool(self.use_attention_mask)
        self.clip_samples = None if clip_seconds is None else round(float(clip_seconds) * sample_rate)
        self.input_processor = Waveform(self.clip_samples, normalize=do_normalize, sample_rate=sample_rate)

    def _insertion_points(self):
        layers = "model.encoder.layers"
        return {
            "embeddings": ["model.encoder.dropout"],
            "layer": [f"{layers}.[0-9]", f"{layers}.[0-9][0-9]"],
            "later_layers": [f"{layers}.[1-9]", f"{layers}.[0-9][0-9]"],
            "attention": [f"{layers}.*.attention"],
            "ffn": [f"{layers}.*.feed_forward"],
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
        hidden = hidden + encoder.pos_conv_embed(hidden)
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
                if self._drop_layer(layer, index):
                    continue
                if self.model_type == "wavlm":
                    extra = {} if self.pre_ln else {"index": index}
                    hidden, position_bias = self._run_layer(
                        layer, hidden, attention_mask=layer_mask, position_bias=position_bias, **extra
                    )
                else:
                    hidden = self._run_layer(layer, hidden, attention_mask=layer_mask)
        if self.pre_ln:
            hidden = encoder.layer_norm(hidden)
        return hidden, added

    def _layer_attention_mask(self, hidden, attention_mask):
        """The mask argument of a layer: WavLM takes ``[B, T]``; wav2vec2/HuBERT the 4-D mask of
        their attention implementation."""
        if attention_mask is None or self.model_type == "wavlm":
            return attention_mask
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def _drop_layer(self, layer, index):
        """LayerDrop, as transformers, for layers being fine-tuned (frozen ones are in eval mode)."""
        layer = getattr(layer, "pretrained_module", layer)
        if not layer.training or self.config.layerdrop <= 0.0:
            return False
        if self.model_type == "wavlm" and index == 0:  # it computes the relative position bias
            return False
        return bool(torch.rand([]) < self.config.layerdrop)

    def _run_layer(self, layer, hidden, **kwargs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                layer, hidden, use_reentrant=False, context_fn=checkpoint_contexts, **kwargs
            )
        return layer(hidden, **kwargs)
