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
``base_model_name_or_path`` names it. ``target_modules`` are the shortest name suffixes that name
exactly the adapted projections (PEFT matches a module whose name ends with a target).

Module names: transformers 5 names AST's projections ``layers.N.attention.q_proj``; adapters made
under transformers 4.x name them ``encoder.layer.N.attention.attention.query``. transformers' own
conversion table maps the two (``--peft_names=4`` writes the 4.x names; import reads either).

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

import copy
import json
import math
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from petl_modules.backbones import lobe_class, read_config
from petl_modules.backbones.base import checkpoint_model_type, preserved_rng, quiet_transformers
from petl_modules.methods.adapters import bottleneck_width
from petl_modules.methods.dora import DoRA, DoraConfig
from petl_modules.methods.ia3 import INPUT_SCALED, IA3, IA3Config
from petl_modules.methods.lora import LORA_TARGETS, LoRA, LoraConfig, ProjectionUpdate, target_spelling
from petl_modules.methods.vera import VeRA, VeraConfig, VeraProjections
from petl_modules.model.bases import remember_local_base
from petl_modules.model.folder import attach_modules, save_model_folder, unmerged_petl_modules
from petl_modules.model.spec import BackboneRef, ModelSpec, PETLModelError
from petl_modules.sharing.head import read_head, write_head, write_preprocessor_config

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


# ==================================================================== export
def _kind(updates, where, method):
    """``(module class, PEFT type)`` of the projection updates ``[(name, module)]`` of a model."""
    kinds = {type(m) for _, m in updates}
    if len(kinds) != 1 or next(iter(kinds)) not in PEFT_TYPES:
        raise PETLModelError(f"{where}: the '{method}' model mixes {sorted(k.__name__ for k in kinds)}; "
                             "a PEFT adapter holds one type.")
    kind = kinds.pop()
    return kind, PEFT_TYPES[kind]


def peft_config_of(kind, updates, targets, to_save, base_reference, options):
    """The PEFT config of the updates ``[(name, module)]`` of class ``kind`` (``options``: the
    model folder's), and its details for ``classifier_head.json``."""
    import peft

    common = dict(target_modules=targets, modules_to_save=to_save or None)
    first = updates[0][1]
    if kind in (LoRA, DoRA):
        ranks = {m.lora_A.shape[0] for _, m in updates}
        scalings = {m.scaling for _, m in updates}
        assert len(ranks) == 1 and len(scalings) == 1, "one rank and one scaling per LoRA model"
        rank, scaling = ranks.pop(), scalings.pop()
        config = peft.LoraConfig(r=rank, lora_alpha=scaling * rank, lora_dropout=0.0, bias="none",
                                 use_dora=kind is DoRA, **common)
        details = {"r": rank, "lora_alpha": scaling * rank, "use_dora": kind is DoRA}
    elif kind is IA3:
        forward = [t for t in targets if any(m.scales_input and n.endswith(t) for n, m in updates)]
        config = peft.IA3Config(feedforward_modules=forward, **common)
        details = {"feedforward_modules": forward}
    else:
        shared = first.projections
        config = peft.VeraConfig(r=shared.rank, projection_prng_key=shared.seed, save_projection=True,
                                 vera_dropout=0.0, d_initial=float(options.get("d_initial", 0.1)), **common)
        details = {"r": shared.rank, "projection_prng_key": shared.seed}
    config.base_model_name_or_path = base_reference
    return config, details


def copy_into_peft(kind, updates, peft_model, prefix, where):
    """Copies our tensors into the PEFT model's layers (and VeRA's shared matrices)."""
    inner = peft_model.base_model.model
    names = PEFT_TENSORS[{LoRA: "lora", DoRA: "dora", IA3: "ia3", VeRA: "vera"}[kind]]
    for name, ours in updates:
        layer = inner.get_submodule(name[len(prefix):])
        for theirs, mine in names.items():
            target = getattr(layer, theirs)["default"]
            target = getattr(target, "weight", target)  # LoRA's Linear layers, DoRA's magnitude layer
            value = getattr(ours, mine)
            target.copy_(value.reshape(target.shape))
    if kind is VeRA:
        shared = updates[0][1].projections
        for buffer in SHARED_TENSORS:
            theirs = getattr(peft_model.base_model, buffer)["default"]
            mine = getattr(shared, buffer)
            if theirs.shape != mine.shape:
                raise PETLModelError(f"{where}: PEFT sized {buffer} {list(theirs.shape)}, ours is "
                                     f"{list(mine.shape)}; please report this.")
            theirs.copy_(mine)


def export_peft(modules, config, out_dir, backbone_source=None, peft_names="5", tolerance=1e-4,
                final_dir=None):
    """Writes the LoRA, DoRA, (IA)3 or VeRA model ``modules`` (of the PETL model folder
    ``config``) as a PEFT adapter.

    Arguments
    ---------
    modules : dict
        ``{"petl_model", "classifier"}`` as ``load_petl_model`` returns them (updates unmerged).
    config : dict
        The folder's config.
    out_dir : str or Path
        Where to write (new or empty; see ``petl_modules.export.check_out_dir``).
    backbone_source : str, optional
        Another local copy of the base checkpoint.
    peft_names : str
        ``5`` (transformers 5 module names, default) or ``4`` (transformers 4.x names, AST
        ``query``/``value``).
    tolerance : float
        The written adapter, on PEFT, must give our last hidden states within this (checked here).
    final_dir : str or Path, optional
        The path ``out_dir`` gets once written (``export`` writes beside it and renames): where
        ``base_model_name_or_path`` points when the base is written too.

    Returns
    -------
    dict
        The head's JSON (``classifier_head.json``), with ``peft`` details.
    """
    import peft

    if peft_names not in PEFT_NAMES:
        raise PETLModelError(f"peft_names must be one of {', '.join(PEFT_NAMES)}, got '{peft_names}'.")
    where = config["model_dir"]
    petl_model = modules["petl_model"]
    lobe = petl_model.adapted_model
    updates = [(n, m) for n, m in lobe.named_modules() if isinstance(m, ProjectionUpdate)]
    others = sorted({kind for _, kind in unmerged_petl_modules(petl_model)
                     if kind not in {k.__name__ for k in PEFT_TYPES}})
    others += [name for name, _ in petl_model.named_parameters(recurse=False)]  # the layer sum's weights
    if not updates or others:
        raise PETLModelError(
            f"Cannot export the '{config['method']}' model of {where} as a PEFT adapter: the PEFT "
            "format holds LoRA, DoRA, (IA)3 and VeRA adapters"
            + (f", and this model has {', '.join(others)}" if others else ", and this model has none")
            + ". Use --format=onnx (any method), the default format (linear, BitFit, full "
            "fine-tuning), or the PETL model folder itself with python -m petl_modules.classify."
        )
    kind, peft_type = _kind(updates, where, config["method"])
    prefix = lobe_prefix(lobe)
    points = {lobe.locate(n, list(LORA_TARGETS))[0] for n, _ in updates}
    check_model_type(config.get("model_type"), where, points)
    update_params = {f"{n}.{p}" for n, m in updates for p, _ in m.named_parameters()
                     if not p.startswith("pretrained_module.")}
    trained = [n for n, p in lobe.named_parameters() if p.requires_grad and n not in update_params]
    to_save = sorted({n.rsplit(".", 1)[0][len(prefix):] for n in trained})

    source = str(backbone_source or config["backbone_source"])
    fresh = base_lobe(config["options"], source)
    base = fresh.pretrained_model()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_reference = source
    if fresh.changed_from_checkpoint():
        base.save_pretrained(out_dir / BASE_FOLDER)
        write_preprocessor_config(fresh, source, out_dir / BASE_FOLDER)  # the run's input settings
        base_reference = str((Path(final_dir or out_dir) / BASE_FOLDER).resolve())
    elif (out_dir / BASE_FOLDER).is_dir():  # a previous export's base, no longer this model's
        shutil.rmtree(out_dir / BASE_FOLDER)
    adapted = {n[len(prefix):] for n, _ in updates}
    targets = peft_targets(adapted, [n for n, _ in base.named_modules()])
    peft_config, details = peft_config_of(kind, updates, targets, to_save, base_reference,
                                             config["options"])
    with warnings.catch_warnings():  # PEFT names the base by its loading path; we set ours below
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(base, peft_config)
    peft_model.peft_config["default"].base_model_name_or_path = base_reference
    inner = peft_model.base_model.model
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = {n for n, m in inner.named_modules() if isinstance(m, BaseTunerLayer)}
    if wrapped != adapted:
        raise PETLModelError(f"{where}: PEFT adapted {len(wrapped)} modules, ours {len(adapted)} "
                             f"(target_modules {targets}); please report this.")
    with torch.no_grad():
        copy_into_peft(kind, updates, peft_model, prefix, where)
        for name in to_save:
            wrapper = inner.get_submodule(name)
            wrapper.modules_to_save["default"].load_state_dict(lobe.get_submodule(prefix + name).state_dict())
    peft_model.eval()
    difference = hidden_parity(lobe, peft_model, lobe.input_processor)
    if not difference <= tolerance:
        shutil.rmtree(out_dir / BASE_FOLDER, ignore_errors=True)
        raise PETLModelError(
            f"The PEFT adapter of {where} does not reproduce the model: last hidden states differ "
            f"by {difference:.3g} (> {tolerance:g}) on generated audio. Nothing was written; "
            "please report this with the model folder's petl_config.json."
        )
    peft_model.save_pretrained(out_dir)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty card template
    if peft_names == "4":
        rename_adapter(out_dir, base, "4")
    return write_head(out_dir, modules, config, backbone_source, peft={
        "peft_type": peft_type, **details, "target_modules": targets, "modules_to_save": to_save,
        "base_model_name_or_path": base_reference, "base_written": base_reference != source,
        "transformers_names": peft_names, "max_abs_hidden_difference": difference,
    })


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


# ==================================================================== import
# A tensor of one adapted projection in an adapter file (module name, PEFT's tensor name).
UPDATE_TENSOR = re.compile(r"(.+)\.(lora_A|lora_B|lora_magnitude_vector|ia3_l|vera_lambda_b|vera_lambda_d)"
                           r"(?:\.default)?(?:\.weight)?")


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


def split_adapter_state(state, model, where, method):
    """``({module: {tensor: value}}, {module: {param: tensor}}, {shared name: tensor})``: the
    tensors of each adapted projection (PEFT's names), of the saved modules and VeRA's shared
    matrices; module names in transformers 5 naming, relative to the base model
    (``base_model.model.`` and a task model's base prefix, e.g. ``audio_spectrogram_transformer.``,
    removed)."""
    updates, saved, shared = {}, {}, {}
    base_prefix = f"{model.base_model_prefix}." if model.base_model_prefix else None
    expected = set(PEFT_TENSORS[method])
    for key, tensor in state.items():
        if key in (f"base_model.{n}" for n in SHARED_TENSORS) and method == "vera":
            shared[key.rsplit(".", 1)[1]] = tensor
            continue
        name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        if base_prefix and name.startswith(base_prefix):
            name = name[len(base_prefix):]
        match = UPDATE_TENSOR.fullmatch(name)
        if match and match.group(2) in expected:
            module = transformers5_name(model, f"{match.group(1)}.weight").rsplit(".", 1)[0]
            updates.setdefault(module, {})[match.group(2)] = tensor
            continue
        if match or any(f".{part}" in name for part in ("lora_", "ia3_", "vera_")):
            raise PETLModelError(f"{where}: '{key}' is an adapter tensor our {method} has no "
                                 "counterpart for (embedding or convolution adapters, another type).")
        full = transformers5_name(model, name)
        module, _, param = full.rpartition(".")
        saved.setdefault(module, {})[param] = tensor
    broken = [m for m, t in updates.items() if set(t) != expected]
    if broken:
        raise PETLModelError(f"{where}: {broken[0]} has only {', '.join(updates[broken[0]])}.")
    if method == "vera" and set(shared) != set(SHARED_TENSORS):
        raise PETLModelError(f"{where} holds no shared VeRA matrices (vera_A, vera_B): "
                             f"{WHY_NOT['save_projection']}.")
    return updates, saved, shared


def reduction_rate_for(hidden, rank, where):
    """The integer ``reduction_rate`` whose ``round(hidden / reduction_rate)`` is ``rank``
    (the exact divisor when there is one), or ``PETLModelError``."""
    candidates = [hidden // rank] if hidden % rank == 0 else []
    candidates += [c for c in range(max(1, hidden // rank - 2), hidden // rank + 3) if c not in candidates]
    for rate in candidates:
        if bottleneck_width(hidden, rate) == rank:
            return rate
    raise PETLModelError(
        f"{where}: rank r={rank} is not round({hidden} / reduction_rate) for any integer "
        f"reduction_rate (hidden size {hidden}): our LoRA and DoRA cannot hold it."
    )


def method_of(method, adapter, points, hidden, rank, where):
    """Our method config for a PEFT adapter of ``method`` on ``points``."""
    targets = target_spelling(points)
    if method in ("lora", "dora"):
        rate = reduction_rate_for(hidden, rank, where)
        alpha = float(adapter["lora_alpha"]) * rate / rank
        cls = DoraConfig if method == "dora" else LoraConfig
        return cls(lora_targets=targets, reduction_rate=rate, lora_alpha=alpha)
    if method == "ia3":
        return IA3Config(ia3_targets=targets)
    return VeraConfig(vera_targets=targets, rank=int(adapter["r"]),
                      d_initial=float(adapter.get("d_initial", 0.1)),
                      projection_prng_key=int(adapter.get("projection_prng_key", 0)))


def check_ia3_scaling(updates, points_of, where):
    """(IA)3: PEFT rescales the input of its ``feedforward_modules`` (an ``ia3_l`` of shape
    ``[1, D_in]``) and the output of the others (``[D_out, 1]``); ours rescales the input of
    ``ffn_out`` only."""
    for module, tensors in updates.items():
        scales_input = tensors["ia3_l"].shape[0] == 1 and tensors["ia3_l"].dim() == 2
        if scales_input != (points_of[module] == INPUT_SCALED):
            what = "input" if scales_input else "output"
            raise PETLModelError(
                f"{where}: (IA)3 rescales the {what} of {module} ({points_of[module]}); ours rescales "
                f"the input of the FFN's output projection ({INPUT_SCALED}) and the output of the "
                "others, so feedforward_modules must be exactly the ffn_out projections.")


def import_peft_adapter(adapter_dir, out_dir, backbone_source=None, class_names=None,
                        pooling="mean", max_frames=None, clip_seconds=None, seed=0, tolerance=1e-4):
    """Writes a ``petl_model/`` folder from a PEFT LoRA, DoRA, (IA)3 or VeRA adapter (see the
    module docstring).

    Arguments
    ---------
    adapter_dir : str or Path
        A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
    out_dir : str or Path
        The PETL model folder to write (new or empty).
    backbone_source : str, optional
        The base checkpoint (hub id or local folder); default: the adapter's
        ``base_model_name_or_path``.
    class_names : list of str, optional
        A new head for these classes (seeded random initialisation); default: the head that our
        export wrote beside the adapter.
    pooling : str
        Pooling of a new head (``mean`` | ``cls``).
    max_frames : int, optional
        AST: input frames (default: the base checkpoint's ``max_length``).
    clip_seconds : float, optional
        wav2vec2 family: clip length (default: whole utterances).
    seed : int
        Seed of a new head's initialisation.
    tolerance : float
        Our rebuilt model and ``PeftModel.from_pretrained`` must give the same last hidden states
        within this (checked before anything is written).

    Returns
    -------
    dict
        The written model's config, flat (``ModelSpec.view``).
    """
    import peft

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    where = f"PEFT adapter {adapter_dir}"
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PETLModelError(f"{out_dir} exists and is not an empty folder: give a new one.")
    adapter, state = read_adapter(adapter_dir)
    method = check_adapter_config(adapter, where)
    source = str(backbone_source or adapter.get("base_model_name_or_path") or "")
    if not source:
        raise PETLModelError(f"{where} names no base model (base_model_name_or_path): pass "
                             "--backbone_source=<the base checkpoint>.")
    model_type = checkpoint_model_type(source)
    check_model_type(model_type, where)
    head = None if class_names else read_head(adapter_dir)
    if not class_names and head is None:
        raise PETLModelError(f"{where} has no head of ours beside it (classifier_head.json): "
                             "pass the class names of a new head (--class_names=a,b,c).")
    if head is not None:
        class_names, pooling = head[1]["class_names"], head[1].get("pooling") or pooling
    options = {"max_frames": max_frames, "clip_seconds": clip_seconds, "position_embeddings": "adapt"}
    if options["max_frames"] is None:
        options["max_frames"] = int(getattr(read_config(source), "max_length", 1024) or 1024)
    fresh = base_lobe(options, source)  # the base, loaded once
    model = copy.deepcopy(fresh.pretrained_model())  # the plain model PEFT's adapter goes on
    updates, saved, shared = split_adapter_state(state, model, where, method)
    prefix = lobe_prefix(fresh)
    points, points_of = {}, {}
    for module in updates:
        point, _ = fresh.locate(prefix + module, list(ACCEPTED_TARGETS))
        if point is None:
            raise PETLModelError(f"{where}: {method} on '{module}', which is not one of the projections "
                                 f"our methods adapt ({', '.join(ACCEPTED_TARGETS)}).")
        points.setdefault(point, set()).add(module)
        points_of[module] = point
    if not points:
        raise PETLModelError(f"{where} holds no {method} tensors.")
    check_model_type(model_type, where, points)
    for point, modules_there in points.items():
        every = {n[len(prefix):] for n, _ in fresh.modules_at(point)}
        if modules_there != every:
            raise PETLModelError(f"{where}: {method} on {len(modules_there)} of the {len(every)} "
                                 f"'{point}' projections; ours adapts every layer.")
    if method == "ia3":
        check_ia3_scaling(updates, points_of, where)
    final_norm = [n[len(prefix):] for n in fresh.trained_modules("final_norm")]
    extra = sorted(set(saved) - set(final_norm))
    if extra:
        raise PETLModelError(
            f"{where}: modules_to_save {', '.join(extra)} cannot be represented (only the final "
            f"LayerNorm{' ' + final_norm[0] if final_norm else ''} trains with our methods; a task "
            "model's head pools differently from ours): save the adapter without them, and give "
            "--class_names for a new head."
        )
    rank = int(adapter.get("r") or 0)
    if method in ("lora", "dora", "vera"):
        tensor = {"vera": "vera_lambda_d"}.get(method, "lora_A")
        ranks = {tuple(t[tensor].shape)[0] for t in updates.values()}
        if ranks != {rank}:
            raise PETLModelError(f"{where}: tensors of rank {sorted(ranks)} but r={rank} in its config.")
    config = method_of(method, adapter, [p for p in ACCEPTED_TARGETS if p in points],
                       fresh.hidden_size, rank, where)
    spec = ModelSpec(BackboneRef.of(fresh, source), config, list(class_names), pooling).check()
    modules = attach_modules(spec, fresh)
    lobe = modules["petl_model"].adapted_model
    names = PEFT_TENSORS[method]
    with torch.no_grad():
        for module, tensors in updates.items():
            ours = lobe.get_submodule(prefix + module)
            for theirs, mine in names.items():
                target = getattr(ours, mine)
                if target.numel() != tensors[theirs].numel() or (
                        tensors[theirs].dim() == target.dim() and target.shape != tensors[theirs].shape):
                    raise PETLModelError(f"{where}: {module}'s {theirs} has shape "
                                         f"{list(tensors[theirs].shape)}, the base model's {list(target.shape)}.")
                target.copy_(tensors[theirs].reshape(target.shape))
        if shared:
            (owner,) = [m for m in lobe.modules() if isinstance(m, VeraProjections)]
            for buffer, tensor in shared.items():
                if getattr(owner, buffer).shape != tensor.shape:
                    raise PETLModelError(f"{where}: {buffer} has shape {list(tensor.shape)}, the base "
                                         f"model's targets need {list(getattr(owner, buffer).shape)}.")
                getattr(owner, buffer).copy_(tensor)
        for module, tensors in saved.items():
            lobe.get_submodule(prefix + module).load_state_dict(tensors)
        if head is not None:
            modules["classifier"].load_state_dict(head[0])
        else:
            torch.manual_seed(int(seed))
            modules["classifier"].head.reset_parameters()
    for module in modules.values():
        module.eval()
    with tempfile.TemporaryDirectory(prefix="petl_peft_") as scratch, quiet_transformers():
        reference = adapter_dir
        if any(UPDATE_TENSOR.fullmatch(k.split("base_model.model.")[-1]) and transformers5_name(
                model, k.split("base_model.model.")[-1]) != k.split("base_model.model.")[-1]
               for k in state):  # 4.x names: PEFT on 5 finds none
            reference = Path(scratch) / "adapter"
            reference.mkdir()
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copyfile(adapter_dir / name, reference / name)
            rename_adapter(reference, model, "5")
        try:
            theirs = peft.PeftModel.from_pretrained(model, str(reference)).eval()
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
            raise PETLModelError(f"{where}: PEFT cannot load it on the base ({type(err).__name__}: "
                                 f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''})"
                                 "; fix its adapter_config.json or export it again.") from None
        try:
            difference = hidden_parity(lobe, theirs, lobe.input_processor)
        except RuntimeError as err:  # e.g. AST inputs of another length than the base's positions
            raise PETLModelError(
                f"{where}: PeftModel cannot run the imported model's inputs ({err}); with AST, leave "
                "--max_frames to the base's max_length (what the adapter was trained with)."
            ) from None
    if not difference <= tolerance:
        raise PETLModelError(f"{where}: our {method} does not reproduce PeftModel's output (last "
                             f"hidden states differ by {difference:.3g} > {tolerance:g}); nothing written.")
    save_model_folder(out_dir, spec, modules)
    remember_local_base(source, spec.backbone.sha256())
    return spec.view(out_dir, source)
