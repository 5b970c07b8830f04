"""Loading a backbone checkpoint safely, and what identifies it: its ``config.json`` read as plain
JSON, the options every ``from_pretrained`` gets (an explicit attention implementation, safetensors
only; ``RefusedCheckpointError`` otherwise), the fingerprints of its weights, and the quiet,
random-state-preserving block a checkpoint is loaded in. The lobes (``petl_modules.backbones.base``)
call these; nothing here knows a family."""

import contextlib
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
import transformers


def read_config(source, **kwargs):
    """Loads the transformers config of ``source`` (hub id or local folder), with a clear error."""
    try:
        return transformers.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot read the backbone checkpoint '{source}': {err}\n"
            "backbone_source must be a hub id that is reachable or already in the Hugging Face "
            "cache, or a local folder written by save_pretrained() (holding config.json and the "
            "weights). Offline: download once elsewhere and pass --backbone_source=/path/to/folder."
        ) from None


def checkpoint_config_json(source):
    """``config.json`` of ``source`` (hub id, hub cache or local folder) as plain JSON (a dict), or
    None when there is none or it is not a JSON object."""
    try:
        path = transformers.utils.cached_file(str(source), "config.json")
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


# The attention implementations every backbone is loaded with, always passed explicitly. transformers
# takes any other value (a Hub id such as "org/repo") as a kernel that the ``kernels`` package
# fetches from the Hub and runs as native code: a checkpoint naming one is refused.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
ATTENTION_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")


class RefusedCheckpointError(OSError):
    """A backbone checkpoint (or loading option) that PETL-AST refuses to load, and why (an
    ``OSError`` as an unreadable checkpoint: every tool reports both as one ``Error:`` line)."""


def _named_attention(config, depth=0):
    """Every attention implementation ``config`` (a config.json dict) names, sub-configs too."""
    if depth > 8 or not isinstance(config, dict):
        return []
    found = []
    for key, value in config.items():
        if key in ATTENTION_KEYS:
            found += list(value.values()) if isinstance(value, dict) else [value]
        elif isinstance(value, dict):
            found += _named_attention(value, depth + 1)
    return found


def loading_options(source, attn_implementation):
    """The keyword arguments every ``from_pretrained`` of a backbone model gets:
    ``attn_implementation`` explicit, ``sdpa`` or ``eager``. ``RefusedCheckpointError`` when the
    option or the checkpoint's ``config.json`` names another implementation (e.g. a Hub kernel)."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise RefusedCheckpointError(
            f"attn_implementation '{attn_implementation}' is not supported: use "
            f"--attn_implementation=sdpa or eager (other values load attention kernels from the Hub)."
        )
    named = [v for v in _named_attention(checkpoint_config_json(source)) if v is not None]
    bad = [v for v in named if v not in ATTENTION_IMPLEMENTATIONS]
    if bad:
        raise RefusedCheckpointError(
            f"The backbone checkpoint '{source}' names the attention implementation {bad[0]!r} in "
            "its config.json: transformers would load it as a kernel (native code fetched from the "
            "Hub), which PETL-AST never runs. Remove the attn_implementation key from its "
            "config.json (PETL-AST uses sdpa or eager, --attn_implementation)."
        )
    folder = Path(str(source)).expanduser()
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(
            folder.glob("pytorch_model*.bin")):
        raise RefusedCheckpointError(
            f"The backbone checkpoint '{source}' holds its weights only as pytorch_model.bin, a "
            "pickle, which PETL-AST never loads (loading a pickle can run code): save it as "
            "safetensors where it was made (model.save_pretrained(folder), the default) and pass "
            "that folder."
        )
    # use_safetensors: transformers never falls back to a pickled file (a Hub id's too).
    return {"attn_implementation": attn_implementation, "use_safetensors": True}


def checkpoint_model_type(source):
    """``model_type`` of ``config.json`` in ``source`` (hub id, hub cache or local folder), read as
    plain JSON so that a lobe of any checkpoint format is found by it."""
    model_type = (checkpoint_config_json(source) or {}).get("model_type")
    if not isinstance(model_type, str):
        model_type = None
    if not model_type:  # unreachable, or no model_type: transformers' reading (its clear error)
        model_type = read_config(source).model_type
    return model_type


def state_fingerprint(state, missing=(), exclude=()):
    """The fingerprint of a checkpoint's weights ``state`` (``{name: tensor}``, as its lobe loads
    them): SHA-256 over every tensor's name, dtype, shape and bytes in name order, leaving out
    ``missing`` (tensors the checkpoint lacks, initialised at random on loading) and ``exclude``.

    Returns
    -------
    dict
        ``kind`` (``tensors``), ``sha256`` (hex digest), ``tensors`` (how many were hashed),
        ``excluded`` (names left out) and ``bytes`` (size of the weights).
    """
    excluded = set(missing) | set(exclude)
    digest = hashlib.sha256()
    count = total = 0
    for name, tensor in sorted(state.items()):
        total += tensor.numel() * tensor.element_size()
        if name in excluded:
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
        count += 1
    return {"kind": "tensors", "sha256": digest.hexdigest(), "tensors": count,
            "excluded": sorted(excluded), "bytes": total}


def file_fingerprint(path):
    """The fingerprint of a checkpoint file's bytes (``kind: file``), for a lobe whose checkpoint
    is one released file (a ``.pt`` without a transformers ``config.json``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2 ** 20), b""):
            digest.update(block)
    return {"kind": "file", "sha256": digest.hexdigest(), "excluded": [],
            "bytes": Path(path).stat().st_size}


@contextlib.contextmanager
def quiet_transformers():
    """Silences transformers' loading progress bars and reports inside the block."""
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


@contextlib.contextmanager
def preserved_rng():
    """Restores the python/numpy/torch random states after the block (loading a checkpoint draws
    the tensors it lacks from them; a run must draw the same numbers whether or not it loaded)."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
