"""Speed settings of a model, for training and inference alike: bf16 autocast where the device
computes bf16 natively (else fp32, with a warning), and ``torch.compile`` with an eager fallback
(a module whose compiled forward fails runs eagerly from then on, with a warning).

Compiled start-up: torch's inductor keeps what it compiles (its FX graph cache and AOTAutograd
cache, on by default) in ``$TORCHINDUCTOR_CACHE_DIR``; where that is not set, ``compile_cache_dir``
points it at ``$PETL_AST_HOME/inductor`` (default ``~/.cache/petl-ast/inductor``) rather than
torch's ``/tmp/torchinductor_<user>``, which does not outlive a reboot; a second compiled run of
the same model on the same machine then reuses the compiled graphs instead of compiling again.
"""

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def bf16_supported(device="cpu"):
    """Whether ``device`` computes bf16 natively: on CPU, AVX512-BF16 or AMX (x86) or oneDNN's
    bf16 support elsewhere; on CUDA, ``torch.cuda.is_bf16_supported()``."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return True  # other accelerators: let autocast decide
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None for check in checks):
        if any(check is not None and check() for check in checks):
            return True
        import platform

        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            return False  # x86 without AVX512-BF16/AMX: bf16 would be emulated (slower than fp32)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision, device="cpu", option="--precision"):
    """``precision`` (``fp32`` | ``bf16`` | ``fp16``, or None = fp32) as it can run on ``device``:
    bf16 where the device lacks native bf16 becomes fp32, with a warning saying so."""
    precision = precision or "fp32"
    if precision == "bf16" and not bf16_supported(device):
        logger.warning(
            f"{option}=bf16: this {torch.device(device).type.upper()} has no native bf16 support "
            f"(x86 CPUs need AVX512-BF16 or AMX; capability here: "
            f"{torch.backends.cpu.get_cpu_capability()}): running in fp32 instead."
        )
        return "fp32"
    return precision


def autocast_context(device, precision):
    """``torch.autocast(device type, bf16/fp16)`` for ``precision``, or a no-op for fp32."""
    from speechbrain.utils.autocast import AMPConfig, TorchAutocast

    return TorchAutocast(device_type=torch.device(device).type, dtype=AMPConfig.from_name(precision).dtype)


class EagerFallback(torch.nn.Module):
    """A ``torch.compile``-d module that runs its eager original instead once compilation fails.

    The first call that raises in the compiled module is rerun eagerly: if the eager run succeeds
    the failure was the compiler's, so a warning names the module and every later call is eager;
    if it raises too, the error is the input's and propagates (the compiled module stays in use).
    Attributes not found here are the original module's, as on ``OptimizedModule``.
    """

    def __init__(self, compiled, eager, name):
        super().__init__()
        self.compiled = compiled
        self.name = name
        self.failed = False
        self.__dict__["_eager"] = eager  # the same parameters, reached through ``compiled``

    def forward(self, *args, **kwargs):
        if self.failed:
            return self._eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (any compiler failure)
            out = self._eager(*args, **kwargs)
            self.failed = True
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            logger.warning(f"torch.compile failed for module '{self.name}' "
                           f"({type(err).__name__}: {reason[:300]}); running it eagerly.")
            return out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_eager"], name)


def compile_cache_dir():
    """inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR``, set to ``$PETL_AST_HOME/inductor``
    for this process (and its children) when it is not set or holds torch's default (which
    importing ``torch._dynamo`` writes there)."""
    from petl_modules.model.bases import home

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):
        torch_default = None
    if given is None or os.path.abspath(given) == torch_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(home() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_with_fallback(module, name, **compile_kwargs):
    """``torch.compile(module)`` wrapped in ``EagerFallback``; the eager module itself (and a
    warning) where ``torch.compile`` refuses at once. Compiled graphs are cached across runs in
    ``compile_cache_dir()``."""
    compile_cache_dir()
    try:
        compiled = torch.compile(module, **compile_kwargs)
    except Exception as err:  # noqa: BLE001
        logger.warning(f"torch.compile refused module '{name}' ({type(err).__name__}: {err}); "
                       "running it eagerly.")
        return module
    return EagerFallback(compiled, module, name)
