"""VeRA (Kopiczko et al., 2024, "Vector-based Random Matrix Adaptation"): one pair of frozen random
low-rank matrices shared by every adapted projection, and two trained scaling vectors per
projection.

A frozen projection ``f(x) = W x + b`` (``W [D_out, D_in]``) becomes
``f(x) + lambda_b * (B (lambda_d * (A x)))`` where ``A [r, D_in]`` and ``B [D_out, r]`` are slices
of the shared ``vera_A [r, max D_in]`` and ``vera_B [max D_out, r]`` (the largest sizes among the
targets, as PEFT's ``VeraConfig``), drawn once (Kaiming uniform, from ``projection_prng_key``) and
never trained. ``lambda_d [r]`` starts at ``d_initial`` and ``lambda_b [D_out]`` at zero, so the
model starts as the pretrained one; only they train: ``r + D_out`` numbers per projection.

The shared matrices are buffers of the first VeRA module (``VeraProjections``, registered there
once; the others hold a reference): a model folder stores them once, beside the trained vectors,
as PEFT's ``save_projection=True``, so loading a model, and the PEFT export, never depend on
drawing the same random numbers again. ``merge()`` folds the update into the projection.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.methods.lora import TARGET_SPELLINGS, ProjectionUpdate, checked_targets, lora_points
from petl_modules.options import option


class VeraProjections(torch.nn.Module):
    """The shared frozen matrices ``vera_A [r, in_features]`` and ``vera_B [out_features, r]``
    (buffers), drawn Kaiming-uniform (fan in, gain sqrt(2)) from the seed ``seed``.

    Example
    -------
    >>> shared = VeraProjections(rank=4, in_features=8, out_features=16, seed=0)
    >>> shared.vera_A.shape, shared.vera_B.shape
    (torch.Size([4, 8]), torch.Size([16, 4]))
    """

    def __init__(self, rank, in_features, out_features, seed=0):
        super().__init__()
        self.seed = int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("vera_A", self._kaiming_uniform((int(rank), int(in_features)), generator))
        self.register_buffer("vera_B", self._kaiming_uniform((int(out_features), int(rank)), generator))
        self.owned = False  # registered in a VeRA module yet (then the others only refer to it)

    @staticmethod
    def _kaiming_uniform(shape, generator):
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    @property
    def rank(self):
        return self.vera_A.shape[0]

    def extra_repr(self):
        return f"rank={self.rank}, in_features={self.vera_A.shape[1]}, out_features={self.vera_B.shape[0]}"


class VeRA(ProjectionUpdate):
    """A frozen ``nn.Linear`` plus ``lambda_b * (B (lambda_d * (A x)))`` with the shared frozen
    ``A``, ``B`` (``projections``, sliced to the projection's sizes) and trained ``lambda_d [r]``,
    ``lambda_b [D_out]``.

    Arguments
    ---------
    module : torch.nn.Linear
        The pretrained projection, kept as ``pretrained_module`` (frozen).
    projections : VeraProjections
        The matrices shared by every VeRA module of the model.
    d_initial : float
        The start value of ``lambda_d`` (``lambda_b`` starts at zero).

    Example
    -------
    >>> shared = VeraProjections(rank=16, in_features=768, out_features=768)
    >>> vera = VeRA(torch.nn.Linear(768, 768), shared)
    >>> vera.lambda_d.numel() + vera.lambda_b.numel()  # r + D_out
    784
    """

    def __init__(self, module, projections, d_initial=0.1):
        super().__init__()
        self.check_linear(module, "VeRA", "vera_targets")
        if not isinstance(projections, VeraProjections):
            raise TypeError(f"projections must be the model's VeraProjections, got {type(projections).__name__}.")
        vera_a, vera_b = projections.vera_A, projections.vera_B
        if vera_a.shape[1] < module.in_features or vera_b.shape[0] < module.out_features:
            raise ValueError(
                f"The shared VeRA matrices ({list(vera_a.shape)}, {list(vera_b.shape)}) are smaller "
                f"than the projection {module.in_features} -> {module.out_features}: build them from "
                "the largest target (VeraConfig.build).")
        self.pretrained_module = module
        if projections.owned:
            self.__dict__["projections"] = projections  # stored once: in the first VeRA module
        else:
            self.projections = projections
            projections.owned = True
        dtype = module.weight.dtype
        self.lambda_d = torch.nn.Parameter(torch.full((projections.rank,), float(d_initial), dtype=dtype))
        self.lambda_b = torch.nn.Parameter(torch.zeros(module.out_features, dtype=dtype))

    def extra_repr(self):
        return f"rank={self.lambda_d.numel()}, shared={'here' if 'projections' in self._modules else 'elsewhere'}"

    def sliced(self):
        """``(A [r, D_in], B [D_out, r])``: the shared matrices cut to this projection."""
        return (self.projections.vera_A[:, : self.in_features],
                self.projections.vera_B[: self.out_features, :])

    def delta_weight(self):
        """The update ``diag(lambda_b) B diag(lambda_d) A`` ``[D_out, D_in]``."""
        vera_a, vera_b = self.sliced()
        return (self.lambda_b[:, None] * vera_b) @ (self.lambda_d[:, None] * vera_a)

    def forward(self, x):
        """``[..., D_in]`` -> ``[..., D_out]``: ``f(x) + lambda_b * (B (lambda_d * (A x)))``."""
        vera_a, vera_b = self.sliced()
        vera_a, vera_b = vera_a.to(x.dtype), vera_b.to(x.dtype)
        return self.pretrained_module(x) + self.lambda_b * F.linear(self.lambda_d * F.linear(x, vera_a), vera_b)


def shared_projections(backbone, points, rank, seed):
    """The ``VeraProjections`` of a model: sized by the largest input and output of the
    projections at ``points`` of ``backbone``."""
    modules = [m for point in points for _, m in backbone.modules_at(point)]
    if not modules:
        raise ValueError(f"No projection of the {backbone.family} backbone at {points}.")
    return VeraProjections(rank, max(m.in_features for m in modules),
                           max(m.out_features for m in modules), seed)


@register_method
@dataclasses.dataclass
class VeraConfig(MethodConfig):
    """VeRA on the projections ``vera_targets`` of every layer: shared frozen random matrices of
    rank ``rank``, trained vectors per projection; the final LayerNorm trains too."""

    name = "vera"
    citation = """\
@inproceedings{kopiczko2024vera,
  title     = {VeRA: Vector-based Random Matrix Adaptation},
  author    = {Kopiczko, Dawid J. and Blankevoort, Tijmen and Asano, Yuki M.},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024},
  eprint    = {2310.11454},
  archivePrefix = {arXiv}
}"""
    summary = "shared frozen random low-rank matrices, trained scaling vectors per projection"

    vera_targets: str = option("Wq,Wv", f"projections adapted: any of {TARGET_SPELLINGS}, comma-separated")
    rank: int = option(256, "rank r of the shared random matrices (each projection trains r + its "
                       "output size)", minimum=1)
    d_initial: float = option(0.1, "start value of lambda_d (lambda_b starts at 0: the pretrained model)",
                              kind=float)
    projection_prng_key: int = option(0, "seed of the shared random matrices (they are stored in the "
                                      "model folder)", minimum=0)

    def check(self):
        checked_targets(self.vera_targets, "vera_targets")

    def build(self, backbone):
        points = lora_points(self.vera_targets, "vera_targets")
        projections = shared_projections(backbone, points, self.rank, self.projection_prng_key)
        return adapted(backbone, VeRA, points, ["final_norm"], projections=projections,
                       d_initial=self.d_initial)
