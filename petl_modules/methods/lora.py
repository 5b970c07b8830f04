"""LoRA (Hu et al., 2022): a trainable low-rank update of frozen attention projections.

``W x + b`` becomes ``(W + s B A) x + b`` with ``A [r, D_in]``, ``B [D_out, r]``,
``r = round(hidden / reduction_rate)`` and ``s = lora_alpha / reduction_rate`` (the reference's
rank and scaling; the paper's setting RR 128, alpha 8 gives r = 6 on AST-base). Targets are among
the ``q``, ``k``, ``v``, ``o`` insertion points (``lora_targets``; the reference spells them Wq, Wk,
Wv, Wo).

``LoRA`` works whether the host model calls the projection (AST, wav2vec2, HuBERT) or reads its
``weight`` and ``bias`` (WavLM hands them to ``F.multi_head_attention_forward``): both give the
merged ``W + s B A``. After training, ``merge_lora(model)`` folds every update into plain
``nn.Linear`` layers for zero-overhead inference.

Initialisation (``init``): ``identity`` (default): A random (Kaiming uniform, as PEFT), B zero:
the model starts as the pretrained one and learns from the first step. ``reference``: A and B
N(0, 0.02), the effective start of the reference runs (transformers re-initialised them).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from speechbrain.nnet.adapters import replace_module

from petl_modules.contract import PETLModule
from petl_modules.methods.adapters import (
    INITS,
    bottleneck_width,
    check_choice,
    reference_init_warning,
)
from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import OptionError, option

LORA_TARGETS = ("q", "k", "v", "o")


class LoRA(PETLModule):
    """A frozen ``nn.Linear`` plus a scaled low-rank update ``s B A``.

    Arguments
    ---------
    module : torch.nn.Linear
        The pretrained projection, kept as ``pretrained_module`` (frozen).
    hidden_size : int, optional
        The backbone's hidden size, which sets the rank (default: the projection's input size).
    reduction_rate : float
        r = round(hidden_size / reduction_rate).
    lora_alpha : float
        s = lora_alpha / reduction_rate.
    init : str
        ``identity`` | ``reference``.

    Example
    -------
    >>> lora = LoRA(torch.nn.Linear(768, 768), reduction_rate=128, lora_alpha=8)
    >>> lora.lora_A.shape, lora.lora_B.shape  # rank 768 / 128 = 6
    (torch.Size([6, 768]), torch.Size([768, 6]))
    >>> torch.equal(lora.weight, lora.pretrained_module.weight)
    True
    """

    def __init__(self, module, hidden_size=None, reduction_rate=128, lora_alpha=8, init="identity"):
        super().__init__()
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(
                f"LoRA wraps nn.Linear projections, got {type(module).__name__}: check the "
                "insertion points (lora_targets must be among q, k, v, o)."
            )
        check_choice("init", init, INITS)
        self.pretrained_module = module
        rank = bottleneck_width(hidden_size or module.in_features, reduction_rate)
        self.scaling = float(lora_alpha) / float(reduction_rate)
        weight = module.weight
        self.lora_A = torch.nn.Parameter(torch.empty(rank, module.in_features, dtype=weight.dtype))
        self.lora_B = torch.nn.Parameter(torch.empty(module.out_features, rank, dtype=weight.dtype))
        if init == "reference":
            torch.nn.init.trunc_normal_(self.lora_A, std=0.02)
            torch.nn.init.trunc_normal_(self.lora_B, std=0.02)
        else:
            torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            torch.nn.init.zeros_(self.lora_B)
        self.init = init

    def start_warnings(self):
        """``init=reference`` starts ``B A`` away from zero (see ``PETLModule``)."""
        return [reference_init_warning("LoRA")] if self.init == "reference" else []

    def extra_repr(self):
        return f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"

    @property
    def in_features(self):
        return self.pretrained_module.in_features

    @property
    def out_features(self):
        return self.pretrained_module.out_features

    def delta_weight(self):
        """The update ``s B A`` ``[D_out, D_in]``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @property
    def weight(self):
        """The merged weight ``W + s B A`` (for hosts that read weights instead of calling)."""
        return self.pretrained_module.weight + self.delta_weight()

    @property
    def bias(self):
        return self.pretrained_module.bias

    def forward(self, x):
        """``[..., D_in]`` -> ``[..., D_out]``: ``W x + b + s B (A x)`` (never forms ``B A``)."""
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return self.pretrained_module(x) + self.scaling * update

    def merge(self):
        """A plain ``nn.Linear`` holding ``W + s B A`` (frozen like the pretrained one)."""
        source = self.pretrained_module
        merged = torch.nn.Linear(source.in_features, source.out_features, bias=source.bias is not None,
                                 device=source.weight.device, dtype=source.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.weight)
            if source.bias is not None:
                merged.bias.copy_(source.bias)
        merged.requires_grad_(source.weight.requires_grad)
        return merged


def merge_lora(model):
    """Replaces, in place, every ``LoRA`` module of ``model`` by its merged ``nn.Linear``.

    Returns
    -------
    list of str
        Names of the merged modules.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, LoRA)]
    for name in names:
        replace_module(model, name, model.get_submodule(name).merge())
    return names


def lora_points(lora_targets):
    """Insertion points of ``lora_targets``: a list or a comma-separated string of q, k, v, o
    (or the reference's Wq, Wk, Wv, Wo).

    Example
    -------
    >>> lora_points("Wq,Wv")
    ['q', 'v']
    """
    if isinstance(lora_targets, str):
        lora_targets = lora_targets.split(",")
    points = []
    for target in lora_targets or []:
        point = str(target).strip().lower()
        point = point[1:] if len(point) == 2 and point[0] == "w" else point
        if point not in LORA_TARGETS:
            raise ValueError(
                f"lora_targets: unknown target '{target}'. Use any of Wq, Wk, Wv, Wo (or q, k, v, "
                "o), e.g. --lora_targets=Wq,Wv."
            )
        if point not in points:
            points.append(point)
    if not points:
        raise ValueError("lora_targets is empty: name at least one of Wq, Wk, Wv, Wo.")
    return points


@register_method
@dataclasses.dataclass
class LoraConfig(MethodConfig):
    """LoRA on the attention projections ``lora_targets`` of every layer; the final LayerNorm
    trains too."""

    name = "lora"
    summary = "low-rank updates s·B·A of the attention projections"

    lora_targets: str = option("Wq,Wv", "projections adapted: any of Wq, Wk, Wv, Wo, comma-separated")
    reduction_rate: float = option(128, "rank r = round(hidden / reduction_rate)", kind=float,
                                   minimum=0, exclusive_minimum=True)
    lora_alpha: float = option(8, "scaling s = lora_alpha / reduction_rate", kind=float)
    init: str = option("identity", "identity: A random, B zero; reference: A, B ~ N(0, 0.02), as "
                       "the reference runs", choices=INITS)

    def check(self):
        try:
            lora_points(self.lora_targets)
        except ValueError as err:
            raise OptionError(str(err)) from None

    def build(self, backbone):
        return adapted(backbone, LoRA, lora_points(self.lora_targets), ["final_norm"],
                       reduction_rate=self.reduction_rate, lora_alpha=self.lora_alpha, init=self.init)
