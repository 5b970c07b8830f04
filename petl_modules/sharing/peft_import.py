"""A PEFT LoRA, DoRA, (IA)3 or VeRA adapter written as a PETL model folder (``import_peft_adapter``;
the format, the mappings and what is refused: ``petl_modules.sharing.peft_lora``).

The steps: the adapter folder is read as data (``read_adapter``: JSON and safetensors) and its
config checked against what our methods compute (``check_adapter_config``); its base is found
(``adapter_base``: ``--backbone_source``, a folder beside the adapter that
``base_model_name_or_path`` names relatively, a local checkpoint known by the fingerprint our
export recorded, or the Hub id); its tensors are placed on the projections our lobe names
(``adapted_projections``), loaded into our method's modules (``load_adapter_tensors``), and the
model is written only when it gives ``PeftModel.from_pretrained``'s last hidden states
(``peft_difference``).
"""

import copy
import shutil
import tempfile
from pathlib import Path

import torch

from petl_modules.backbones import read_config
from petl_modules.backbones.base import checkpoint_model_type, quiet_transformers
from petl_modules.methods.adapters import bottleneck_width
from petl_modules.methods.dora import DoraConfig
from petl_modules.methods.ia3 import INPUT_SCALED, IA3Config
from petl_modules.methods.lora import LoraConfig, target_spelling
from petl_modules.methods.vera import VeraConfig, VeraProjections
from petl_modules.model.bases import remember_local_base
from petl_modules.model.folder import attach_modules, save_model_folder
from petl_modules.model.spec import BackboneRef, ModelSpec, PETLModelError
from petl_modules.sharing.head import read_head
from petl_modules.sharing.peft_lora import (
    ACCEPTED_TARGETS,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_TENSORS,
    SHARED_TENSORS,
    UPDATE_TENSOR,
    WHY_NOT,
    base_lobe,
    check_adapter_config,
    check_model_type,
    hidden_parity,
    lobe_prefix,
    read_adapter,
    rename_adapter,
    transformers5_name,
)

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
        ``base_model_name_or_path`` (``adapter_base``).
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
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    where = f"PEFT adapter {adapter_dir}"
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PETLModelError(f"{out_dir} exists and is not an empty folder: give a new one.")
    adapter, state = read_adapter(adapter_dir)
    method = check_adapter_config(adapter, where)
    source, expected = adapter_base(adapter_dir, adapter, backbone_source, where)
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
    points = adapted_projections(fresh, updates, saved, method, model_type, where)
    config = method_of(method, adapter, [p for p in ACCEPTED_TARGETS if p in points],
                       fresh.hidden_size, checked_rank(adapter, updates, method, where), where)
    spec = ModelSpec(BackboneRef.of(fresh, source), config, list(class_names), pooling).check()
    if expected and spec.backbone.sha256() != expected:
        raise PETLModelError(f"{where}: the base {source} is not the checkpoint the adapter was "
                             f"exported on (weights fingerprint {spec.backbone.sha256()[:12]}, "
                             f"recorded {expected[:12]}): pass --backbone_source=<a copy of it>.")
    modules = attach_modules(spec, fresh)
    load_adapter_tensors(modules, lobe_prefix(fresh), (updates, saved, shared), method, where)
    with torch.no_grad():
        if head is not None:
            modules["classifier"].load_state_dict(head[0])
        else:
            torch.manual_seed(int(seed))
            modules["classifier"].head.reset_parameters()
    for module in modules.values():
        module.eval()
    difference = peft_difference(modules["petl_model"].adapted_model, model, adapter_dir, state, where)
    if not difference <= tolerance:
        raise PETLModelError(f"{where}: our {method} does not reproduce PeftModel's output (last "
                             f"hidden states differ by {difference:.3g} > {tolerance:g}); nothing written.")
    save_model_folder(out_dir, spec, modules)
    remember_local_base(source, spec.backbone.sha256())
    return spec.view(out_dir, source)


def adapter_base(adapter_dir, adapter, given, where):
    """``(source, weights fingerprint or None)``: the base checkpoint of an adapter and, when our
    export recorded it (``classifier_head.json``: a local checkpoint's folder name and weights
    fingerprint), the fingerprint it must have. The source is ``given`` (``--backbone_source``);
    else the adapter's ``base_model_name_or_path``: a folder beside the adapter when it names one
    relatively (our export's ``base``), the recorded local checkpoint as this machine knows it, or
    else as it is (a Hub id, or a path of the machine that wrote it)."""
    try:
        head = read_head(adapter_dir)
    except PETLModelError:  # a damaged head: no record (the head itself is refused if it is used)
        head = None
    details = head[1].get("peft") if head else None
    recorded = details.get("base") if isinstance(details, dict) else None
    recorded = recorded if isinstance(recorded, dict) and isinstance(recorded.get("local_name"), str) else {}
    expected = recorded.get("sha256") if isinstance(recorded.get("sha256"), str) else None
    if given:
        return str(given), expected
    named = adapter.get("base_model_name_or_path")
    if not isinstance(named, str) or not named.strip():
        raise PETLModelError(f"{where} names no base model (base_model_name_or_path): pass "
                             "--backbone_source=<the base checkpoint>.")
    relative = Path(named)
    if not relative.is_absolute() and ".." not in relative.parts and (adapter_dir / relative).is_dir():
        return str(adapter_dir / relative), None
    if recorded.get("local_name") == named:
        reference = BackboneRef(family=None, local_name=named, fingerprint={"sha256": expected})
        return reference.source(None, where), expected
    return named, None


def adapted_projections(fresh, updates, saved, method, model_type, where):
    """``{insertion point: {module}}`` of the adapter's ``updates`` on the base lobe ``fresh``;
    ``PETLModelError`` for what our method cannot hold: projections outside ``ACCEPTED_TARGETS``,
    some layers only, the wrong (IA)3 scaling, saved modules other than the final LayerNorm."""
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
    return points


def checked_rank(adapter, updates, method, where):
    """The adapter's ``r`` (0 for (IA)3), which its tensors must have."""
    rank = int(adapter.get("r") or 0)
    if method in ("lora", "dora", "vera"):
        tensor = {"vera": "vera_lambda_d"}.get(method, "lora_A")
        ranks = {tuple(t[tensor].shape)[0] for t in updates.values()}
        if ranks != {rank}:
            raise PETLModelError(f"{where}: tensors of rank {sorted(ranks)} but r={rank} in its config.")
    return rank


def load_adapter_tensors(modules, prefix, tensors, method, where):
    """Copies the adapter's ``(updates, saved, shared)`` tensors (``split_adapter_state``) into our
    method's modules of ``modules["petl_model"]``, shapes checked."""
    updates, saved, shared = tensors
    lobe = modules["petl_model"].adapted_model
    names = PEFT_TENSORS[method]
    with torch.no_grad():
        for module, found in updates.items():
            ours = lobe.get_submodule(prefix + module)
            for theirs, mine in names.items():
                target = getattr(ours, mine)
                if target.numel() != found[theirs].numel() or (
                        found[theirs].dim() == target.dim() and target.shape != found[theirs].shape):
                    raise PETLModelError(f"{where}: {module}'s {theirs} has shape "
                                         f"{list(found[theirs].shape)}, the base model's {list(target.shape)}.")
                target.copy_(found[theirs].reshape(target.shape))
        if shared:
            (owner,) = [m for m in lobe.modules() if isinstance(m, VeraProjections)]
            for buffer, tensor in shared.items():
                if getattr(owner, buffer).shape != tensor.shape:
                    raise PETLModelError(f"{where}: {buffer} has shape {list(tensor.shape)}, the base "
                                         f"model's targets need {list(getattr(owner, buffer).shape)}.")
                getattr(owner, buffer).copy_(tensor)
        for module, found in saved.items():
            lobe.get_submodule(prefix + module).load_state_dict(found)


def peft_difference(lobe, model, adapter_dir, state, where):
    """Max abs difference of the last hidden states of our adapted ``lobe`` and of
    ``PeftModel.from_pretrained(model, adapter_dir)`` (an adapter in transformers 4.x names is
    renamed to 5's in a scratch copy first: PEFT on transformers 5 would find none)."""
    import peft

    def short(key):
        return key.split("base_model.model.")[-1]

    with tempfile.TemporaryDirectory(prefix="petl_peft_") as scratch, quiet_transformers():
        reference = adapter_dir
        if any(UPDATE_TENSOR.fullmatch(short(k)) and transformers5_name(model, short(k)) != short(k)
               for k in state):
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
            return hidden_parity(lobe, theirs, lobe.input_processor)
        except RuntimeError as err:  # e.g. AST inputs of another length than the base's positions
            raise PETLModelError(
                f"{where}: PeftModel cannot run the imported model's inputs ({err}); with AST, leave "
                "--max_frames to the base's max_length (what the adapter was trained with)."
            ) from None
