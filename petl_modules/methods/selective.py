"""Methods that insert nothing and only choose which backbone tensors train: linear probing, BitFit
and full fine-tuning (the ``trainable`` specs of ``AdaptedBackbone``, resolved by the lobe)."""

import dataclasses

from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import option


@register_method
@dataclasses.dataclass
class LinearConfig(MethodConfig):
    """Linear probing: the backbone is frozen; its final LayerNorm and the head train."""

    name = "linear"
    summary = "final LayerNorm + head"

    def build(self, backbone):
        return adapted(backbone, trainable=["final_norm"])


@register_method
@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    """BitFit: the biases of every Linear and LayerNorm of the transformer layers and the final
    LayerNorm's bias train (its weight stays frozen, as the reference)."""

    name = "bitfit"
    summary = "biases of every Linear and LayerNorm of the transformer + final LayerNorm bias"

    def build(self, backbone):
        return adapted(backbone, trainable=["biases"])


@register_method
@dataclasses.dataclass
class FullFTConfig(MethodConfig):
    """Full fine-tuning of the last ``unfrozen_layers`` transformer layers (``all``: every layer
    and the embedding stage above a CNN feature encoder) and the final LayerNorm."""

    name = "full_ft"
    summary = "the last unfrozen_layers transformer layers (all: the whole transformer)"

    unfrozen_layers: object = option("all", "transformer layers that train, from the top (all: every "
                                     "layer and the embeddings)", kind=(int, str), choices=("all",),
                                     minimum=0)

    def build(self, backbone):
        return adapted(backbone, trainable=[f"top_layers:{self.unfrozen_layers}", "final_norm"])
