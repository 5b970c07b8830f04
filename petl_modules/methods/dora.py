"""DoRA (Liu et al., 2024, "Weight-Decomposed Low-Rank Adaptation"): LoRA with the weight's
magnitude learned apart from its direction.

A frozen projection ``W x + b`` (``W [D_out, D_in]``) becomes ``m * (W + s B A) / ||W + s B A|| x + b``:
``B A`` is LoRA's update (``lora.LoRA``: same rank, scaling and initialisation), ``||.||`` the norm
of each output unit's row (the paper's column norm of ``W^T``) and ``m [D_out]`` a trained
magnitude per output unit, initialised to that norm: with ``B = 0`` the model starts as the
pretrained one (``init: identity``). As the paper suggests (its section 4.3) and PEFT does, the
norm is treated as a constant in the backward pass (no gradient flows through it).

The output is computed as PEFT's ``use_dora`` computes it, from the frozen projection's own
output: ``f(x) + (g - 1) (f(x) - b) + g s B A x`` with ``g = m / ||W + s B A||`` (``[D_out]``), so
an exported PEFT adapter gives the same numbers. ``merge()`` folds it into one ``nn.Linear``
(``g * (W + s B A)``, bias ``b``), as LoRA's.
"""

import dataclasses

import torch
import torch.nn.functional as F

from petl_modules.methods.adapter_blocks import INITS, reference_init_warning
from petl_modules.methods.config import register_method
from petl_modules.methods.lora import LoRA, LoraConfig
from petl_modules.options import option


class DoRA(LoRA):
    """A frozen ``nn.Linear`` with LoRA's low-rank update on its direction and a learned
    magnitude per output unit.

    Arguments are ``LoRA``'s (``module``, ``hidden_size``, ``reduction_rate``, ``lora_alpha``,
    ``init``); ``magnitude [D_out]`` starts at the row norms of ``W + s B A``.

    Example
    -------
    >>> dora = DoRA(torch.nn.Linear(768, 768), reduction_rate=128, lora_alpha=8)
    >>> dora.magnitude.shape  # one per output unit, besides LoRA's 6 x 768 + 768 x 6
    torch.Size([768])
    >>> x = torch.randn(2, 768)
    >>> torch.equal(dora(x), dora.pretrained_module(x))  # B = 0: the pretrained projection
    True
    """

    def __init__(self, module, hidden_size=None, reduction_rate=128, lora_alpha=8, init="identity"):
        super().__init__(module, hidden_size, reduction_rate, lora_alpha, init)
        with torch.no_grad():
            self.magnitude = torch.nn.Parameter(self.direction_norm().to(module.weight.dtype))

    def start_warnings(self):
        return [reference_init_warning("DoRA")] if self.init == "reference" else []

    def direction_norm(self):
        """``||W + s B A||`` per output unit ``[D_out]``, without gradient (a constant, as the
        paper suggests)."""
        with torch.no_grad():
            weight = self.pretrained_module.weight + self.scaling * (self.lora_B @ self.lora_A)
            return torch.linalg.norm(weight, dim=1).to(weight.dtype)

    def gain(self):
        """``g = m / ||W + s B A||`` ``[D_out]``: the magnitude over the direction's norm."""
        return self.magnitude / self.direction_norm()

    @property
    def weight(self):
        """The merged weight ``g * (W + s B A)`` (for hosts that read weights)."""
        return self.gain()[:, None] * (self.pretrained_module.weight + self.delta_weight())

    def forward(self, x):
        """``[..., D_in]`` -> ``[..., D_out]``: ``f(x) + (g - 1) (f(x) - b) + g s B A x``."""
        frozen = self.pretrained_module(x)
        gain = self.gain()
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        bias = self.pretrained_module.bias
        linear = frozen if bias is None else frozen - bias
        return frozen + ((gain - 1) * linear + gain * update * self.scaling)


@register_method
@dataclasses.dataclass
class DoraConfig(LoraConfig):
    """DoRA on the projections ``lora_targets`` of every layer: LoRA's options and build, with
    ``DoRA`` modules; the final LayerNorm trains too."""

    name = "dora"
    citation = """\
@inproceedings{liu2024dora,
  title     = {DoRA: Weight-Decomposed Low-Rank Adaptation},
  author    = {Liu, Shih-Yang and others},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024},
  eprint    = {2402.09353},
  archivePrefix = {arXiv}
}"""
    update = DoRA
    summary = "LoRA's update on the direction of the projections + a learned magnitude per output unit"

    init: str = option("identity", "identity: A random, B zero, magnitude = the norms (the pretrained "
                       "model); reference: A, B ~ N(0, 0.02)", choices=INITS)
