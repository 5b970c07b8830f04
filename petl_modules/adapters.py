"""Adapter tuning: small blocks beside or after a frozen sublayer (attention or feed-forward).

Blocks (input and output ``[B, T, D]``; ``r = round(D / reduction_rate)``, as the reference):

- ``Bottleneck``: ``up(GELU(down(x)))`` (Houlsby et al., 2019).
- ``ConformerAdapter``: the Conformer convolution module (Gulati et al., 2020) squeezed to ``r``
  channels: LayerNorm -> pointwise conv to 2r -> GLU -> depthwise conv (``kernel_size``) ->
  BatchNorm -> SiLU -> pointwise conv to D -> dropout. The first paper's new adapter.
- ``Convpass``: ``up(dropout(QuickGELU(conv3(QuickGELU(down(x))))))``, the convolution running over
  the sequence (Jie and Deng, 2022); an expert of the mixtures of adapters (``petl_modules.moa``).

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
"""

import torch
import torch.nn.functional as F

from petl_modules.adapted import PETLModule

ADAPTER_BLOCKS = ("bottleneck", "conformer", "convpass")
ADAPTER_TYPES = ("Pfeiffer", "Houlsby")
LOCATIONS = ("MHSA", "FFN")
SEQ_OR_PAR = ("parallel", "sequential")
PLACEMENTS = ("auto", "before", "after")
INITS = ("identity", "reference")

# Insertion point of each location, and the LayerNorm that feeds it (a trainable spec resolved by
# the lobe: Backbone.input_norm).
LOCATION_POINTS = {"MHSA": "attention", "FFN": "ffn"}
LOCATION_NORMS = {"MHSA": "input_norm:attention", "FFN": "input_norm:ffn"}


def check_choice(option, value, choices):
    """Raises a clear ``ValueError`` when ``value`` of ``option`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid: use one of {', '.join(map(str, choices))}.")
    return value


def bottleneck_width(hidden_size, reduction_rate):
    """``round(hidden_size / reduction_rate)`` (the reference's bottleneck and LoRA rank), checked.

    Example
    -------
    >>> bottleneck_width(768, 96)
    8
    """
    try:
        reduction_rate = float(reduction_rate)
    except (TypeError, ValueError):
        raise ValueError(f"reduction_rate must be a positive number, got {reduction_rate!r}.") from None
    if reduction_rate <= 0:
        raise ValueError(f"reduction_rate must be positive, got {reduction_rate}.")
    width = round(int(hidden_size) / reduction_rate)
    if width < 1:
        raise ValueError(
            f"reduction_rate={reduction_rate:g} gives a zero-width bottleneck for hidden size "
            f"{hidden_size} (round({hidden_size} / {reduction_rate:g}) = 0): use "
            f"--reduction_rate={hidden_size} or less."
        )
    return width


def reference_init_(module):
    """In place: every Linear of ``module`` as transformers' ``_init_weights`` of the reference's
    era (truncated N(0, 0.02) weight, zero bias). Other layers keep their own initialisation."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            torch.nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                torch.nn.init.zeros_(sub.bias)
    return module


class QuickGELU(torch.nn.Module):
    """``x * sigmoid(1.702 x)``, the GELU approximation of CLIP used by Convpass."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(torch.nn.Module):
    """``up(GELU(down(x)))``: ``[B, T, D]`` -> ``[B, T, D]`` through ``r = round(D / RR)``.

    Arguments
    ---------
    hidden_size : int
        D.
    reduction_rate : float
        RR.
    init : str
        ``identity`` (random down, zero up) or ``reference`` (both N(0, 0.02)).

    Example
    -------
    >>> block = Bottleneck(768, 64)
    >>> sum(p.numel() for p in block.parameters())
    19212
    """

    def __init__(self, hidden_size, reduction_rate, init="identity"):
        super().__init__()
        width = bottleneck_width(hidden_size, reduction_rate)
        self.down = torch.nn.Linear(hidden_size, width)
        self.up = torch.nn.Linear(width, hidden_size)
        if check_choice("init", init, INITS) == "reference":
            reference_init_(self)
        else:
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(F.gelu(self.down(x)))


class ConformerAdapter(torch.nn.Module):
    """The Conformer convolution module as an adapter: ``[B, T, D]`` -> ``[B, T, D]``.

    LayerNorm -> pointwise conv D -> 2r -> GLU -> depthwise conv (``kernel_size``, same padding)
    -> BatchNorm -> SiLU -> pointwise conv r -> D -> dropout. Unlike the reference code (which
    computed its LayerNorm and then discarded it), the LayerNorm's output is what is convolved.

    Arguments
    ---------
    hidden_size : int
        D.
    reduction_rate : float
        RR; r = round(D / RR).
    kernel_size : int
        Depthwise kernel (the paper: 31 for speech, 8 for audio events).
    dropout : float
        Dropout on the output (0 in the reference).
    init : str
        ``identity``: the last pointwise conv starts at zero. ``reference``: PyTorch's default
        initialisation of the convolutions (the reference's; transformers did not touch Conv1d).

    Example
    -------
    >>> block = ConformerAdapter(768, 96, kernel_size=31)
    >>> sum(p.numel() for p in block.parameters())
    21024
    """

    def __init__(self, hidden_size, reduction_rate, kernel_size=31, dropout=0.0, init="identity"):
        super().__init__()
        width = bottleneck_width(hidden_size, reduction_rate)
        if int(kernel_size) < 1:
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}.")
        self.norm = torch.nn.LayerNorm(hidden_size)
        self.pointwise_in = torch.nn.Conv1d(hidden_size, 2 * width, kernel_size=1)
        self.depthwise = torch.nn.Conv1d(
            width, width, kernel_size=int(kernel_size), groups=width, padding="same"
        )
        self.batch_norm = torch.nn.BatchNorm1d(width)
        self.pointwise_out = torch.nn.Conv1d(width, hidden_size, kernel_size=1)
        self.dropout = torch.nn.Dropout(float(dropout))
        if check_choice("init", init, INITS) == "identity":
            torch.nn.init.zeros_(self.pointwise_out.weight)
            torch.nn.init.zeros_(self.pointwise_out.bias)

    def forward(self, x):
        out = self.norm(x).transpose(1, 2)  # [B, D, T]
        out = F.glu(self.pointwise_in(out), dim=1)  # [B, r, T]
        out = F.silu(self.batch_norm(self.depthwise(out)))
        out = self.dropout(self.pointwise_out(out))  # [B, D, T]
        return out.transpose(1, 2)


class Convpass(torch.nn.Module):
    """Convpass: ``[B, T, D]`` -> ``[B, T, D]``, a 3-tap convolution over T in the bottleneck.

    ``up(dropout(QuickGELU(conv(QuickGELU(down(x))))))``. Unlike the reference code (which computed
    the convolution and then discarded it), the convolution's output is what goes up.

    Arguments
    ---------
    hidden_size : int
        D.
    reduction_rate : float
        RR; r = round(D / RR).
    dropout : float
        Dropout before the up-projection (0.1, as the reference).
    init : str
        ``identity``: xavier down and conv, zero up. ``reference``: down and up N(0, 0.02) (as
        transformers re-initialised them), xavier conv.
    """

    def __init__(self, hidden_size, reduction_rate, dropout=0.1, init="identity"):
        super().__init__()
        width = bottleneck_width(hidden_size, reduction_rate)
        self.down = torch.nn.Linear(hidden_size, width)
        self.conv = torch.nn.Conv1d(width, width, kernel_size=3, padding=1)
        self.up = torch.nn.Linear(width, hidden_size)
        self.act = QuickGELU()
        self.dropout = torch.nn.Dropout(float(dropout))
        torch.nn.init.xavier_uniform_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)
        if check_choice("init", init, INITS) == "reference":
            reference_init_(self)
        else:
            torch.nn.init.xavier_uniform_(self.down.weight)
            torch.nn.init.zeros_(self.down.bias)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

    def forward(self, x):
        hidden = self.act(self.down(x)).transpose(1, 2)  # [B, r, T]
        hidden = self.act(self.conv(hidden)).transpose(1, 2)  # [B, T, r]
        return self.up(self.dropout(hidden))


def make_block(adapter_block, hidden_size, reduction_rate, kernel_size=31, init="identity"):
    """The adapter block named ``adapter_block`` (bottleneck | conformer | convpass)."""
    check_choice("adapter_block", adapter_block, ADAPTER_BLOCKS)
    if adapter_block == "bottleneck":
        return Bottleneck(hidden_size, reduction_rate, init=init)
    if adapter_block == "conformer":
        return ConformerAdapter(hidden_size, reduction_rate, kernel_size=kernel_size, init=init)
    return Convpass(hidden_size, reduction_rate, init=init)


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
    **kwargs
        Ignored insertion details (``point``, ``layer``).
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
        **kwargs,
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

    def adapt(self, x):
        """``A_r(x)``: the block, plus its input when ``apply_residual``. ``[B, T, D]``."""
        out = self.adapter(x)
        return out + x if self.apply_residual else out

    def forward(self, x, *args, **kwargs):
        if self.seq_or_par == "sequential" and self.placement == "before":
            return self.pretrained_module(self.adapt(x), *args, **kwargs)
        out, rest = split_output(self.pretrained_module(x, *args, **kwargs))
        if self.seq_or_par == "sequential":
            out = self.adapt(out)
        else:
            out = out + self.adapt(x if self.placement == "before" else out)
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
