"""A LoRA, DoRA, (IA)3 or VeRA model folder written as a PEFT adapter (``export_peft``; the format,
the mappings and what is refused: ``petl_modules.sharing.peft_lora``).

The steps: what trains is read off the model (``exported_updates``), the base is built as the run
used it and written to ``base/`` when it differs from the checkpoint (``write_base``), PEFT's own
model is built on it with our tensors copied in (``peft_model_of``), its last hidden states are
compared with ours, and PEFT's ``save_pretrained`` writes the adapter.

``base_model_name_or_path`` names no path of this machine: ``base`` (the folder beside the
adapter, relative to it) when the base is written, else the checkpoint's Hub id or, for a local
checkpoint, its folder's name (``classifier_head.json`` records its weights fingerprint, by which
the import finds it again on a machine that knows it).
"""

import shutil
import warnings
from pathlib import Path

import torch

from petl_modules.methods.dora import DoRA
from petl_modules.methods.ia3 import IA3
from petl_modules.methods.lora import LORA_TARGETS, LoRA, ProjectionUpdate
from petl_modules.methods.vera import VeRA
from petl_modules.model.bases import identify, shareable_name
from petl_modules.model.folder import unmerged_petl_modules
from petl_modules.model.spec import PETLModelError
from petl_modules.sharing.head import write_head, write_preprocessor_config
from petl_modules.sharing.peft_lora import (
    BASE_FOLDER,
    PEFT_NAMES,
    PEFT_TENSORS,
    PEFT_TYPES,
    SHARED_TENSORS,
    base_lobe,
    check_model_type,
    hidden_parity,
    lobe_prefix,
    peft_targets,
    rename_adapter,
)


def export_peft(modules, config, out_dir, backbone_source=None, peft_names="5", tolerance=1e-4):
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

    Returns
    -------
    dict
        The head's JSON (``classifier_head.json``), with ``peft`` details.
    """
    if peft_names not in PEFT_NAMES:
        raise PETLModelError(f"peft_names must be one of {', '.join(PEFT_NAMES)}, got '{peft_names}'.")
    lobe = modules["petl_model"].adapted_model
    kind, updates, to_save = exported_updates(modules["petl_model"], config)
    source = str(backbone_source or config["backbone_source"])
    fresh = base_lobe(config["options"], source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_reference, written = write_base(fresh, source, out_dir)
    peft_model, targets, details = peft_model_of(kind, updates, to_save, fresh, lobe, base_reference, config)
    difference = hidden_parity(lobe, peft_model, lobe.input_processor)
    if not difference <= tolerance:
        shutil.rmtree(out_dir / BASE_FOLDER, ignore_errors=True)
        raise PETLModelError(
            f"The PEFT adapter of {config['model_dir']} does not reproduce the model: last hidden "
            f"states differ by {difference:.3g} (> {tolerance:g}) on generated audio. Nothing was "
            "written; please report this with the model folder's petl_config.json."
        )
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)  # no Hub look-up of the base
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty card template
    if peft_names == "4":
        rename_adapter(out_dir, fresh.pretrained_model(), "4")
    return write_head(out_dir, modules, config, backbone_source, peft={
        "peft_type": PEFT_TYPES[kind], **details, "target_modules": targets, "modules_to_save": to_save,
        "base_model_name_or_path": base_reference, "base_written": written,
        # the checkpoint, for the import to find it again (None: base/ is the base)
        "base": None if written else {**identify(source),
                                      "sha256": (config.get("fingerprint") or {}).get("sha256")},
        "transformers_names": peft_names, "max_abs_hidden_difference": difference,
    })


def exported_updates(petl_model, config):
    """``(module class, [(name, update module)], modules_to_save)`` of a model PEFT can hold; the
    update names are the lobe's, ``modules_to_save`` relative to its transformers model.
    ``PETLModelError`` naming what else the model has."""
    where = config["model_dir"]
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
    kinds = {type(m) for _, m in updates}
    if len(kinds) != 1 or next(iter(kinds)) not in PEFT_TYPES:
        raise PETLModelError(f"{where}: the '{config['method']}' model mixes "
                             f"{sorted(k.__name__ for k in kinds)}; a PEFT adapter holds one type.")
    points = {lobe.locate(n, list(LORA_TARGETS))[0] for n, _ in updates}
    check_model_type(config.get("model_type"), where, points)
    prefix = lobe_prefix(lobe)
    update_params = {f"{n}.{p}" for n, m in updates for p, _ in m.named_parameters()
                     if not p.startswith("pretrained_module.")}
    trained = [n for n, p in lobe.named_parameters() if p.requires_grad and n not in update_params]
    to_save = sorted({n.rsplit(".", 1)[0][len(prefix):] for n in trained})
    return kinds.pop(), updates, to_save


def write_base(fresh, source, out_dir):
    """Writes the run's base (the lobe ``fresh``'s transformers model, with the run's
    ``preprocessor_config.json``) to ``out_dir/base/`` when it differs from the checkpoint
    ``source``. Returns ``(base_model_name_or_path, written)``: ``base`` (relative to the adapter
    folder), else ``source``'s Hub id or its folder's name (no path of this machine)."""
    if fresh.changed_from_checkpoint():
        fresh.pretrained_model().save_pretrained(out_dir / BASE_FOLDER)
        write_preprocessor_config(fresh, source, out_dir / BASE_FOLDER)  # the run's input settings
        return BASE_FOLDER, True
    if (out_dir / BASE_FOLDER).is_dir():  # a previous export's base, no longer this model's
        shutil.rmtree(out_dir / BASE_FOLDER)
    return shareable_name(source), False


def peft_model_of(kind, updates, to_save, fresh, lobe, base_reference, config):
    """``(PeftModel, target_modules, details)``: PEFT's model of ``kind`` on the base lobe
    ``fresh``'s transformers model, holding the tensors of our ``updates`` and of the saved modules
    of our adapted ``lobe`` (in eval mode)."""
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    where, base, prefix = config["model_dir"], fresh.pretrained_model(), lobe_prefix(lobe)
    adapted = {n[len(prefix):] for n, _ in updates}
    targets = peft_targets(adapted, [n for n, _ in base.named_modules()])
    peft_config, details = peft_config_of(kind, updates, targets, to_save, base_reference,
                                          config["options"])
    with warnings.catch_warnings():  # PEFT names the base by its loading path; we set ours below
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(base, peft_config)
    peft_model.peft_config["default"].base_model_name_or_path = base_reference
    inner = peft_model.base_model.model
    wrapped = {n for n, m in inner.named_modules() if isinstance(m, BaseTunerLayer)}
    if wrapped != adapted:
        raise PETLModelError(f"{where}: PEFT adapted {len(wrapped)} modules, ours {len(adapted)} "
                             f"(target_modules {targets}); please report this.")
    with torch.no_grad():
        copy_into_peft(kind, updates, peft_model, prefix, where)
        for name in to_save:
            wrapper = inner.get_submodule(name)
            wrapper.modules_to_save["default"].load_state_dict(lobe.get_submodule(prefix + name).state_dict())
    return peft_model.eval(), targets, details


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
