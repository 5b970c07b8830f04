"""Reading a checkpoint's files safely: nothing but tensors and plain data is unpickled
(``torch.load(..., weights_only=True)``, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` does not
override, and ``weights_only_loads`` forcing every other ``torch.load`` of a block to it), and what
is read is checked against the object it loads into (every tensor present, shapes, optimiser
groups, scheduler keys) before that object changes. ``SAFE_LOAD_HOOKS`` are the load hooks
``petl_modules.training.checkpointing.Checkpointer`` uses in place of SpeechBrain's
(``REPLACED_HOOKS``)."""

import contextlib
import math
import os
from collections.abc import Mapping

import torch
from speechbrain.nnet.adapters import AdaptedModel
from speechbrain.utils import _workarounds, checkpoints

from petl_modules.contract import petl_buffers

_FORCE_SAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loads():
    """Within it, every ``torch.load`` of this process reads tensors and plain data only.

    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is cleared and ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set (torch
    reads both at each call), then both are restored. This covers load hooks that are not ours.
    """
    saved = {name: os.environ.get(name) for name in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ.pop(_FORCE_UNSAFE, None)
    os.environ[_FORCE_SAFE] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _weights_only_reason(message):
    """The useful part of torch's long ``weights_only`` refusal message."""
    detail = message.split("WeightsUnpickler error:", 1)[-1]
    detail = detail.split("Check the documentation", 1)[0].split(". Please use", 1)[0]
    return " ".join(detail.split())


def load_tensors(path):
    """Reads a ``.ckpt`` file with ``torch.load(..., weights_only=True)`` onto the CPU.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    object
        Tensors and plain data (dict, list, tuple, str, numbers, None).

    Raises
    ------
    ValueError
        The file is not a torch file, is damaged, or holds pickled objects (refused: none of them
        is created, nothing in the file is run).
    """
    try:
        with weights_only_loads():
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        if not os.path.isfile(path):
            raise  # missing, a folder, ...: its own message says it
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(f"it is not a readable torch file (truncated or damaged?): {reason}") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError, ...
        text = str(err)
        if "Unsupported global" in text:
            raise ValueError(
                "it holds pickled Python objects, not only tensors and plain data: refused, "
                f"nothing in it was run ({_weights_only_reason(text)})"
            ) from None
        if "Weights only load failed" in text:
            text = _weights_only_reason(text)
        text = text.split(". ", 1)[0].rstrip(".")  # torch's first sentence says it
        reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
        raise ValueError(f"it is not a readable torch file (truncated or damaged?): {reason}") from None


def _as_mapping(state, what):
    if not isinstance(state, Mapping):
        raise ValueError(f"it should hold {what} (a dict) but holds a {type(state).__name__}")
    return state


def _names(names, limit=5):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_tensors(module, state, required):
    """Raises ValueError unless ``state`` has every name in ``required``, nothing the module lacks,
    and tensors of the module's shapes."""
    current = module.state_dict()
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in current]
    wrong = []
    for key, value in state.items():
        if key in current and isinstance(current[key], torch.Tensor):
            if not isinstance(value, torch.Tensor):
                wrong.append(f"{key} (a {type(value).__name__}, not a tensor)")
            elif value.shape != current[key].shape:
                wrong.append(f"{key} {tuple(value.shape)} (the model's: {tuple(current[key].shape)})")
    problems = []
    if missing:
        problems.append(f"tensors missing: {_names(missing)}")
    if unexpected:
        problems.append(f"tensors the model does not have: {_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_names(wrong)}")
    if problems:
        raise ValueError("; ".join(problems) + " (saved by another model setup, or damaged)")


# ==================================================================== our load hooks
def _load_module(module, path, end_of_epoch):
    """A ``torch.nn.Module``: every tensor of its ``state_dict``, of the right shape."""
    del end_of_epoch
    state = dict(_as_mapping(load_tensors(path), "a module's tensors"))
    state = checkpoints.hook_on_loading_state_dict_checkpoint(state)  # SpeechBrain's key renames
    _check_tensors(module, state, module.state_dict().keys())
    module.load_state_dict(state, strict=True)


def _load_adapted_model(model, path, end_of_epoch):
    """An ``AdaptedModel`` (checkpoints hold its trained tensors only): every trained tensor
    (``requires_grad`` parameters and PETL module buffers) present, of the right shape."""
    del end_of_epoch
    state = dict(_as_mapping(load_tensors(path), "the trained tensors of a model"))
    trained = {n for n, p in model.state_dict(keep_vars=True).items() if p.requires_grad}
    _check_tensors(model, state, trained | set(petl_buffers(model)))
    model.load_state_dict(state, strict=False)


# Per-parameter optimiser state that has the parameter's shape (Adam(W), SGD, RMSprop, Adagrad, ...).
_PARAMETER_SHAPED = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                     "sum", "acc_delta", "exp_inf", "grad_avg", "ax", "prev", "step_size"}


def _load_optimizer(optimizer, path, end_of_epoch):
    """A ``torch.optim.Optimizer``: same groups and parameter counts, state of the parameters' shapes."""
    del end_of_epoch
    state = _as_mapping(load_tensors(path), "an optimiser state")
    groups = state.get("param_groups")
    per_parameter = state.get("state")
    if not isinstance(groups, list) or not isinstance(per_parameter, Mapping) or not all(
            isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups):
        raise ValueError("it is not an optimiser state (no 'state' and 'param_groups')")
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(
            f"its parameter groups have {[len(g['params']) for g in groups]} parameters, the "
            f"optimiser's {[len(g['params']) for g in optimizer.param_groups]} (saved for another "
            "model setup, or damaged)")
    parameters = {}
    for saved, group in zip(groups, optimizer.param_groups):
        parameters.update(zip(saved["params"], group["params"]))
    for key, values in per_parameter.items():
        if key not in parameters or not isinstance(values, Mapping):
            raise ValueError(f"it holds state for parameter {key!r}, which none of its groups lists")
        for name, value in values.items():
            shape = parameters[key].shape
            if name in _PARAMETER_SHAPED and isinstance(value, torch.Tensor) and value.shape != shape:
                raise ValueError(
                    f"its {name} of parameter {key} has shape {tuple(value.shape)}, the parameter "
                    f"{tuple(shape)} (saved for another model setup, or damaged)")
    optimizer.load_state_dict(state)


def is_number(value):
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _check_plain_state(current, state, what):
    """Raises ValueError unless ``state`` has every key of ``current`` with a value of a like kind."""
    missing = [k for k in current if k not in state]
    if missing:
        raise ValueError(f"it lacks the keys {_names(missing)} of {what} (damaged, or not one)")
    for key, value in current.items():
        saved = state[key]
        if isinstance(value, (int, float)) and not isinstance(saved, (int, float)):
            raise ValueError(f"its {key} is a {type(saved).__name__}, not a number")
        if isinstance(value, list) and (not isinstance(saved, list) or len(saved) != len(value)):
            raise ValueError(f"its {key} is not a list of {len(value)} values")


def _load_scheduler(scheduler, path, end_of_epoch):
    """A learning rate scheduler: the keys of its own state, with values of the same kind (its
    ``load_state_dict`` sets attributes from any key, so others are left out)."""
    del end_of_epoch
    state = _as_mapping(load_tensors(path), "a scheduler state")
    current = scheduler.state_dict()
    _check_plain_state(current, state, "a scheduler state")
    scheduler.load_state_dict({k: state[k] for k in current})


def _load_scaler(scaler, path, end_of_epoch):
    """A ``GradScaler`` (mixed precision)."""
    del end_of_epoch
    state = _as_mapping(load_tensors(path), "a GradScaler state")
    if scaler.is_enabled():
        _check_plain_state(scaler.state_dict(), state, "a GradScaler state")
    scaler.load_state_dict(state)


# Replace SpeechBrain's hooks that call torch.load without weights_only (and AdaptedModel's, which
# loads non-strictly), looked up along the object's class hierarchy like SpeechBrain's defaults.
SAFE_LOAD_HOOKS = {
    torch.nn.Module: _load_module,
    AdaptedModel: _load_adapted_model,
    torch.optim.Optimizer: _load_optimizer,
    torch.optim.lr_scheduler.LRScheduler: _load_scheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau: _load_scheduler,
    torch.amp.GradScaler: _load_scaler,
}
REPLACED_HOOKS = (checkpoints.torch_recovery, checkpoints.torch_parameter_transfer,
                   _workarounds._cycliclrloader, AdaptedModel.loader)
