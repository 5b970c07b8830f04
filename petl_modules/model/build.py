"""A model built in plain Python from its ``ModelSpec``: the base checkpoint's lobe loaded once (its
model type checked), the method's modules and the head attached, and the tensors a model folder
holds (``trained_tensor_names``, ``trained_state``). Saving and loading the folder:
``petl_modules.model.folder``."""

import contextlib

import torch

from petl_modules.backbones import FAMILIES
from petl_modules.backbones.base import checkpoint_model_type, preserved_rng, quiet_transformers
from petl_modules.contract import petl_buffers
from petl_modules.methods.classifier import Classifier
from petl_modules.methods.prompt import prompt_span
from petl_modules.model.spec import PETLModelError


# ==================================================================== building
def build_modules(spec, source):
    """``{"petl_model": AdaptedBackbone, "classifier": Classifier}`` of ``spec`` on the base
    checkpoint ``source`` (loaded once), the trained tensors at their initial values. Loading
    leaves the global random state as it was."""
    return attach_modules(spec, build_lobe(spec, source))


def build_lobe(spec, source):
    """The lobe of ``spec``'s base, loaded from ``source`` (its model type checked first)."""
    lobe_class = spec.backbone.lobe_class()
    if spec.backbone.model_type:
        try:
            found = checkpoint_model_type(source)
        except (OSError, ValueError):
            found = None  # unreadable: building it says why
        if found is not None and FAMILIES.get(found) is not lobe_class:
            raise PETLModelError(
                f"The backbone checkpoint '{source}' is a {found} model, but the model was trained "
                f"on a {spec.backbone.model_type} one ({spec.backbone.name()}): pass "
                "--backbone_source=<a copy of that checkpoint>."
            )
    with quiet_transformers(), preserved_rng():
        return lobe_class(source, **spec.backbone.options)


def attach_modules(spec, lobe, device=None):
    """``{"petl_model", "classifier"}`` of ``spec`` on a lobe already built (the method's modules
    attached to it, the head), the trained tensors at their initial values; the global random
    state is left as it was. ``device="meta"``: tensors without memory (``planned_shapes``)."""
    try:
        with preserved_rng(), torch.device(device) if device else contextlib.nullcontext():
            petl_model = spec.method.build(lobe)
            if device != "meta":
                spec.method.restore(petl_model, spec.method_state)
            classifier = Classifier(lobe.hidden_size, len(spec.class_names), spec.pooling,
                                    prompt_span(petl_model), backbone=lobe)
    except ValueError as err:  # an option that does not fit this backbone
        raise PETLModelError(f"The '{spec.method.name}' model cannot be built on "
                             f"{spec.backbone.name()}: {err}") from None
    except (MemoryError, RuntimeError) as err:  # the allocator's own error, e.g. "can't allocate"
        if isinstance(err, RuntimeError) and "alloc" not in str(err).lower():
            raise
        raise PETLModelError(
            f"Not enough memory to build the '{spec.method.name}' model ({spec.method.to_dict()}) "
            f"on {spec.backbone.name()}: {str(err).splitlines()[0][:200]}. Its options ask for "
            "more than this machine has: check them, or load it on a larger machine.") from None
    return {"petl_model": petl_model, "classifier": classifier}


# ==================================================================== what is saved
def trained_tensor_names(modules):
    """Names (``<module>.<state_dict key>``) of what a PETL model folder holds.

    Arguments
    ---------
    modules : dict
        ``{"petl_model": AdaptedBackbone, "classifier": Classifier}``.

    Returns
    -------
    (list of str, list of str)
        The trained parameters (``requires_grad``), and the buffers of PETL modules (e.g. the
        running statistics of a conformer adapter's BatchNorm; the modules they wrap excluded).
    """
    parameters, buffers = [], []
    for key in ("petl_model", "classifier"):
        module = modules[key]
        state = module.state_dict(keep_vars=True)
        parameters += [f"{key}.{n}" for n, p in module.named_parameters()
                       if p.requires_grad and n in state]
        buffers += [f"{key}.{n}" for n in petl_buffers(module)]
    return parameters, buffers


def trained_state(modules):
    """``{name: tensor}`` of every tensor a PETL model folder holds (CPU copies)."""
    parameters, buffers = trained_tensor_names(modules)
    states = {key: modules[key].state_dict() for key in ("petl_model", "classifier")}
    out = {}
    for full in parameters + buffers:
        key, name = full.split(".", 1)
        out[full] = states[key][name].detach().cpu().clone().contiguous()
    return out, parameters, buffers
