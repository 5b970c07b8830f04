"""The adapter blocks (input and output ``[B, T, D]``, ``r = round(D / reduction_rate)``):
``Bottleneck``, ``ConformerAdapter`` and ``Convpass`` (``make_block`` by name), what they are built
of (``MaskedBatchNorm1d``, ``QuickGELU``, padding masked before convolutions over the tokens), their
width checks and initialisations. Where and how a block wraps a sublayer, and the formulas:
``petl_modules.methods.adapters``; the mixtures of adapters use the blocks as experts
(``petl_modules.methods.moa``)."""

import torch
import torch.nn.functional as F

from petl_modules.contract import recomputing

ADAPTER_BLOCKS = ("bottleneck", "conformer", "convpass")
INITS = ("identity", "reference")


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
    if width > int(hidden_size):  # checked before anything of that width is allocated
        raise ValueError(
            f"reduction_rate={reduction_rate:g} gives a bottleneck of {width} for hidden size "
            f"{hidden_size}, wider than the backbone itself: use --reduction_rate=1 or more."
        )
    return width


# Below this bottleneck width / LoRA rank a method is a warning (``narrow_width_warning``).
MIN_WIDTH = 4


def narrow_width_warning(hidden_size, reduction_rate):
    """The warning for a bottleneck width / rank ``round(hidden_size / reduction_rate)`` under
    ``MIN_WIDTH`` (e.g. the default ``reduction_rate`` 96 of a backbone 64 wide: width 1), naming
    the value of ``--reduction_rate`` that gives ``MIN_WIDTH``; None when wide enough.

    Example
    -------
    >>> narrow_width_warning(768, 96) is None
    True
    """
    width = bottleneck_width(hidden_size, reduction_rate)
    if width >= MIN_WIDTH:
        return None
    return (f"reduction_rate={float(reduction_rate):g} on this backbone's hidden size {hidden_size} "
            f"gives a bottleneck width / LoRA rank of {width} (round({hidden_size} / "
            f"{float(reduction_rate):g})): too narrow to learn much. --reduction_rate="
            f"{int(hidden_size) // MIN_WIDTH} or less gives at least {MIN_WIDTH}.")


def reference_init_(module):
    """In place: every Linear of ``module`` as transformers' ``_init_weights`` of the reference's
    era (truncated N(0, 0.02) weight, zero bias). Other layers keep their own initialisation."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            torch.nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                torch.nn.init.zeros_(sub.bias)
    return module


def mask_padding(x, mask):
    """``x [B, C, T]`` with the padded positions (``mask [B, T]`` False) zeroed; ``x`` itself when
    ``mask`` is None. Before a convolution over T with zero ``same`` padding, this makes a padded
    utterance's valid outputs equal to the utterance's alone."""
    return x if mask is None else x * mask[:, None, :].to(x.dtype)


class MaskedBatchNorm1d(torch.nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over ``[B, C, T]`` that skips padding and checkpoint recomputations.

    In training, the batch statistics (used to normalise, and to update the running statistics)
    are taken over the valid positions of ``mask [B, T]`` only. When a checkpointed layer is
    recomputed in backward (``petl_modules.contract.recomputing``), the batch statistics are used
    again but the running statistics are not updated a second time. Without a mask and outside a
    recomputation it is ``nn.BatchNorm1d`` exactly; in eval mode (running statistics) every
    position is normalised on its own, so padding cannot matter.
    """

    def forward(self, x, mask=None):
        """``x [B, C, T]`` (+ ``mask [B, T]`` bool, True = valid) -> ``[B, C, T]``."""
        batch_stats = self.training or self.running_mean is None
        if not batch_stats or (mask is None and not recomputing()):
            return super().forward(x)
        if mask is None:  # recomputation: the same call on copies of the running statistics
            running_mean = None if self.running_mean is None else self.running_mean.clone()
            running_var = None if self.running_var is None else self.running_var.clone()
            return F.batch_norm(x, running_mean, running_var, self.weight, self.bias, True,
                                self.momentum or 0.0, self.eps)
        weights = mask[:, None, :].to(x.dtype)  # [B, 1, T]
        count = weights.sum()
        mean = (x * weights).sum(dim=(0, 2)) / count  # [C]
        centred = x - mean[:, None]
        var = (centred.square() * weights).sum(dim=(0, 2)) / count
        if self.training and self.track_running_stats and not recomputing():
            self._update_running_stats(mean.detach(), var.detach(), count)
        out = centred * torch.rsqrt(var + self.eps)[:, None]
        if self.affine:
            out = out * self.weight[:, None] + self.bias[:, None]
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean, var, count):
        """As ``nn.BatchNorm1d``: exponential (or cumulative, momentum None) average, the variance
        unbiased over the ``count`` valid positions."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * count / (count - 1).clamp(min=1), factor)


def reference_init_warning(method):
    """The start warning of ``init=reference`` (N(0, 0.02) instead of an identity start)."""
    return (
        f"{method}: init=reference draws the inserted weights from N(0, 0.02), as the reference "
        "runs started: the model starts slightly away from the pretrained one. --init=identity "
        "starts at it."
    )


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

    def forward(self, x, mask=None):
        """``x [B, T, D]`` -> ``[B, T, D]`` (token by token: ``mask`` unused)."""
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
        self.batch_norm = MaskedBatchNorm1d(width)
        self.pointwise_out = torch.nn.Conv1d(width, hidden_size, kernel_size=1)
        self.dropout = torch.nn.Dropout(float(dropout))
        if check_choice("init", init, INITS) == "identity":
            torch.nn.init.zeros_(self.pointwise_out.weight)
            torch.nn.init.zeros_(self.pointwise_out.bias)

    def forward(self, x, mask=None):
        """``x [B, T, D]`` (+ ``mask [B, T]``: padded tokens are zeroed before the depthwise
        convolution and left out of the BatchNorm statistics) -> ``[B, T, D]``."""
        out = self.norm(x).transpose(1, 2)  # [B, D, T]
        out = mask_padding(F.glu(self.pointwise_in(out), dim=1), mask)  # [B, r, T]
        out = F.silu(self.batch_norm(self.depthwise(out), mask))
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

    def forward(self, x, mask=None):
        """``x [B, T, D]`` (+ ``mask [B, T]``: padded tokens are zeroed before the convolution)
        -> ``[B, T, D]``."""
        hidden = mask_padding(self.act(self.down(x)).transpose(1, 2), mask)  # [B, r, T]
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
