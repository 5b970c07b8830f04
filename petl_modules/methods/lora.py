"""LoRA (Hu et al., 2022): a trainable low-rank update of frozen projections.

``W x + b`` becomes ``(W + s B A) x + b`` with ``A [r, D_in]``, ``B [D_out, r]``,
``r = round(hidden / reduction_rate)`` and ``s = lora_alpha / reduction_rate`` (the reference's
rank and scaling; the paper's setting RR 128, alpha 8 gives r = 6 on AST-base). Targets are among
the ``q``, ``k``, ``v``, ``o`` (attention) and ``ffn_in``, ``ffn_out`` (the FFN's two projections)
insertion points (``lora_targets``; the reference spells the attention ones Wq, Wk, Wv, Wo;
default the papers' Wq,Wv).

``ProjectionUpdate`` is what LoRA shares with the other methods that change a frozen projection
(DoRA, (IA)3, VeRA): it works whether the host model calls the projection (AST, wav2vec2, HuBERT)
or reads its ``weight`` and ``bias`` (WavLM hands them to ``F.multi_head_attention_forward``):
both give the merged weight. After training, ``merge_lora(model)`` folds every such update into
plain ``nn.Linear`` layers for zero-overhead inference.

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
from petl_modules.methods.adapter_blocks import (
    INITS,
    bottleneck_width,
    check_choice,
    reference_init_warning,
)
from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import OptionError, option

# The projections a method may change: the insertion points of every lobe, and their spellings on
# the command line (the reference's Wq, Wk, Wv, Wo for the attention's).
LORA_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")
TARGET_SPELLINGS = "Wq, Wk, Wv, Wo, ffn_in, ffn_out"


class ProjectionUpdate(PETLModule):
    """Base of the modules that change one frozen ``nn.Linear`` (``pretrained_module``) and can be
    folded into it: LoRA, DoRA, (IA)3, VeRA. A subclass defines ``forward`` and either
    ``delta_weight`` (the merged ``weight`` is then ``W + delta_weight()``, the ``bias`` the frozen
    one) or its own ``weight`` and ``bias`` (the merged ones, for hosts that read weights instead
    of calling the module).

    ``reads_frozen_output``: ``forward`` calls the frozen projection once on its own input and
    changes its output (several tasks on one backbone then share that call); False when it
    changes the projection's input ((IA)3 on ``ffn_out``).
    """

    reads_frozen_output = True

    @staticmethod
    def check_linear(module, method, option):
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(
                f"{method} wraps nn.Linear projections, got {type(module).__name__}: check the "
                f"insertion points ({option} must be among {TARGET_SPELLINGS})."
            )

    @property
    def weight(self):
        """The merged weight ``W + delta_weight()``."""
        return self.pretrained_module.weight + self.delta_weight()

    @property
    def bias(self):
        return self.pretrained_module.bias

    @property
    def in_features(self):
        return self.pretrained_module.in_features

    @property
    def out_features(self):
        return self.pretrained_module.out_features

    def merge(self):
        """A plain ``nn.Linear`` holding the merged ``weight`` and ``bias`` (frozen like the
        pretrained one)."""
        source = self.pretrained_module
        merged = torch.nn.Linear(source.in_features, source.out_features, bias=source.bias is not None,
                                 device=source.weight.device, dtype=source.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.weight)
            if source.bias is not None:
                merged.bias.copy_(self.bias)
        merged.requires_grad_(source.weight.requires_grad)
        return merged


class LoRA(ProjectionUpdate):
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
        self.check_linear(module, type(self).__name__, "lora_targets")
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

    def delta_weight(self):
        """The update ``s B A`` ``[D_out, D_in]``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        """``[..., D_in]`` -> ``[..., D_out]``: ``W x + b + s B (A x)`` (never forms ``B A``)."""
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return self.pretrained_module(x) + self.scaling * update


def merge_lora(model):
    """Replaces, in place, every projection update of ``model`` (``ProjectionUpdate``: LoRA, DoRA,
    (IA)3, VeRA) by its merged ``nn.Linear``.

    Returns
    -------
    list of str
        Names of the merged modules.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, ProjectionUpdate)]
    for name in names:
        replace_module(model, name, model.get_submodule(name).merge())
    return names


def lora_points(lora_targets, option="lora_targets"):
    """Insertion points of ``lora_targets``: a list or a comma-separated string of q, k, v, o,
    ffn_in, ffn_out (the reference's Wq, Wk, Wv, Wo for the attention's), in that order.

    Example
    -------
    >>> lora_points("Wq,Wv")
    ['q', 'v']
    >>> lora_points("ffn_out,Wq")
    ['q', 'ffn_out']
    """
    if isinstance(lora_targets, str):
        lora_targets = lora_targets.split(",")
    points = set()
    for target in lora_targets or []:
        point = str(target).strip().lower()
        point = point[1:] if len(point) == 2 and point[0] == "w" else point
        if point not in LORA_TARGETS:
            raise ValueError(
                f"{option}: unknown target '{target}'. Use any of {TARGET_SPELLINGS} "
                f"(comma-separated), e.g. --{option}=Wq,Wv."
            )
        points.add(point)
    if not points:
        raise ValueError(f"{option} is empty: name at least one of {TARGET_SPELLINGS}.")
    return [p for p in LORA_TARGETS if p in points]


def target_spelling(points):
    """``lora_targets`` text of insertion ``points`` (``['q', 'ffn_in']`` -> ``Wq,ffn_in``)."""
    return ",".join(f"W{p}" if len(p) == 1 else p for p in LORA_TARGETS if p in points)


def checked_targets(value, option):
    """``lora_points(value, option)``, a wrong target an ``OptionError`` (a config's ``check``)."""
    try:
        return lora_points(value, option)
    except ValueError as err:
        raise OptionError(str(err)) from None


@register_method
@dataclasses.dataclass
class LoraConfig(MethodConfig):
    """LoRA on the projections ``lora_targets`` (attention, FFN) of every layer; the final
    LayerNorm trains too."""

    name = "lora"
    summary = "low-rank updates s·B·A of the attention (and FFN) projections"
    update = LoRA  # the module wrapping each projection (DoRA's config changes only this and init)

    lora_targets: str = option("Wq,Wv", f"projections adapted: any of {TARGET_SPELLINGS}, comma-separated")
    reduction_rate: float = option(128, "rank r = round(hidden / reduction_rate)", kind=float,
                                   minimum=0, exclusive_minimum=True)
    lora_alpha: float = option(8, "scaling s = lora_alpha / reduction_rate", kind=float)
    init: str = option("identity", "identity: A random, B zero; reference: A, B ~ N(0, 0.02), as "
                       "the reference runs", choices=INITS)

    def check(self):
        checked_targets(self.lora_targets, "lora_targets")

    def build(self, backbone):
        return adapted(backbone, self.update, lora_points(self.lora_targets), ["final_norm"],
                       reduction_rate=self.reduction_rate, lora_alpha=self.lora_alpha, init=self.init)
