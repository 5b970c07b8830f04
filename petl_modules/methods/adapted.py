"""Attaching PETL modules to a backbone lobe, and deciding what trains.

``AdaptedBackbone`` is SpeechBrain's ``AdaptedModel`` (wrapping by name, freezing, trainable-only
checkpoints) driven by the lobe's *named insertion points* instead of raw module-name patterns, so
one method yaml works on every backbone family:

=============== ============================================================================
point           what is wrapped
=============== ============================================================================
embeddings      the module that turns the input into the token sequence (AST: patch embedding
                + CLS/distillation tokens + positions; wav2vec2: up to the positional conv)
layer           every transformer layer: a wrapper sees the token stream *before* the layer
later_layers    every transformer layer but the first
attention       the self-attention sublayer (MHSA incl. its output projection)
ffn             the feed-forward sublayer
ln_attention    the LayerNorm of the attention sublayer (pre-LN: before it; post-LN: after it)
ln_ffn          the LayerNorm of the feed-forward sublayer
q, k, v, o      the attention's query / key / value / output projections (``nn.Linear``)
final_norm      the LayerNorm after the last layer (absent in post-LN wav2vec2 models)
=============== ============================================================================

What trains besides the inserted modules is named in ``trainable`` (resolved by the lobe):
an insertion point (all parameters of the matched modules), ``final_norm_bias``, ``biases``
(BitFit: biases of every Linear and LayerNorm of the transformer), ``top_layers:K`` (the last K
transformer layers) or ``all``.
"""

import contextlib
import contextvars
import logging

import torch
from speechbrain.nnet.adapters import AdaptedModel, replace_module
from speechbrain.utils import checkpoints

from petl_modules.options import check_options, keyword_names

logger = logging.getLogger(__name__)


# The padding of the token sequence that PETL modules see, set by the lobe around its layers
# (``token_mask``), and whether a checkpointed layer is being recomputed in backward.
_TOKEN_MASK = contextvars.ContextVar("petl_token_mask", default=None)
_RECOMPUTING = contextvars.ContextVar("petl_recomputing", default=False)


@contextlib.contextmanager
def token_mask(mask):
    """Within the block, PETL modules treat the tokens where ``mask [B, T]`` (bool) is False as
    padding. The lobe sets it around its transformer layers; None, or a mask without padding
    (dropped here, except while ``torch.export`` traces), means every token is valid.

    Example
    -------
    >>> with token_mask(torch.tensor([[True, False]])):
    ...     current_token_mask(torch.zeros(1, 2, 4)).tolist()
    [[True, False]]
    """
    if mask is not None:
        mask = mask.bool()
        # An exported graph (ONNX) keeps the mask: whether it has padding depends on the input.
        if not torch.compiler.is_exporting() and bool(mask.all()):
            mask = None
    reset = _TOKEN_MASK.set(mask)
    try:
        yield
    finally:
        _TOKEN_MASK.reset(reset)


def current_token_mask(x):
    """The padding mask ``[B, T]`` of the tokens ``x [B, T, ...]`` a PETL module is called on, or
    None when every token is valid (see ``token_mask``)."""
    mask = _TOKEN_MASK.get()
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"The token mask {list(mask.shape)} set by the backbone lobe does not fit the "
            f"{list(x.shape[:2])} tokens a PETL module receives: the lobe must set the mask of "
            "the sequence its layers run on (petl_modules.methods.adapted.token_mask)."
        )
    return mask


def recomputing():
    """Whether a checkpointed layer is being recomputed in backward (``checkpoint_contexts``):
    stateful modules (BatchNorm running statistics) must not update a second time."""
    return _RECOMPUTING.get()


@contextlib.contextmanager
def _recomputation(mask):
    reset_mask, reset_flag = _TOKEN_MASK.set(mask), _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(reset_flag)
        _TOKEN_MASK.reset(reset_mask)


def checkpoint_contexts():
    """``context_fn`` of ``torch.utils.checkpoint.checkpoint`` (non-reentrant) for a layer holding
    PETL modules: its recomputation in backward sees the forward's token mask and ``recomputing()``.
    """
    return contextlib.nullcontext(), _recomputation(_TOKEN_MASK.get())


class PETLModule(torch.nn.Module):
    """Base of every module a PETL method inserts into a backbone.

    A PETL module trains (its own parameters, and train/eval mode follows the Brain) even when the
    backbone around it is frozen and kept in eval mode. A wrapper keeps the module it wraps as
    ``self.pretrained_module`` (SpeechBrain's convention); that one stays frozen and in eval mode.

    Modules whose tokens interact (convolutions over the sequence, routing over the tokens) read
    the padding with ``current_token_mask``. ``start_warnings`` names the settings that start the
    model away from the pretrained one (``AdaptedBackbone`` logs each once per build).
    """

    def start_warnings(self):
        """Messages (str) about settings that make this module change the pretrained model's
        output at the start of training, each naming the option that avoids it."""
        return []




def petl_buffers(model):
    """``{name: buffer}`` of the state buffers of PETL modules in ``model`` (e.g. the running
    statistics of a conformer adapter's BatchNorm); the pretrained modules they wrap excluded.

    They are trained state too, though not ``requires_grad``: checkpoints and PETL model folders
    keep them beside the trained parameters.
    """
    state = model.state_dict(keep_vars=True)
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, PETLModule):
            continue
        for buffer_name, _ in module.named_buffers():
            full = f"{name}.{buffer_name}" if name else buffer_name
            if not buffer_name.startswith("pretrained_module.") and full in state:
                found[full] = state[full]
    return found


@checkpoints.register_checkpoint_hooks
class AdaptedBackbone(AdaptedModel):
    """A backbone lobe with PETL modules attached at named insertion points.

    Arguments
    ---------
    backbone : petl_modules.backbones.Backbone
        The lobe to adapt. All its parameters are frozen, then ``trainable`` is unfrozen.
    adapter_class : callable, optional
        Called as ``adapter_class(module, **adapter_kwargs)`` for every module at the insertion
        points (like ``AdaptedModel``). If it names them as parameters, it also receives
        ``hidden_size`` (the backbone's), ``point`` (the insertion point name), ``layer`` (the
        layer index or None) and ``prompt_position`` (the lobe's ``PROMPT_POSITION``, for methods
        that add tokens).
    insertion_points : list of str
        Names of the lobe's insertion points (see the module docstring).
    trainable : list of str
        What of the backbone trains besides the inserted modules (see the module docstring).
    adapter_kwargs : dict
        Options of ``adapter_class``: each must be one of its parameters (a misspelt key is an
        error naming the close matches, raised before anything is wrapped).

    Example
    -------
    >>> from petl_modules.backbones import Backbone
    >>> from petl_modules.tiny import tiny_ast_config
    >>> import tempfile, transformers
    >>> folder = tempfile.mkdtemp()
    >>> transformers.ASTModel(tiny_ast_config()).save_pretrained(folder)
    >>> lobe = Backbone(folder, max_frames=64)
    >>> model = AdaptedBackbone(lobe, trainable=["final_norm"])
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)  # final LayerNorm, D = 64
    128
    """

    def __init__(
        self,
        backbone,
        adapter_class=None,
        insertion_points=(),
        trainable=(),
        adapter_kwargs=None,
    ):
        insertion_points = list(insertion_points or [])
        trainable = list(trainable or [])
        if insertion_points and adapter_class is None:
            raise ValueError(
                f"insertion_points {insertion_points} given without an adapter_class: name the "
                "PETL module to insert (adapter_class: !name:petl_modules....)."
            )
        self._points = insertion_points
        adapter_kwargs = dict(adapter_kwargs or {})
        options = keyword_names(adapter_class, skip=1) if adapter_class is not None else []
        if options is not None:  # None: a callable whose signature cannot be read
            owner = getattr(adapter_class, "__name__", "the adapter_class")
            check_options(adapter_kwargs, options, owner)
        super().__init__(
            model_to_adapt=backbone,
            adapter_class=adapter_class,
            target_layers=backbone.insertion_patterns(insertion_points),
            adapter_kwargs=adapter_kwargs,
        )
        if insertion_points and not self.replace_layers:
            raise ValueError(
                f"No module of the {backbone.family} backbone matches insertion points "
                f"{insertion_points}."
            )
        for name in backbone.trainable_parameter_names(trainable):
            backbone.get_parameter(name).requires_grad_(True)
        backbone.set_finetuned(trainable)

    @checkpoints.mark_as_saver
    def saver(self, path):
        """Saves the trained tensors and the PETL modules' buffers (``AdaptedModel`` saves only
        ``requires_grad`` tensors, so a BatchNorm inside an adapter would lose its statistics)."""
        state = {n: p for n, p in self.state_dict(keep_vars=True).items() if p.requires_grad}
        state.update(petl_buffers(self))
        torch.save(state, path)

    def insert_adapters(self):
        """Wraps every matched module, telling the adapter class where it sits."""
        backbone = self.adapted_model
        accepted = keyword_names(self.adapter_class, skip=1) or []
        for name in self.replace_layers:
            module = backbone.get_submodule(name)
            kwargs = dict(self.adapter_kwargs)
            point, layer = backbone.locate(name, self._points)
            extras = {"hidden_size": backbone.hidden_size, "point": point, "layer": layer,
                      "prompt_position": backbone.PROMPT_POSITION}
            for key, value in extras.items():
                if key not in kwargs and key in accepted:
                    kwargs[key] = value
            replace_module(backbone, name, self.adapter_class(module, **kwargs))
        warnings = []
        for module in backbone.modules():
            if isinstance(module, PETLModule):
                warnings += [w for w in module.start_warnings() if w not in warnings]
        for warning in warnings:
            logger.warning(warning)
