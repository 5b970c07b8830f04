"""(IA)3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): learned vectors that rescale the keys, the values and the FFN's
intermediate activations.

Each target projection ``f(x) = W x + b`` gets a trained vector ``l``, initialised to ones (the
model starts as the pretrained one):

- on the keys and values (``k``, ``v``; any of ``q``, ``o``, ``ffn_in`` too), the output is
  rescaled: ``l * f(x)`` (``l [D_out]``; the bias is rescaled with it, as PEFT's ``IA3Config``);
- on the FFN's output projection (``ffn_out``), its input, the intermediate activations, is
  rescaled: ``f(l * x)`` (``l [D_in]``; PEFT's ``feedforward_modules``).

Both fold into the projection (``merge()``): ``diag(l) W`` and ``l * b``, or ``W diag(l)``.
"""

import dataclasses

import torch

from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.methods.lora import TARGET_SPELLINGS, ProjectionUpdate, checked_targets, lora_points
from petl_modules.options import option

# The insertion point whose input (not output) is rescaled: the FFN's intermediate activations.
INPUT_SCALED = "ffn_out"


class IA3(ProjectionUpdate):
    """A frozen ``nn.Linear`` whose output (or, at ``ffn_out``, input) is rescaled by a trained
    vector ``ia3_l`` (ones at the start).

    Arguments
    ---------
    module : torch.nn.Linear
        The pretrained projection, kept as ``pretrained_module`` (frozen).
    point : str
        Its insertion point (given by ``AdaptedBackbone``): ``ffn_out`` rescales the input.

    Example
    -------
    >>> ia3 = IA3(torch.nn.Linear(3072, 768), point="ffn_out")
    >>> ia3.ia3_l.shape  # one per intermediate activation
    torch.Size([3072])
    >>> x = torch.randn(2, 3072)
    >>> torch.equal(ia3(x), ia3.pretrained_module(x))
    True
    """

    def __init__(self, module, point=None):
        super().__init__()
        self.check_linear(module, "(IA)3", "ia3_targets")
        self.pretrained_module = module
        self.scales_input = point == INPUT_SCALED
        size = module.in_features if self.scales_input else module.out_features
        self.ia3_l = torch.nn.Parameter(torch.ones(size, dtype=module.weight.dtype))

    @property
    def reads_frozen_output(self):
        return not self.scales_input

    def extra_repr(self):
        return f"scales={'input' if self.scales_input else 'output'}"

    @property
    def weight(self):
        """The merged weight: ``W diag(l)`` (input rescaled) or ``diag(l) W``."""
        weight = self.pretrained_module.weight
        return weight * self.ia3_l[None, :] if self.scales_input else weight * self.ia3_l[:, None]

    @property
    def bias(self):
        bias = self.pretrained_module.bias
        return bias if bias is None or self.scales_input else bias * self.ia3_l

    def forward(self, x):
        """``[..., D_in]`` -> ``[..., D_out]``: ``f(l * x)`` or ``l * f(x)``."""
        if self.scales_input:
            return self.pretrained_module(x * self.ia3_l)
        return self.pretrained_module(x) * self.ia3_l


@register_method
@dataclasses.dataclass
class IA3Config(MethodConfig):
    """(IA)3: learned vectors rescaling the keys, the values and the FFN's intermediate
    activations (``ia3_targets``) of every layer; the final LayerNorm trains too."""

    name = "ia3"
    citation = """\
@inproceedings{liu2022ia3,
  title     = {Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning},
  author    = {Liu, Haokun and others},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022},
  eprint    = {2205.05638},
  archivePrefix = {arXiv}
}"""
    summary = "learned vectors rescaling the keys, values and FFN intermediate activations"

    ia3_targets: str = option("Wk,Wv,ffn_out", f"projections rescaled: any of {TARGET_SPELLINGS} "
                              "(ffn_out: its input, the FFN's intermediate activations; the others: "
                              "their output)")

    def check(self):
        checked_targets(self.ia3_targets, "ia3_targets")

    def build(self, backbone):
        return adapted(backbone, IA3, lora_points(self.ia3_targets, "ia3_targets"), ["final_norm"])
