"""Adapter tuning: small blocks beside or after a frozen sublayer (attention or feed-forward).

Blocks (input and output ``[B, T, D]``; ``r = round(D / reduction_rate)``, as the reference):

- ``Bottleneck``: ``up(GELU(down(x)))`` (Houlsby et al., 2019).
- ``ConformerAdapter``: the Conformer convolution module (Gulati et al., 2020) squeezed to ``r``
  channels: LayerNorm -> pointwise conv to 2r -> GLU -> depthwise conv (``kernel_size``) ->
  BatchNorm -> SiLU -> pointwise conv to D -> dropout. The first paper's new adapter.
- ``Convpass``: ``up(dropout(QuickGELU(conv3(QuickGELU(down(x))))))``, the convolution running over
  the sequence (Jie and Deng, 2022); an expert of the mixtures of adapters (``petl_modules.methods.moa``).

``Adapter`` wraps a sublayer ``f`` (the module at the ``attention`` or ``ffn`` insertion point,
whose input ``x`` is the output of the LayerNorm before it). With ``A_r(u) = A(u) (+ u if
apply_residual)``:

=========== ======== ================================ =========================================
seq_or_par  placement output                           paper name
=========== ======== ================================ =========================================
parallel    before   ``f(x) + A_r(x)``                parallel adapter (main table)
parallel    after    ``f(x) + A_r(f(x))``
sequential  after    ``A_r(f(x))``                    sequential adapter (main table)
sequential  before   ``f(A_r(x))``
=========== ======== ================================ =========================================

Padding (``petl_modules.contract.current_token_mask``, set by the lobe) is zeroed before the
conformer and Convpass convolutions over the tokens and left out of the conformer's BatchNorm
statistics (``MaskedBatchNorm1d``, which also updates its running statistics once per step under
gradient checkpointing). Settings that start the model away from the pretrained one (sequential
without residual, parallel with residual, ``init: reference``) are warned about once per build.

The placement ``auto`` is ``before`` for parallel and ``after`` for sequential adapters (the main
table); with ``location`` MHSA or FFN the four rows are the eight cases of the placement ablation.
Pfeiffer adapters sit at one location (``location``: FFN as the reference code, or MHSA as the
paper text), Houlsby adapters at both. The LayerNorm before each adapted sublayer trains too
(``adapter_trainable``) where the layout has one that feeds that sublayer alone (pre-LN: AST, large
wav2vec2 models); post-LN layers (wav2vec2-base family) have none: their LayerNorms sit on the
residual stream, and none trains, as in the reference's wav2vec2 adapters.

Initialisation (``init``): ``identity`` (default) draws the down-projections at random and zeroes
the last projection, so that a parallel adapter starts as the identity of the layer and learns from
the first step. ``reference`` reproduces the start of the reference code's runs, where transformers
re-initialised every Linear missing from the checkpoint with N(0, 0.02) and a zero bias.

The blocks themselves are ``petl_modules.methods.adapter_blocks``.
"""

import dataclasses

from petl_modules.contract import PETLModule, current_token_mask, host_input
# The blocks, their checks and initialisations (re-exported here: moa, the PEFT exchange and the
# tests import them from this module).
from petl_modules.methods.adapter_blocks import (  # noqa: F401
    ADAPTER_BLOCKS, INITS, MIN_WIDTH, Bottleneck, ConformerAdapter, Convpass, MaskedBatchNorm1d,
    QuickGELU, bottleneck_width, check_choice, make_block, mask_padding, narrow_width_warning,
    reference_init_, reference_init_warning)
from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import option

ADAPTER_TYPES = ("Pfeiffer", "Houlsby")
LOCATIONS = ("MHSA", "FFN")
SEQ_OR_PAR = ("parallel", "sequential")
PLACEMENTS = ("auto", "before", "after")

# Insertion point of each location, and the LayerNorm that feeds it (a trainable spec resolved by
# the lobe: Backbone.input_norm).
LOCATION_POINTS = {"MHSA": "attention", "FFN": "ffn"}
LOCATION_NORMS = {"MHSA": "input_norm:attention", "FFN": "input_norm:ffn"}


def split_output(output):
    """A sublayer's output as ``(tensor, rest)``: attention returns a tuple, FFNs a tensor."""
    if isinstance(output, tuple):
        return output[0], output[1:]
    return output, None


def join_output(tensor, rest):
    """Inverse of ``split_output``."""
    return tensor if rest is None else (tensor, *rest)


class Adapter(PETLModule):
    """An adapter block attached to a frozen sublayer (see the module docstring for the formulas).

    Arguments
    ---------
    module : torch.nn.Module
        The sublayer (``attention`` or ``ffn`` insertion point), kept as ``pretrained_module``. Its
        first input is ``x [B, T, D]``; it returns a tensor or a tuple whose first item is one.
    hidden_size : int
        D (given by ``AdaptedBackbone``).
    adapter_block : str
        ``bottleneck`` | ``conformer`` | ``convpass``.
    reduction_rate : float
        r = round(D / reduction_rate).
    kernel_size : int
        Depthwise kernel of the conformer block.
    seq_or_par : str
        ``parallel`` | ``sequential``.
    placement : str
        ``auto`` | ``before`` | ``after``: whether the adapter reads the sublayer's input or output.
    apply_residual : bool
        Add the adapter's input to its output.
    init : str
        ``identity`` | ``reference``.
    """

    def __init__(
        self,
        module,
        hidden_size,
        adapter_block="conformer",
        reduction_rate=96,
        kernel_size=31,
        seq_or_par="parallel",
        placement="auto",
        apply_residual=False,
        init="identity",
    ):
        super().__init__()
        check_choice("seq_or_par", seq_or_par, SEQ_OR_PAR)
        check_choice("placement", placement, PLACEMENTS)
        check_choice("apply_residual", apply_residual, (True, False))
        if placement == "auto":
            placement = "before" if seq_or_par == "parallel" else "after"
        self.pretrained_module = module
        self.adapter = make_block(adapter_block, int(hidden_size), reduction_rate, kernel_size, init)
        self.seq_or_par = seq_or_par
        self.placement = placement
        self.apply_residual = apply_residual
        self.init = init

    def start_warnings(self):
        """What makes the wrapped sublayer ``f`` start away from its pretrained output ``f(x)``
        (the block ``A`` is ~0 at the start), and the option that avoids it."""
        warnings = []
        if self.seq_or_par == "sequential" and not self.apply_residual:
            what = ("the adapted sublayer's (MHSA/FFN) pretrained output f(x) is replaced by the "
                    "adapter's output A(f(x))" if self.placement == "after" else
                    "the adapted sublayer (MHSA/FFN) reads the adapter's output, f(A(x)), instead "
                    "of its input x")
            warnings.append(
                f"Adapter: seq_or_par=sequential with apply_residual=False: {what}, which is ~0 at "
                "the start, so the model starts far from the pretrained one (faithful to the "
                "reference). --apply_residual=True adds the adapter's input back and starts at "
                "the pretrained model."
            )
        if self.seq_or_par == "parallel" and self.apply_residual:
            formula = "f(x) + A(x) + x" if self.placement == "before" else "f(x) + A(f(x)) + f(x)"
            warnings.append(
                "Adapter: seq_or_par=parallel with apply_residual=True adds the adapter's input to "
                f"the adapted sublayer's (MHSA/FFN) output, {formula}, so the model starts away "
                "from the pretrained one. --apply_residual=False starts at it."
            )
        if self.init == "reference":
            warnings.append(reference_init_warning("Adapter"))
        return warnings

    def adapt(self, x, mask=None):
        """``A_r(x)``: the block, plus its input when ``apply_residual``. ``[B, T, D]``."""
        out = self.adapter(x, mask)
        return out + x if self.apply_residual else out

    def forward(self, *args, **kwargs):
        """``x [B, T, D]`` (+ the sublayer's other arguments; ``host_input``) -> the sublayer's
        output, adapted. Padded tokens (``current_token_mask``) are kept out of the block's
        convolutions."""
        x, args, kwargs = host_input(args, kwargs)
        mask = current_token_mask(x)
        if self.seq_or_par == "sequential" and self.placement == "before":
            return self.pretrained_module(self.adapt(x, mask), *args, **kwargs)
        out, rest = split_output(self.pretrained_module(x, *args, **kwargs))
        if self.seq_or_par == "sequential":
            out = self.adapt(out, mask)
        else:
            out = out + self.adapt(x if self.placement == "before" else out, mask)
        return join_output(out, rest)


def adapter_locations(adapter_type, location="FFN"):
    """Locations of ``adapter_type``: Pfeiffer at ``location`` (MHSA | FFN), Houlsby at both."""
    check_choice("adapter_type", adapter_type, ADAPTER_TYPES)
    check_choice("location", location, LOCATIONS)
    return ["MHSA", "FFN"] if adapter_type == "Houlsby" else [location]


def adapter_points(adapter_type, location="FFN"):
    """Insertion points (``attention``, ``ffn``) of ``adapter_type`` at ``location``.

    Example
    -------
    >>> adapter_points("Houlsby")
    ['attention', 'ffn']
    """
    return [LOCATION_POINTS[loc] for loc in adapter_locations(adapter_type, location)]


def adapter_trainable(adapter_type, location="FFN"):
    """What trains besides the adapters: the final LayerNorm and the LayerNorm that feeds each
    adapted sublayer (``input_norm:attention``, ``input_norm:ffn``: ``ln_attention`` and ``ln_ffn``
    of a pre-LN lobe, nothing in a post-LN one; see ``Backbone.input_norm``).

    Example
    -------
    >>> adapter_trainable("Pfeiffer", "FFN")
    ['final_norm', 'input_norm:ffn']
    """
    return ["final_norm"] + [LOCATION_NORMS[loc] for loc in adapter_locations(adapter_type, location)]


def init_option():
    """The ``init`` option of the methods that insert adapter blocks or LoRA updates."""
    return option("identity", "identity: the last projection zero, the model starts as the "
                  "pretrained one; reference: N(0, 0.02), as the reference runs", choices=INITS)


def reduction_rate_option(default):
    """The ``reduction_rate`` option: the bottleneck width ``r = round(hidden / reduction_rate)``."""
    return option(default, "bottleneck width r = round(hidden / reduction_rate)", kind=float,
                  minimum=0, exclusive_minimum=True)


@register_method
@dataclasses.dataclass
class AdapterConfig(MethodConfig):
    """Adapter tuning: a block beside (parallel) or after (sequential) the FFN and/or MHSA
    sublayer of every layer; the final LayerNorm and the LayerNorm before each adapted sublayer
    (pre-LN backbones) train too."""

    name = "adapter"
    summary = ("adapter blocks beside/after the FFN and/or MHSA sublayers + the LayerNorm before each "
               "adapted sublayer in pre-LN backbones")

    adapter_block: str = option("conformer", "the block", choices=ADAPTER_BLOCKS)
    adapter_type: str = option("Pfeiffer", "Pfeiffer: one location; Houlsby: MHSA and FFN",
                               choices=ADAPTER_TYPES)
    location: str = option("FFN", "Pfeiffer's location", choices=LOCATIONS)
    seq_or_par: str = option("parallel", "beside (parallel) or after (sequential) the sublayer",
                             choices=SEQ_OR_PAR)
    placement: str = option("auto", "whether the block reads the sublayer's input (before) or output "
                            "(after); auto: before if parallel, after if sequential", choices=PLACEMENTS)
    apply_residual: bool = option(False, "add the adapter's input to its output")
    reduction_rate: float = reduction_rate_option(96)
    kernel_size: int = option(31, "depthwise kernel of the conformer block", minimum=1)
    init: str = init_option()

    def build(self, backbone):
        return adapted(
            backbone, Adapter, adapter_points(self.adapter_type, self.location),
            adapter_trainable(self.adapter_type, self.location), adapter_block=self.adapter_block,
            reduction_rate=self.reduction_rate, kernel_size=self.kernel_size,
            seq_or_par=self.seq_or_par, placement=self.placement,
            apply_residual=self.apply_residual, init=self.init)
