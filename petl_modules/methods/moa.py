"""Mixtures of adapters (second paper): N adapter experts beside a frozen sublayer.

Experts are bottleneck or Convpass adapters (``petl_modules.methods.adapters``) whose weights are stacked
(``[N, D, r]``, ``[N, r, D]``) and computed together with einsum, never one by one. A mixture sits
in parallel with the sublayer ``f`` it wraps (``attention`` = MHSA or ``ffn`` = FFN insertion
point): ``out = f(x) + MoA(x)`` with ``x`` the output of the LayerNorm before ``f``, added once
(the reference added it twice in a layer with Pfeiffer at MHSA).

- Dense-MoA: a token router ``softmax(W x + b)`` ``[B, T, N]`` weighs the N experts' outputs. The
  gate is folded into the up-projection: one matmul of width N*r down, one gated einsum up.
- Soft-MoA (Soft MoE of Puigcerver et al., 2024, with adapters as experts): learned slot
  embeddings ``Phi [D, N, p]``; ``logits = x Phi [B, T, N, p]``; dispatch weights = softmax over
  the tokens, combine weights = softmax over all N*p slots. Slot inputs are dispatch-weighted
  averages of the tokens ``[B, N, p, D]``; expert n processes its p slots; each token's output is
  the combine-weighted average of all slot outputs. ``normalize``: the logits use l2-normalised
  tokens and slot embeddings (over D) times a learned scale (the Soft MoE paper's option).

Padding (``petl_modules.contract.current_token_mask``, set by the lobe) is kept out: padded tokens
get no dispatch weight and no combined output, and are zeroed before a Convpass expert's
convolution over the tokens, so that an utterance gets the same output alone or in a batch.

Pfeiffer mixtures sit at one location (``location``: MHSA as the paper, or FFN), Houlsby at both;
the LayerNorm before each adapted sublayer trains too (``petl_modules.methods.adapters.adapter_trainable``).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from petl_modules.contract import PETLModule, current_token_mask, host_input
from petl_modules.methods.adapters import (
    ADAPTER_TYPES,
    INITS,
    LOCATIONS,
    QuickGELU,
    adapter_points,
    adapter_trainable,
    bottleneck_width,
    check_choice,
    init_option,
    mask_padding,
    reduction_rate_option,
    reference_init_warning,
)
from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import option

EXPERT_BLOCKS = ("bottleneck", "convpass")
MOA_KINDS = ("dense", "soft")


class StackedAdapters(torch.nn.Module):
    """N bottleneck or Convpass adapters with stacked weights, run as batched matmuls.

    Expert n maps ``[L, D]`` to ``[L, D]`` as the single blocks of ``petl_modules.methods.adapters`` do
    (``Bottleneck``: ``up(GELU(down x))``; ``Convpass``: ``up(drop(QGELU(conv3(QGELU(down x)))))``
    with the convolution over L), with weights ``down_weight[n] [D, r]``, ``up_weight[n] [r, D]``
    (and a grouped convolution: group n is expert n's).

    Arguments
    ---------
    num_experts : int
        N.
    hidden_size : int
        D.
    reduction_rate : float
        r = round(D / reduction_rate).
    adapter_block : str
        ``bottleneck`` | ``convpass``.
    init : str
        ``identity``: down random (as ``nn.Linear``; Xavier for Convpass), up zero: the mixture
        outputs zero at start. ``reference``: down and up N(0, 0.02), zero biases (the start of
        the reference runs).
    """

    def __init__(self, num_experts, hidden_size, reduction_rate, adapter_block="bottleneck",
                 init="identity"):
        super().__init__()
        check_choice("adapter_block", adapter_block, EXPERT_BLOCKS)
        check_choice("init", init, INITS)
        n, d = int(num_experts), int(hidden_size)
        r = bottleneck_width(d, reduction_rate)
        self.num_experts, self.width, self.adapter_block = n, r, adapter_block
        self.down_weight = torch.nn.Parameter(torch.empty(n, d, r))
        self.down_bias = torch.nn.Parameter(torch.zeros(n, r))
        self.up_weight = torch.nn.Parameter(torch.zeros(n, r, d))
        self.up_bias = torch.nn.Parameter(torch.zeros(n, d))
        if adapter_block == "convpass":
            self.conv = torch.nn.Conv1d(n * r, n * r, kernel_size=3, padding=1, groups=n)
            bound = math.sqrt(6.0 / (3 * r + 3 * r))  # Xavier per expert: fan in = fan out = 3r
            torch.nn.init.uniform_(self.conv.weight, -bound, bound)
            torch.nn.init.zeros_(self.conv.bias)
            self.dropout = torch.nn.Dropout(0.1)
        if init == "reference":
            torch.nn.init.trunc_normal_(self.down_weight, std=0.02)
            torch.nn.init.trunc_normal_(self.up_weight, std=0.02)
        elif adapter_block == "convpass":
            bound = math.sqrt(6.0 / (d + r))
            torch.nn.init.uniform_(self.down_weight, -bound, bound)
        else:  # nn.Linear's default: Kaiming uniform (a = sqrt(5)) on [r, D], bias U(+-1/sqrt(D))
            bound = 1.0 / math.sqrt(d)
            torch.nn.init.uniform_(self.down_weight, -bound, bound)
            torch.nn.init.uniform_(self.down_bias, -bound, bound)

    def hidden(self, x, mask=None):
        """Bottleneck activations ``[B, N, L, r]`` of ``x``: ``[B, L, D]`` (every expert reads the
        same tokens) or ``[B, N, L, D]`` (expert n reads ``x[:, n]``). ``mask [B, L]``: padded
        positions are zeroed before the Convpass convolution over L."""
        if x.dim() == 3:
            h = torch.einsum("bld,ndr->bnlr", x, self.down_weight)
        else:
            h = torch.einsum("bnld,ndr->bnlr", x, self.down_weight)
        h = h + self.down_bias[:, None, :]
        if self.adapter_block == "bottleneck":
            return F.gelu(h)
        act = QuickGELU()
        batch, n, length, r = h.shape
        h = mask_padding(act(h).permute(0, 1, 3, 2).reshape(batch, n * r, length), mask)  # [B, N*r, L]
        h = act(self.conv(h)).reshape(batch, n, r, length).permute(0, 1, 3, 2)
        return self.dropout(h)

    def forward(self, x):
        """Each expert's output ``[B, N, L, D]`` (input as in ``hidden``)."""
        h = self.hidden(x)
        return torch.einsum("bnlr,nrd->bnld", h, self.up_weight) + self.up_bias[:, None, :]

    def mix(self, x, gates, mask=None):
        """``sum_n gates[..., n] * expert_n(x)``: ``x [B, L, D]``, ``gates [B, L, N]`` ->
        ``[B, L, D]``, the gate applied before the up-projection (one einsum for all experts);
        ``mask [B, L]`` as in ``hidden``."""
        h = self.hidden(x, mask) * gates.permute(0, 2, 1).unsqueeze(-1)  # [B, N, L, r]
        return torch.einsum("bnlr,nrd->bld", h, self.up_weight) + gates @ self.up_bias


class DenseMoA(torch.nn.Module):
    """Dense mixture: ``sum_n softmax(W x + b)_n * expert_n(x)``, ``[B, T, D]`` -> ``[B, T, D]``.

    Arguments are those of ``StackedAdapters``; the router is ``nn.Linear(D, N)``.
    """

    def __init__(self, hidden_size, num_adapters=7, reduction_rate=128, adapter_block="bottleneck",
                 init="identity"):
        super().__init__()
        self.router = torch.nn.Linear(int(hidden_size), int(num_adapters))
        if init == "reference":
            torch.nn.init.trunc_normal_(self.router.weight, std=0.02)
            torch.nn.init.zeros_(self.router.bias)
        self.experts = StackedAdapters(num_adapters, hidden_size, reduction_rate, adapter_block, init)

    def router_weights(self, x):
        """``[B, T, D]`` -> ``[B, T, N]``, softmax over the experts (in fp32, also under bf16
        autocast; returned in the dtype of ``x``)."""
        return torch.softmax(self.router(x).float(), dim=-1).to(x.dtype)

    def forward(self, x, mask=None):
        """``x [B, T, D]`` (+ ``mask [B, T]``, for Convpass experts) -> ``[B, T, D]``."""
        return self.experts.mix(x, self.router_weights(x), mask)


def l2_normalize(x, dim, eps=1e-6):
    """``x / (||x|| + eps)`` along ``dim``."""
    return x / (x.norm(dim=dim, keepdim=True) + eps)


class SoftMoA(torch.nn.Module):
    """Soft mixture of adapters, ``[B, M, D]`` -> ``[B, M, D]`` (names of the Soft MoE paper).

    Arguments
    ---------
    hidden_size : int
        D.
    num_adapters : int
        N experts.
    num_slots : int
        p slots per expert.
    normalize : bool
        l2-normalise tokens and slot embeddings (over D) in the logits, times a learned scale.
    reduction_rate, adapter_block, init
        As ``StackedAdapters``.
    """

    def __init__(self, hidden_size, num_adapters=7, num_slots=1, normalize=False, reduction_rate=128,
                 adapter_block="bottleneck", init="identity"):
        super().__init__()
        check_choice("normalize", normalize, (True, False))
        if int(num_slots) < 1:
            raise ValueError(f"num_slots must be a positive integer, got {num_slots}.")
        self.phi = torch.nn.Parameter(torch.empty(int(hidden_size), int(num_adapters), int(num_slots)))
        torch.nn.init.xavier_normal_(self.phi)
        self.normalize = normalize
        if normalize:
            self.scale = torch.nn.Parameter(torch.ones(()))
        self.experts = StackedAdapters(num_adapters, hidden_size, reduction_rate, adapter_block, init)

    def routing_weights(self, x, mask=None):
        """``(dispatch, combine)``, both ``[B, M, N, p]``: dispatch sums to 1 over the M tokens of
        each slot, combine over the N*p slots of each token. With ``mask [B, M]`` (True = valid),
        padded tokens get zero dispatch weight and zero combine weight."""
        phi = self.phi
        if self.normalize:
            x, phi = l2_normalize(x, dim=-1), self.scale * l2_normalize(phi, dim=0)
        logits = torch.einsum("bmd,dnp->bmnp", x, phi)
        valid = None if mask is None else mask[:, :, None, None]
        if valid is not None:  # the smallest finite logit: exp underflows to exactly 0
            logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        # Softmax statistics in fp32 (bf16 autocast gives bf16 logits; M ~ 1,200 tokens per
        # dispatch sum), weights returned in the dtype of x.
        logits = logits.float()
        dispatch = torch.softmax(logits, dim=1).to(x.dtype)
        combine = torch.softmax(logits.flatten(2), dim=-1).view_as(logits).to(x.dtype)
        if valid is not None:
            combine = combine * valid.to(combine.dtype)
        return dispatch, combine

    def forward(self, x, mask=None):
        """``x [B, M, D]`` (+ ``mask [B, M]``: padded tokens neither feed the slots nor receive
        their outputs) -> ``[B, M, D]``."""
        dispatch, combine = self.routing_weights(x, mask)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)  # slot inputs [B, N, p, D]
        outputs = self.experts(slots)  # expert n on its p slots: [B, N, p, D]
        return torch.einsum("bnpd,bmnp->bmd", outputs, combine)


class MixtureOfAdapters(PETLModule):
    """A Dense- or Soft-MoA in parallel with a frozen sublayer: ``f(x) + MoA(x)``.

    Arguments
    ---------
    module : torch.nn.Module
        The sublayer (``attention`` or ``ffn`` point), kept as ``pretrained_module``.
    hidden_size : int
        D (given by ``AdaptedBackbone``).
    kind : str
        ``dense`` | ``soft``.
    num_adapters, reduction_rate, adapter_block, init
        As ``StackedAdapters``.
    num_slots, normalize
        Soft-MoA only.
    """

    def __init__(self, module, hidden_size, kind="soft", num_adapters=7, reduction_rate=128,
                 adapter_block="bottleneck", num_slots=1, normalize=False, init="identity"):
        super().__init__()
        check_choice("kind", kind, MOA_KINDS)
        if int(num_adapters) < 1:
            raise ValueError(f"num_adapters must be a positive integer, got {num_adapters}.")
        self.pretrained_module = module
        if kind == "dense":
            self.moa = DenseMoA(hidden_size, num_adapters, reduction_rate, adapter_block, init)
        else:
            self.moa = SoftMoA(hidden_size, num_adapters, num_slots, normalize, reduction_rate,
                               adapter_block, init)
        self.kind, self.init = kind, init

    def start_warnings(self):
        """``init=reference`` starts the experts away from zero (see ``PETLModule``)."""
        return [reference_init_warning(f"{self.kind.capitalize()}-MoA")] if self.init == "reference" else []

    def forward(self, *args, **kwargs):
        """``x [B, T, D]`` (+ the sublayer's other arguments; ``host_input``) -> ``f(x) + MoA(x)``,
        padded tokens (``current_token_mask``) kept out of the routing and the convolutions."""
        x, args, kwargs = host_input(args, kwargs)
        mask = current_token_mask(x)
        out = self.pretrained_module(x, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.moa(x, mask), *out[1:])
        return out + self.moa(x, mask)


@dataclasses.dataclass
class MoAConfig(MethodConfig):
    """The options both mixtures share (``DenseMoAConfig``, ``SoftMoAConfig``)."""

    kind = None  # dense | soft

    num_adapters: int = option(7, "N experts per location", minimum=1)
    adapter_block: str = option("bottleneck", "the experts' block", choices=EXPERT_BLOCKS)
    reduction_rate: float = reduction_rate_option(128)
    adapter_type: str = option("Pfeiffer", "Pfeiffer: one location; Houlsby: MHSA and FFN",
                               choices=ADAPTER_TYPES)
    location: str = option("MHSA", "Pfeiffer's location", choices=LOCATIONS)
    init: str = init_option()

    def moa_options(self):
        """The keyword options of ``MixtureOfAdapters`` besides ``kind``."""
        return {"num_adapters": self.num_adapters, "adapter_block": self.adapter_block,
                "reduction_rate": self.reduction_rate, "init": self.init}

    def build(self, backbone):
        return adapted(backbone, MixtureOfAdapters, adapter_points(self.adapter_type, self.location),
                       adapter_trainable(self.adapter_type, self.location), kind=self.kind,
                       **self.moa_options())


@register_method
@dataclasses.dataclass
class DenseMoAConfig(MoAConfig):
    """Dense-MoA: N adapters and a softmax token router per location, in parallel with the sublayer;
    the LayerNorm before it (pre-LN backbones) and the final LayerNorm train too."""

    name = "dense_moa"
    kind = "dense"
    summary = "N adapters + a softmax token router per location + the LayerNorm before it in pre-LN backbones"


@register_method
@dataclasses.dataclass
class SoftMoAConfig(MoAConfig):
    """Soft-MoA: N adapters as the experts of a Soft MoE (``num_slots`` slots each) per location, in
    parallel with the sublayer; the LayerNorm before it (pre-LN backbones) and the final LayerNorm
    train too."""

    name = "soft_moa"
    kind = "soft"
    summary = ("N adapters + slot embeddings Φ (Soft MoE) per location + the LayerNorm before it in "
               "pre-LN backbones")

    num_slots: int = option(1, "p slots per expert", minimum=1)
    normalize: bool = option(False, "l2-normalise tokens and slot embeddings in the logits, with a "
                             "learned scale")

    def moa_options(self):
        return dict(super().moa_options(), num_slots=self.num_slots, normalize=self.normalize)
