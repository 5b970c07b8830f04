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
ffn_in, ffn_out the feed-forward sublayer's two projections (``nn.Linear``)
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

import logging

import torch
from speechbrain.nnet.adapters import AdaptedModel, replace_module
from speechbrain.utils import checkpoints

# The contract the lobes share with the methods (re-exported here, their home before).
from petl_modules.contract import (  # noqa: F401
    _TOKEN_MASK,
    PETLModule,
    checkpoint_contexts,
    current_token_mask,
    petl_buffers,
    recomputing,
    token_mask,
)
from petl_modules.options import check_options, keyword_names

logger = logging.getLogger(__name__)


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
        if "reduction_rate" in self.adapter_kwargs:  # the bottleneck / rank of every module
            from petl_modules.methods.adapter_blocks import narrow_width_warning

            narrow = narrow_width_warning(backbone.hidden_size, self.adapter_kwargs["reduction_rate"])
            warnings += [narrow] if narrow else []
        for module in backbone.modules():
            if isinstance(module, PETLModule):
                warnings += [w for w in module.start_warnings() if w not in warnings]
        for warning in warnings:
            logger.warning(warning)
