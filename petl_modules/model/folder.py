"""The PETL model folder: a model built in plain Python from its ``ModelSpec``, saved and loaded.

::

    petl_model/
    ├── petl_config.json          what defines the model (``petl_modules.model.spec``, format 4)
    └── petl_weights.safetensors  only the trained tensors: PETL modules, trained LayerNorms/biases,
                                  head (full fine-tuning: the trained layers), plus the running
                                  statistics of BatchNorms inside PETL modules

``build_modules(spec, source)`` loads the base checkpoint once (its lobe, by family) and attaches
the method's modules and the head; ``save_model_folder`` writes the two files;
``load_model`` reads the config (as data, ``read_spec``), builds, checks that the base is the one
the model was trained on (the weights fingerprint the lobe took while loading: the base is not
loaded twice) and loads the tensors from safetensors: exactly the built model's trained tensors,
with their shapes, or an error naming the missing and unexpected ones. Building:
``petl_modules.model.build``.

Example
-------
>>> modules, config = load_petl_model("results/FSC/adapter/10/petl_model")  # doctest: +SKIP
>>> merge_petl_model(modules)  # fold LoRA into the backbone weights  # doctest: +SKIP
"""

import copy
import logging
import os
from pathlib import Path

import torch

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from petl_modules.contract import PETLModule
from petl_modules.files import current_umask, read_json, write_json_atomic
# Building (re-exported here: the model layer's users import it from this module).
from petl_modules.model.build import (  # noqa: F401
    attach_modules,
    build_lobe,
    build_modules,
    trained_state,
    trained_tensor_names,
)
from petl_modules.model.spec import (
    CONFIG_FILE,
    FOLDER_NAME,
    WEIGHTS_FILE,
    PETLModelError,
    spec_from_json,
)

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config is a few KB; never read a huge file into memory
DAMAGED = " The folder is damaged: copy it again from where it came from."


# ==================================================================== what is saved
def save_model_folder(folder, spec, modules):
    """Writes ``petl_weights.safetensors`` (the trained tensors of ``modules``) and
    ``petl_config.json`` (``spec``, format 4) into ``folder`` (created; its two files replaced).

    Returns
    -------
    int
        How many trained parameters were saved.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec.check()
    state, parameters, _ = trained_state(modules)
    trained = sum(state[n].numel() for n in parameters)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "trained_params": str(trained)})
    os.chmod(folder / WEIGHTS_FILE, 0o666 & ~current_umask())  # safetensors makes it owner-only
    write_json_atomic(folder / CONFIG_FILE, spec.to_json())
    return trained


def trained_params(folder):
    """How many trained parameters a model folder holds (the weights file's header says; None when
    it does not)."""
    try:
        with safe_open(str(Path(folder) / WEIGHTS_FILE), "pt") as weights:
            value = (weights.metadata() or {}).get("trained_params")
    except Exception:  # noqa: BLE001 (a damaged file is reported when it is loaded)
        return None
    return int(value) if value and value.isdigit() else None


def folder_view(spec, folder, source=None):
    """``spec.view`` of a model folder, with ``trained_params`` (formats 1-3 recorded it in their
    config, format 4 in the weights file's header)."""
    view = spec.view(folder, source)
    if view.get("trained_params") is None:
        view["trained_params"] = trained_params(folder)
    return view


def folder_size(folder):
    """Bytes of the files in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


# ==================================================================== loading
def model_folder(model_dir):
    """The ``petl_model/`` folder of ``model_dir`` (itself, or the experiment folder holding one);
    ``PETLModelError`` when it lacks its two files."""
    model_dir = Path(model_dir)
    if model_dir.is_dir() and (model_dir / FOLDER_NAME / CONFIG_FILE).is_file():
        model_dir = model_dir / FOLDER_NAME  # an experiment folder was given
    if not (model_dir / CONFIG_FILE).is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise PETLModelError(
            f"'{model_dir}' is not a PETL model folder: it must hold {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}. Every training run writes one in <experiment_folder>/{FOLDER_NAME}/."
        )
    return model_dir


def read_spec(model_dir):
    """``(ModelSpec, folder)`` of a model folder, its config read as data and checked."""
    folder = model_folder(model_dir)
    data = read_json(folder / CONFIG_FILE, "a PETL model config", PETLModelError, MAX_CONFIG_BYTES,
                     DAMAGED)
    return spec_from_json(data, folder / CONFIG_FILE), folder


def read_config(model_dir):
    """The checked config of a model folder as a flat dict (``ModelSpec.view``; ``model_dir``:
    the folder)."""
    spec, folder = read_spec(model_dir)
    return folder_view(spec, folder)


def check_fingerprint(spec, lobe, where):
    """Raises ``PETLModelError`` when the lobe's checkpoint is not the one ``spec`` was trained on
    (compares the weights' fingerprints; the lobe took its own while loading)."""
    expected = spec.backbone.fingerprint
    if not expected:
        logger.warning(f"{where} has no backbone fingerprint; not checked.")
        return
    found = lobe.fingerprint(exclude=expected.get("excluded", ()))
    if found["sha256"] != expected["sha256"]:
        raise PETLModelError(
            f"The backbone checkpoint '{lobe.source}' is not the one the PETL model in {where} was "
            f"trained on ('{spec.backbone.name()}'): the fingerprints of their weights differ "
            f"({found['sha256'][:12]} != {expected['sha256'][:12]}). Pass --backbone_source=<a "
            f"copy of {spec.backbone.name()}> (saved with save_pretrained)."
        )


def stored_shapes(path):
    """``{name: (shape, dtype name)}`` of a safetensors file, from its header only (no tensor is
    read); ``PETLModelError`` for a damaged file."""
    try:
        with safe_open(str(path), "pt") as weights:
            return {name: (tuple(weights.get_slice(name).get_shape()), weights.get_slice(name).get_dtype())
                    for name in weights.keys()}
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        raise PETLModelError(f"{path} is not a readable safetensors file ({err}); copy the folder "
                             "again from where it came from.") from None


def meta_copy(module):
    """A copy of ``module`` whose parameters and buffers are on the meta device (no memory)."""
    memo = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, torch.nn.Parameter):
            meta = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(module, memo)


def trained_shapes(modules):
    """``{name: (shape, floating)}`` of the tensors a model folder of ``modules`` holds."""
    parameters, buffers = trained_tensor_names(modules)
    own = {f"{key}.{n}": t for key in ("petl_model", "classifier")
           for n, t in modules[key].state_dict().items()}
    return {name: (tuple(own[name].shape), own[name].dtype.is_floating_point)
            for name in parameters + buffers}


def planned_shapes(spec, lobe):
    """``(trained_shapes, new parameters)`` of ``spec``'s model on ``lobe``, from a build on the
    meta device (nothing allocated); ``PETLModelError`` when its options ask for more new
    parameters than the backbone itself has (a size option out of proportion with it)."""
    modules = attach_modules(spec, meta_copy(lobe), device="meta")
    own = {id(p) for p in modules["petl_model"].adapted_model.parameters()} - {
        id(p) for m in modules["petl_model"].modules() if isinstance(m, PETLModule)
        for p in m.parameters()}
    new = sum(p.numel() for key in ("petl_model", "classifier")
              for p in modules[key].parameters() if id(p) not in own)
    base = sum(p.numel() for p in lobe.parameters())
    head = sum(p.numel() for p in modules["classifier"].parameters())
    if new - head > base:
        raise PETLModelError(
            f"The '{spec.method.name}' model's options ({spec.method.to_dict()}) ask for "
            f"{new - head:,} new parameters, more than the backbone {spec.backbone.name()} has "
            f"({base:,}): a size option out of proportion with the backbone; nothing was built.")
    return trained_shapes(modules), new


def check_stored_shapes(expected, path, spec):
    """Raises ``PETLModelError`` unless the safetensors file ``path`` holds exactly the tensors
    ``expected`` (``{name: (shape, floating)}``), compared with its header alone."""
    shapes = stored_shapes(path)
    head = shapes.get("classifier.head.weight", ((),))[0]
    if len(head) == 2 and head[0] != len(spec.class_names):
        raise PETLModelError(
            f"{Path(path).parent}: {len(spec.class_names)} class_names but the saved head has "
            f"{head[0]} outputs; the config was edited by hand."
        )
    problems = [f"{name}: missing" for name in sorted(set(expected) - set(shapes))]
    problems += [f"{name}: not a tensor of the rebuilt model" for name in sorted(set(shapes) - set(expected))]
    floating = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
    for name in sorted(set(expected) & set(shapes)):
        (shape, dtype), (own_shape, own_floating) = shapes[name], expected[name]
        if own_shape != shape or own_floating != (dtype in floating):
            problems.append(f"{name} has shape {shape} ({dtype}), the rebuilt model {own_shape} "
                            f"({'floating point' if own_floating else 'integer'})")
    if problems:
        raise PETLModelError(
            f"The tensors in {path} do not fit the '{spec.method.name}' model rebuilt from its "
            f"config ({len(problems)} problem(s)):\n  " + "\n  ".join(problems[:10])
            + "\nThe folder was damaged, edited by hand or written by another version of the code."
        )


def load_trained_state(modules, model_dir, spec):
    """Loads ``petl_weights.safetensors`` over built ``modules``: exactly the tensors the built
    model trains must be there, with their shapes (missing or unexpected ones are an error),
    compared with the file's header before any tensor is read."""
    path = Path(model_dir) / WEIGHTS_FILE
    check_stored_shapes(trained_shapes(modules), path, spec)
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        raise PETLModelError(f"{path} is not a readable safetensors file ({err}); copy the folder "
                             "again from where it came from.") from None
    for key in ("petl_model", "classifier"):
        part = {n.split(".", 1)[1]: t for n, t in state.items() if n.split(".", 1)[0] == key}
        modules[key].load_state_dict(part, strict=False)  # the frozen rest is the base's


def load_model(model_dir, backbone_source=None, device="cpu", check=True):
    """Rebuilds a trained model from its folder on its base checkpoint (loaded once).

    Arguments
    ---------
    model_dir : str or Path
        A ``petl_model/`` folder (or the experiment folder holding one).
    backbone_source : str, optional
        A copy of the base checkpoint (a local folder, or a Hub id). Default: the model's Hub
        id, or the local folder recorded for its fingerprint on this machine
        (``BackboneRef.source``).
    device : str
        Where to put the modules.
    check : bool
        Compare the base checkpoint's fingerprint with the one recorded at training (default).

    Returns
    -------
    (ModelSpec, dict, Path, str)
        The spec, ``{"petl_model", "classifier"}`` in eval mode on ``device``, the folder and the
        base checkpoint's source.

    Raises
    ------
    PETLModelError
        Not a PETL model folder, or the base checkpoint is not the one it was trained on.
    """
    spec, folder = read_spec(model_dir)
    source = spec.backbone.source(backbone_source, where=str(folder))
    lobe = build_lobe(spec, source)
    if check:
        check_fingerprint(spec, lobe, folder)
    lobe.release_checkpoint()
    # the shapes the model will have, against the file's header, before anything is allocated
    check_stored_shapes(planned_shapes(spec, lobe)[0], folder / WEIGHTS_FILE, spec)
    modules = attach_modules(spec, lobe)
    load_trained_state(modules, folder, spec)
    for module in modules.values():
        module.to(device).eval()
    return spec, modules, folder, source


def load_petl_model(model_dir, backbone_source=None, device="cpu", check=True):
    """``(modules, config)`` of a model folder: ``load_model``'s modules and the flat view of its
    config (``ModelSpec.view``)."""
    spec, modules, folder, source = load_model(model_dir, backbone_source, device, check)
    return modules, folder_view(spec, folder, source)


# ==================================================================== merging
def merge_petl_model(modules):
    """Folds LoRA, DoRA, (IA)3 and VeRA updates into the backbone weights, in place (zero-overhead
    inference).

    Every such wrapper becomes a plain ``nn.Linear`` holding its merged weight and bias (e.g.
    LoRA's ``W + s B A``; ``petl_modules.methods.lora.merge_lora``). BitFit biases and fine-tuned
    layers are trained in place already: nothing to fold. Other PETL modules (adapters, prompts,
    prefixes, MoA) and the layer sum's weights stay.

    Returns
    -------
    list of str
        Names of the merged modules.
    """
    from petl_modules.methods.lora import merge_lora

    return merge_lora(modules["petl_model"])


def unmerged_petl_modules(model):
    """``[(name, class name)]`` of the PETL modules left in ``model`` (outermost only)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, PETLModule) and not any(name.startswith(n + ".") for n, _ in found):
            found.append((name, type(module).__name__))
    return found
