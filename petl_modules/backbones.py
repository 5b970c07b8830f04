"""Backbone lobes: a pre-trained transformers encoder plus the map of its insertion points.

``Backbone(source, ...)`` reads ``model_type`` from the checkpoint's ``config.json`` and builds the
lobe of that family (``ASTBackbone``; the wav2vec 2.0 family joins the same registry). A lobe owns
everything that depends on the installed transformers version: module names (the insertion-point
patterns, pinned by tests), how inputs are prepared, and how the model is called. PETL methods
never subclass transformers internals; they wrap modules at the lobe's insertion points
(``petl_modules.adapted.AdaptedBackbone``).
"""

import fnmatch
import logging
import re

import torch
import transformers

from petl_modules.adapted import PETLModule
from petl_modules.features import ASTFbank

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

    def __new__(cls, source=None, *args, **kwargs):
        if cls is Backbone:
            model_type = read_config(source).model_type
            if model_type not in FAMILIES:
                supported = ", ".join(sorted(FAMILIES))
                raise ValueError(
                    f"Backbone '{source}' has model_type '{model_type}', which PETL-AST does not "
                    f"support. Supported model types: {supported}."
                )
            cls = FAMILIES[model_type]
        return super().__new__(cls)

    def __init__(self):
        super().__init__()
        self.finetuned_prefixes = []

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
            prefixes += [n for n, _ in self.modules_at_optional("embeddings")]
        return prefixes

    def trainable_parameter_names(self, specs):
        """Parameter names (relative to the lobe) that the ``trainable`` specs name.

        Specs: an insertion point name, ``final_norm_bias``, ``biases`` (BitFit), ``top_layers:K``
        (the last K transformer layers; ``top_layers:all`` = every layer and the embeddings, i.e.
        everything above a CNN feature encoder), ``all``.
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
            elif spec.startswith("top_layers:"):
                prefixes = [f"{n}." for n in self._top_layer_prefixes(spec)]
            elif spec in self.INSERTION_POINTS:
                prefixes = [f"{n}." for n, _ in self.modules_at_optional(spec)]
            else:
                raise ValueError(
                    f"Unknown trainable spec '{spec}'. Use an insertion point "
                    f"({', '.join(self.INSERTION_POINTS)}), final_norm_bias, biases, "
                    "top_layers:K or all."
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
                prefixes += [n for n, _ in self.modules_at_optional(spec)]
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

    def __init__(
        self,
        source,
        max_frames=1024,
        position_embeddings="adapt",
        attn_implementation="sdpa",
        gradient_checkpointing=False,
    ):
        super().__init__()
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
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
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
        return self.model(input_values=inputs).last_hidden_state, None
