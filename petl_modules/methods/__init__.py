"""The PETL methods: one config class per method (``config.MethodConfig``, the registry ``METHODS``)
and the modules it inserts.

- ``adapted.py``: ``AdaptedBackbone`` (attaches PETL modules at a lobe's insertion points, decides
  what trains);
- ``config.py``: ``MethodConfig``, ``register_method``, ``method_config``;
- ``selective.py``: linear probing, BitFit, full fine-tuning (only what trains);
- ``lora.py``, ``adapters.py``, ``prompt.py`` (prompt and prefix tuning), ``moa.py`` (Dense- and
  Soft-MoA): a module and its config each;
- ``classifier.py``: the head (pooling + linear layer).
"""

from petl_modules.methods import adapters, lora, moa, prompt, selective  # noqa: F401  (each registers its methods)
from petl_modules.methods.config import METHODS, MethodConfig, method_class, method_config, register_method

__all__ = ["METHODS", "MethodConfig", "method_class", "method_config", "register_method"]
