"""The weighted layer sum of the SUPERB benchmark (Yang et al., 2021): the frozen backbone, a learned
softmax-weighted sum of its layers' hidden states, then pooling and the head.

With ``L`` transformer layers the states are ``h_0`` (the token stream entering the first layer:
the input embedding), ``h_1 ... h_{L-1}`` (the outputs of the first ``L - 1`` layers) and ``h_L``
(the backbone's output: the last layer's, after the final LayerNorm where the backbone has one).
The head reads ``sum_l softmax(w)_l h_l`` with ``w [L + 1]`` trained, initialised to zeros (the
plain average, as SUPERB; not the pretrained output). Nothing else trains: the final LayerNorm
stays frozen.

The states are taken with forward hooks at the lobe's ``layer`` insertion points (``layer_states``:
the input of the first layer, each layer's output), so every lobe works as it is. The backbone is
frozen and runs without building a graph; the sum and the pooling are linear, so the pooled state
of every layer of a clip can be cached once and the epochs train the weights and the head alone
(``petl_modules/training/cache.py``, ``cache_backbone_outputs``), as for linear probing.
"""

import contextlib
import dataclasses

import torch

from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.config import MethodConfig, register_method


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


@contextlib.contextmanager
def layer_states(lobe):
    """Within the block, a run of ``lobe`` appends to the yielded list the input of its first
    layer and the output of every layer (``[B, T, D]`` each), in order (hooks at its ``layer``
    insertion points, removed on exit)."""
    states = []
    layers = [module for _, module in lobe.modules_at("layer")]
    handles = [layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: states.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda _m, _a, out: states.append(_first_tensor(out)))
                for layer in layers]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def stacked_states(lobe, inputs, lengths=None):
    """``(states [L + 1, B, T, D], mask)``: ``h_0 ... h_{L-1}`` of ``layer_states`` and the lobe's
    output as ``h_L`` (see the module docstring)."""
    with layer_states(lobe) as states:
        hidden, mask = lobe(inputs, lengths)
    layers = len(lobe.modules_at("layer"))
    if len(states) != layers + 1:  # e.g. a layer skipped by LayerDrop, which frozen layers never do
        raise RuntimeError(f"The {lobe.family} backbone ran {len(states) - 1} of its {layers} layers; "
                           "the layer sum needs every layer's output.")
    return torch.stack(states[:-1] + [hidden]), mask


def weighted_sum(weights, states):
    """``sum_l softmax(weights)_l states[l]``: ``weights [L + 1]``, ``states [L + 1, ...]``."""
    return torch.tensordot(torch.softmax(weights, dim=0).to(states.dtype), states, dims=1)


class WeightedLayerSum(AdaptedBackbone):
    """A frozen backbone lobe whose output is the softmax-weighted sum of its layers' states.

    Arguments
    ---------
    backbone : petl_modules.backbones.Backbone
        The lobe (frozen, nothing inserted).

    ``layer_weights [L + 1]`` trains (zeros at the start: the average of the layers).
    """

    def __init__(self, backbone):
        super().__init__(backbone, trainable=[])
        self.layer_weights = torch.nn.Parameter(torch.zeros(len(backbone.modules_at("layer")) + 1))

    def states(self, inputs, lengths=None):
        """``(states [L + 1, B, T, D], mask)`` of the frozen backbone (``stacked_states``)."""
        return stacked_states(self.adapted_model, inputs, lengths)

    def forward(self, inputs, lengths=None):
        """``inputs`` -> ``(sum_l softmax(w)_l h_l [B, T, D], mask)``."""
        states, mask = self.states(inputs, lengths)
        return weighted_sum(self.layer_weights, states), mask


@register_method
@dataclasses.dataclass
class LayerSumConfig(MethodConfig):
    """The SUPERB protocol: the frozen backbone and a learned softmax-weighted sum of every
    layer's hidden states (the input embedding included); pooling and the head train on it."""

    name = "layer_sum"
    citation = """\
@inproceedings{yang2021superb,
  title     = {SUPERB: Speech Processing Universal PERformance Benchmark},
  author    = {Yang, Shu-wen and others},
  booktitle = {Interspeech 2021},
  year      = {2021},
  eprint    = {2105.01051},
  archivePrefix = {arXiv}
}"""
    summary = "a learned softmax-weighted sum of every layer's hidden states (SUPERB); the backbone frozen"

    def build(self, backbone):
        return WeightedLayerSum(backbone)
