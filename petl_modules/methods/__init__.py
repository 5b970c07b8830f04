"""The PETL methods: one config class per method (``config.MethodConfig``, the registry ``METHODS``)
and the modules it inserts.

- ``adapted.py``: ``AdaptedBackbone`` (attaches PETL modules at a lobe's insertion points, decides
  what trains);
- ``config.py``: ``MethodConfig``, ``register_method``, ``method_config``;
- ``selective.py``: linear probing, BitFit, full fine-tuning (only what trains);
- ``lora.py`` (LoRA on any projection), ``dora.py``, ``ia3.py``, ``vera.py``, ``layer_sum.py``
  (the SUPERB weighted layer sum), ``adapters.py``, ``prompt.py`` (prompt and prefix tuning),
  ``moa.py`` (Dense- and Soft-MoA): a module and its config each (every module here is imported,
  so its configs register);
- ``classifier.py``: the head (pooling + linear layer).
"""

import importlib
import pkgutil

from petl_modules.methods.config import METHODS, MethodConfig, method_class, method_config, register_method

# Every module of this folder is imported, so that each registers its methods' configs: a new
# method file needs no line here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "MethodConfig", "method_class", "method_config", "register_method"]
