"""Projection-update models as PEFT adapters, both ways: LoRA (any targets), DoRA, (IA)3, VeRA.

Export (``python -m petl_modules.export MODEL_DIR OUT --format=peft``): a PETL model folder of one
of these methods becomes what ``peft.PeftModel.from_pretrained`` loads on the base transformers
model::

    OUT/
    ├── adapter_config.json, adapter_model.safetensors   written by PEFT's own save_pretrained
    ├── classifier_head.safetensors, classifier_head.json the head (transformers' base model has none)
    └── base/                                            only when the run changed the base (below)

The mappings are exact (``PEFT_TYPES``):

- LoRA -> ``LoraConfig``: our update ``s B A`` with ``s = lora_alpha / reduction_rate`` and rank
  ``r = round(hidden / reduction_rate)`` is PEFT's ``(lora_alpha' / r) B A`` with
  ``lora_alpha' = s r`` (same ``A [r, D_in]``, ``B [D_out, r]``);
- DoRA -> ``LoraConfig(use_dora=True)``: LoRA's mapping and the magnitude
  (``lora_magnitude_vector``);
- (IA)3 -> ``IA3Config``: the vectors (``ia3_l``); the projections whose input is rescaled (the
  FFN's output projection) are its ``feedforward_modules``;
- VeRA -> ``VeraConfig(save_projection=True)``: the shared matrices (``vera_A``, ``vera_B``, the
  same shapes: the largest target's) and the vectors (``vera_lambda_b``, ``vera_lambda_d``).

The trained final LayerNorm goes in ``modules_to_save``. When the run's base differs from the
checkpoint (AST: position embeddings cut or interpolated to the run's ``max_frames``, or
``position_embeddings: zeros``), that base is written to ``OUT/base/`` (``save_pretrained``) and
``base_model_name_or_path`` is ``base``, relative to the adapter folder; otherwise it is the
checkpoint's Hub id, or a local checkpoint's folder name: never a path of this machine. ``target_modules`` are the shortest name suffixes that name
exactly the adapted projections (PEFT matches a module whose name ends with a target).

Module names: transformers 5 names AST's projections ``layers.N.attention.q_proj``; adapters made
under transformers 4.x name them ``encoder.layer.N.attention.attention.query``. transformers' own
conversion table maps the two (``--peft_names=4`` writes the 4.x names; import reads either).

Modules: this one holds the format's tables, the reading and checks of an adapter folder, and
what both directions share; the export is
``petl_modules.sharing.peft_export`` (``export_peft``), the import
``petl_modules.sharing.peft_import`` (``import_peft_adapter``); both names are also importable from
here.

Import (``python -m petl_modules.from_peft ADAPTER_DIR OUT``, ``import_peft_adapter``): a PEFT
adapter of one of these types trained elsewhere becomes a ``petl_model/`` folder, with a new head
(``class_names``) or the head our export wrote beside it. The adapter folder is data:
``adapter_config.json`` is read as JSON and the weights from safetensors only
(``adapter_model.bin``, a pickle, is refused). Its targets must be projections among the fixed list
``ACCEPTED_TARGETS`` of every layer. What our methods cannot represent is refused with the reason:
other adapter types, rsLoRA, per-module ranks or alphas, some layers only, trained biases, targets
outside ``ACCEPTED_TARGETS``, a rank that no integer ``reduction_rate`` gives, modules_to_save
other than the final LayerNorm, a VeRA adapter saved without its matrices, an (IA)3 adapter that
rescales another projection's input than the FFN's output projection.

Refused backbones. WavLM's attention hands ``q_proj.weight`` (etc.) to
``F.multi_head_attention_forward`` without calling the modules, so PEFT's layers on its attention
projections are never run: PEFT leaves WavLM's output unchanged, whatever the adapter holds (ours
act on the weights and do change it). Both directions refuse adapters on WavLM's attention
projections (its FFN projections are called, and map). Whisper: the lobe wraps the encoder's layers
and cuts its positions to the clip; refused too.
"""

import importlib
import json
import math
import re
from pathlib import Path

import torch

from petl_modules.backbones import lobe_class
from petl_modules.backbones.base import preserved_rng, quiet_transformers
from petl_modules.methods.dora import DoRA
from petl_modules.methods.ia3 import IA3
from petl_modules.methods.lora import LORA_TARGETS, LoRA
from petl_modules.methods.vera import VeRA
from petl_modules.model.spec import PETLModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FOLDER = "base"
PEFT_NAMES = ("5", "4")
# The projections an imported adapter may target: insertion points of every lobe (a fixed list).
ACCEPTED_TARGETS = LORA_TARGETS
# Our module class -> PEFT's adapter type; the tensors of one adapted projection, PEFT's name ->
# ours (``None``: the shared matrices, kept once in the model).
PEFT_TYPES = {LoRA: "LORA", DoRA: "LORA", IA3: "IA3", VeRA: "VERA"}
PEFT_TENSORS = {
    "lora": {"lora_A": "lora_A", "lora_B": "lora_B"},
    "dora": {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude_vector": "magnitude"},
    "ia3": {"ia3_l": "ia3_l"},
    "vera": {"vera_lambda_b": "lambda_b", "vera_lambda_d": "lambda_d"},
}
SHARED_TENSORS = ("vera_A", "vera_B")
WAVLM_ATTENTION = (
    "PEFT leaves WavLM's attention unchanged: WavLMAttention hands q_proj/k_proj/v_proj/out_proj's "
    "weights to F.multi_head_attention_forward without calling the modules, so the layers PEFT puts "
    "there never run (an adapter trained with PEFT on them did not change the model; ours does). "
    "Target only WavLM's FFN projections, or use the PETL model folder, or --format=onnx."
)
# model_type -> why PEFT's adapters on it are not ours (both directions refuse it).
REFUSED_MODEL_TYPES = {
    "whisper": (
        "the Whisper lobe wraps the encoder's layers and cuts its position embeddings to the clip; "
        "there is no transformers base model that PEFT's adapter would load on as the run used it. "
        "Use the PETL model folder, or --format=onnx."
    ),
}

# ==================================================================== reading an adapter folder
# Keys of adapter_config.json whose non-default values change what an adapter of each type
# computes (beyond what our method of that type does).
NEUTRAL = {
    "LORA": {
        "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layer_replication": None, "bias": "none", "lora_bias": False, "fan_in_fan_out": False,
        "target_parameters": None, "trainable_token_indices": None, "use_qalora": False,
        "use_bdlora": None, "alora_invocation_tokens": None, "megatron_config": None,
        "arrow_config": None, "kasa_config": None, "velora_config": None, "monteclora_config": None, "exclude_modules": None,
    },
    "IA3": {"fan_in_fan_out": False, "exclude_modules": None},
    "VERA": {"save_projection": True, "fan_in_fan_out": False, "bias": "none",
             "layers_to_transform": None, "exclude_modules": None},
}
WHY_NOT = {
    "peft_type": "only LoRA (and DoRA), (IA)3 and VeRA adapters map onto our methods",
    "save_projection": "the shared matrices are not in the adapter (PEFT would draw them again from "
                       "projection_prng_key): save it with save_projection=True",
    "use_rslora": "rsLoRA scales by lora_alpha / sqrt(r); ours scales by lora_alpha / reduction_rate"
                  " (retrain without use_rslora, or rescale lora_B yourself)",
    "rank_pattern": "per-module ranks; ours has one rank for every projection",
    "alpha_pattern": "per-module alphas; ours has one scaling for every projection",
    "layers_to_transform": "an adapter on some layers only; ours adapts every layer",
    "layer_replication": "replicated layers change the backbone",
    "bias": "trained biases are not part of our methods",
    "lora_bias": "a bias on lora_B is not part of our LoRA",
    "fan_in_fan_out": "transposed (Conv1D) weights; our targets are nn.Linear",
    "exclude_modules": "modules left out (PEFT reads a string as a regular expression); ours adapts "
                       "every projection",
}
MAX_CONFIG_BYTES = 16 * 2 ** 20


def read_adapter(adapter_dir):
    """``(adapter_config dict, {tensor name: tensor})`` of a PEFT adapter folder, read as data."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise PETLModelError(f"'{adapter_dir}' is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}.")
    if not weights_path.is_file():
        found = "adapter_model.bin (a pickle, which is never loaded)" if (
            adapter_dir / "adapter_model.bin").exists() else "no weights"
        raise PETLModelError(
            f"'{adapter_dir}' has {found}: only {ADAPTER_WEIGHTS} is read. Save the adapter with "
            "safe_serialization=True (PEFT's default) where it was trained."
        )
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise PETLModelError(f"{config_path} is too large for an adapter config; not read.")
    try:
        adapter = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise PETLModelError(f"{config_path} is not valid JSON ({err}).") from None
    if not isinstance(adapter, dict):
        raise PETLModelError(f"{config_path} is not a PEFT adapter config (not a JSON object).")
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own types)
        raise PETLModelError(f"{weights_path} is not a readable safetensors file ({err}).") from None
    return adapter, state


# PEFT reads a string ``target_modules`` as a regular expression, matched against every module
# name (a crafted one backtracks for hours): only a list of plain module names, or one of the
# patterns our export writes (none so far: it writes plain names), is read.
EXPORTED_TARGET_PATTERNS = frozenset()
PLAIN_MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,7}")


def target_module_problems(targets):
    """Why ``target_modules`` of an adapter_config.json is refused (empty list: it is not)."""
    if isinstance(targets, str) and targets in EXPORTED_TARGET_PATTERNS:
        return []
    if isinstance(targets, list) and 0 < len(targets) <= 64 and all(
            isinstance(t, str) and PLAIN_MODULE_NAME.fullmatch(t) for t in targets):
        return []
    return [f"target_modules={json.dumps(targets)[:60]}: expected a list of plain module names "
            "(q_proj, k_proj, ...); a regular expression is not read"]


def check_adapter_config(adapter, where):
    """The method the adapter maps onto (``lora``, ``dora``, ``ia3`` or ``vera``); raises
    ``PETLModelError`` naming every setting our method cannot represent."""
    def unset(value):  # None, false or empty (PEFT writes either for "not used")
        return value is None or value is False or (isinstance(value, (dict, list, str)) and not value)

    peft_type = adapter.get("peft_type")
    if peft_type not in NEUTRAL:
        raise PETLModelError(f"{where} cannot be imported: peft_type={json.dumps(peft_type)[:60]}: "
                             f"{WHY_NOT['peft_type']}.")
    problems = []
    for key, neutral in NEUTRAL[peft_type].items():
        value = adapter.get(key, neutral)
        if not unset(value) if unset(neutral) else value != neutral:
            reason = WHY_NOT.get(key, "a PEFT feature our methods do not have")
            problems.append(f"{key}={json.dumps(value)[:60]}: {reason}")
    numbers = {"LORA": ("r", "lora_alpha"), "VERA": ("r",), "IA3": ()}[peft_type]
    for key in numbers:
        value = adapter.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or value <= 0 or (key == "r" and value != int(value)):
            problems.append(f"{key}={str(value)[:40]}: expected a positive "
                            + ("integer" if key == "r" else "finite number"))
    problems += target_module_problems(adapter.get("target_modules"))
    if problems:
        raise PETLModelError(f"{where} cannot be imported as our {peft_type} method:\n  " + "\n  ".join(problems))
    if peft_type == "LORA":
        return "dora" if adapter.get("use_dora") else "lora"
    return peft_type.lower()


# ==================================================================== shared pieces
def check_model_type(model_type, where, points=()):
    """Raises ``PETLModelError`` for a backbone (and adapted ``points``) whose adapters PEFT does
    not compute as ours."""
    if model_type in REFUSED_MODEL_TYPES:
        raise PETLModelError(f"{where}: {model_type} backbone refused: {REFUSED_MODEL_TYPES[model_type]}")
    if model_type == "wavlm" and set(points) & {"q", "k", "v", "o"}:
        raise PETLModelError(f"{where}: wavlm backbone refused: {WAVLM_ATTENTION}")


def peft_targets(adapted, every):
    """``target_modules`` naming exactly the module names ``adapted`` among ``every`` (the base
    model's module names): for each, its shortest name suffix (whole dot-separated parts) that no
    other module's name ends with (PEFT adapts a module whose name equals or ends with
    ``.<target>``)."""
    adapted, every = set(adapted), set(every)
    targets = set()
    for name in adapted:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(m in adapted for m in every if m == suffix or m.endswith("." + suffix)):
                targets.add(suffix)
                break
    return sorted(targets)


def lobe_prefix(lobe):
    """``"model."``: how the lobe names the transformers model it wraps (its attribute)."""
    model = lobe.pretrained_model()
    return next(f"{name}." for name, child in lobe.named_children() if child is model)


def base_lobe(options, source):
    """The run's base: the lobe of ``source`` built with the run's lobe ``options`` (e.g. AST's
    position embeddings fitted to ``max_frames``), without PETL modules, in eval mode."""
    lobe_cls = lobe_class(source)
    kwargs = {k: options[k] for k in lobe_cls.options() if k in options}
    with preserved_rng(), quiet_transformers():
        return lobe_cls(source, **kwargs).eval()


def transformers4_names(model, names):
    """``{transformers 5 name: transformers 4.x name}`` of parameter ``names`` of ``model``, by
    transformers' own conversion table (identity for models it never renamed)."""
    from transformers.core_model_loading import revert_weight_conversion

    out = {}
    for name in names:  # one at a time: the reverted dict's order is not the given one
        (old,) = revert_weight_conversion(model, {name: torch.zeros(1)})
        out[name] = old
    return out


def transformers5_name(model, name):
    """The transformers 5 name of a parameter ``name`` written under 4.x (or already 5)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    return rename_source_key(name, renamings, converters)[0]


def hidden_parity(lobe, peft_model, processor, batch=2):
    """Max abs difference of the last hidden states of our adapted ``lobe`` and ``peft_model`` on
    generated audio (full-length clips, so no padding is involved)."""
    samples = processor.samples_needed or 16000
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(samples, generator=generator) for _ in range(batch)]
    inputs = torch.stack([processor(w) for w in wavs])
    with torch.no_grad():
        ours = lobe(inputs)[0]
        theirs = peft_model(input_values=inputs).last_hidden_state
    return float((ours - theirs).abs().max())


# A tensor of one adapted projection in an adapter file (module name, PEFT's tensor name).
UPDATE_TENSOR = re.compile(r"(.+)\.(lora_A|lora_B|lora_magnitude_vector|ia3_l|vera_lambda_b|vera_lambda_d)"
                           r"(?:\.default)?(?:\.weight)?")


def rename_adapter(out_dir, model, names):
    """Rewrites a saved adapter's tensor names and ``target_modules`` (and (IA)3's
    ``feedforward_modules``) in the module names of transformers ``names`` (``4`` or ``5``), by
    transformers' conversion table for ``model``."""
    from safetensors.torch import load_file, save_file

    path = Path(out_dir) / ADAPTER_WEIGHTS
    state = load_file(str(path))
    head = "base_model.model."
    short = {k: k[len(head):] if k.startswith(head) else k for k in state if k.startswith(head)}
    every = [n for n, _ in model.named_parameters()]
    if names == "4":
        mapping = transformers4_names(model, list(short.values()) + every)
    else:
        mapping = {n: transformers5_name(model, n) for n in list(short.values()) + every}
    renamed = {(head + mapping[short[k]] if k in short else k): t for k, t in state.items()}
    save_file(renamed, str(path), metadata={"format": "pt"})
    config_path = Path(out_dir) / ADAPTER_CONFIG
    adapter = json.loads(config_path.read_text(encoding="utf-8"))
    modules = {m.rsplit(".", 1)[0] for m in every}
    renamed_modules = {mapping[n].rsplit(".", 1)[0] for n in every}
    by_old = {}
    for key in short.values():
        found = UPDATE_TENSOR.fullmatch(key)
        if found:
            by_old[found.group(1)] = UPDATE_TENSOR.fullmatch(mapping[key]).group(1)
    adapter["target_modules"] = peft_targets(by_old.values(), renamed_modules)
    if adapter.get("feedforward_modules"):
        forward = [m for m in modules if any(m == t or m.endswith("." + t) for t in adapter["feedforward_modules"])]
        adapter["feedforward_modules"] = peft_targets([by_old[m] for m in forward if m in by_old],
                                                      renamed_modules)
    config_path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# The export and the import live in their own modules; their public names are read from here too.
_MOVED = {"export_peft": "peft_export", "import_peft_adapter": "peft_import"}


def __getattr__(name):
    if name in _MOVED:
        return getattr(importlib.import_module(f"petl_modules.sharing.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
