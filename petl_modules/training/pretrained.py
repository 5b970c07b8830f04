"""The PETL model folder: the few trained tensors of a run, and how they go back onto the backbone.

Every run writes ``<experiment_folder>/petl_model/`` from its best validation checkpoint (the hook
``save_run_petl_model`` in ``petl_modules.training.recipe.Run.finish_fold``)::

    petl_model/
    ├── petl_config.json        how to rebuild the model (see below)
    └── petl_weights.safetensors only the trained tensors: PETL modules, trained LayerNorms/biases,
                                 head (full fine-tuning: the trained layers), plus the running
                                 statistics of BatchNorms inside PETL modules

``petl_config.json`` is plain JSON data (``format_version`` 3): the backbone ``family`` (and the
checkpoint's ``model_type``) and ``backbone_source``, a ``fingerprint`` of the base checkpoint's
weights (checked at load: a model is never put silently onto another backbone), the ``method`` (a
name from the registry of method files, ``hparams/*.yaml``) and its ``options`` (plain values), the
``input`` settings (the lobe's ``input_processor.config()``), the ``evaluation`` protocol the run
was tested with (``eval_windows``, ``window_hop_seconds``, ``window_pooling``; ``classify``
follows it; folders of format_version 1 and 2, which lack it, were tested on the first clip), the
``class_names`` in index order, the ``task`` (``single_label`` or ``multilabel``; older folders:
single_label) with, for multi-label, the per-class decision ``thresholds`` chosen on the
validation split, and the names of the saved tensors.

A folder may come from someone else, so loading it never executes anything it says: the config
is read as JSON (at most 16 MiB) and checked against a schema (unknown keys, wrong types, YAML
tags, references or arithmetic the yaml would evaluate, paths of the run, an attention
implementation other than sdpa/eager, option values out of range and newer format versions are
refused, naming what was found); the model is rebuilt from OUR method file
with the options set as plain values (``petl_modules.training.compose.compose_model_hparams``); the tensors
are read from safetensors, and exactly the rebuilt model's trained tensors must be there. Folders
of format_version 1 (which also stored the run's yaml text) load the same way: that text is
never parsed.

Example
-------
>>> modules, config = load_petl_model("results/FSC/adapter/10/petl_model")  # doctest: +SKIP
>>> merge_petl_model(modules)  # fold LoRA into the backbone weights  # doctest: +SKIP
"""

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

from petl_modules.backbones import lobe_class
from petl_modules.contract import PETLModule, petl_buffers
from petl_modules.training.run_folder import current_umask, write_json_atomic
from petl_modules.training.windows import EvalProtocol

logger = logging.getLogger(__name__)

FOLDER_NAME = "petl_model"
CONFIG_FILE = "petl_config.json"
WEIGHTS_FILE = "petl_weights.safetensors"
FORMAT_VERSION = 3  # 2: no yaml text, the model rebuilt from method + options; 3: "evaluation",
# "task" and "thresholds" (multi-label)

# Run-only keys left out of the config's ``options`` (paths and plumbing, not the model).
RUN_ONLY_KEYS = {
    "data_folder", "output_folder", "experiment_folder", "save_folder", "train_log",
    "manifest_folder", "num_workers", "skip_bad_files", "window_results", "manifest",
}


class PETLModelError(ValueError):
    """A PETL model folder that cannot be loaded as asked (missing files, wrong backbone)."""


# ==================================================================== sizes and fingerprints
def human_size(num_bytes):
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as file managers show them)."""
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def _tensor_bytes(tensor):
    """The raw bytes of ``tensor`` (any dtype, bfloat16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def backbone_fingerprint(source, exclude=()):
    """A fingerprint of the weights of the base checkpoint ``source`` as its lobe loads them.

    It hashes every tensor of the lobe's ``checkpoint_state(source)`` (transformers lobes:
    ``AutoModel.from_pretrained(source)``; name, dtype, shape, bytes) in name order, so the hub
    checkpoint and a local ``save_pretrained`` copy of it have the same fingerprint, and any other
    checkpoint a different one. Tensors the checkpoint does not hold (randomly initialised on
    loading) are left out.

    Arguments
    ---------
    source : str
        Hub id or local ``save_pretrained`` folder.
    exclude : iterable of str
        Further tensor names to leave out (those left out when the fingerprint was first taken).

    Returns
    -------
    dict
        ``sha256`` (hex digest), ``tensors`` (how many were hashed), ``excluded`` (names left out)
        and ``bytes`` (size of the checkpoint's weights).
    """
    folder = Path(str(source))
    stamp = max((p.stat().st_mtime_ns for p in folder.iterdir()), default=0) if folder.is_dir() else 0
    key = (str(source), stamp, tuple(sorted(exclude)))
    if key not in _FINGERPRINTS:  # every fold of a run, every load of a session: hash once
        _FINGERPRINTS[key] = _fingerprint(str(source), set(exclude))
    return dict(_FINGERPRINTS[key])


_FINGERPRINTS = {}


def _fingerprint(source, exclude):
    # Loading initialises the tensors the checkpoint lacks from the global generators: keep their
    # state, so that a run draws the same numbers whether or not it fingerprinted first.
    with _quiet_transformers(), _preserved_rng():
        state, missing = lobe_class(source).checkpoint_state(source)
    excluded = set(missing) | set(exclude)
    digest = hashlib.sha256()
    count = total = 0
    for name, tensor in sorted(state.items()):
        total += tensor.numel() * tensor.element_size()
        if name in excluded:
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
        count += 1
    return {"sha256": digest.hexdigest(), "tensors": count, "excluded": sorted(excluded),
            "bytes": total}


@contextlib.contextmanager
def _quiet_transformers():
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
def _preserved_rng():
    """Restores the python/numpy/torch random states after the block (the yaml seeds them)."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


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


def method_options(hparams):
    """The plain options of a run that describe the model (run-only paths left out)."""
    from petl_modules.training.compose import scalar_hparams

    return {k: v for k, v in scalar_hparams(hparams).items()
            if k not in RUN_ONLY_KEYS and not k.startswith("__")}


def save_petl_model(folder, modules, config):
    """Writes ``petl_weights.safetensors`` and ``petl_config.json`` into ``folder``.

    Arguments
    ---------
    folder : str or Path
        The PETL model folder (created, its two files replaced).
    modules : dict
        ``{"petl_model", "classifier"}`` holding the weights to save.
    config : dict
        The JSON config (``build_config``); the tensor lists and sizes are added here.

    Returns
    -------
    dict
        The config as written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, parameters, buffers = trained_state(modules)
    config = dict(config)
    config["format_version"] = FORMAT_VERSION
    config["parameters"] = parameters
    config["buffers"] = buffers
    config["trained_params"] = sum(state[n].numel() for n in parameters)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    os.chmod(folder / WEIGHTS_FILE, 0o666 & ~current_umask())  # safetensors makes it owner-only
    write_json_atomic(folder / CONFIG_FILE, config)
    return config


def folder_size(folder):
    """Bytes of the files in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def build_config(hparams, class_names, fingerprint=None, thresholds=None):
    """The JSON config of a PETL model folder (see the module docstring): plain data only."""
    from petl_modules.training.metrics import is_multilabel

    backbone = hparams["backbone"]
    processor = backbone.input_processor
    return {
        "family": backbone.family,
        "model_type": getattr(getattr(backbone, "config", None), "model_type", None),
        "backbone_source": str(backbone.source),
        "fingerprint": fingerprint,
        "method": hparams["method"],
        "options": method_options(hparams),
        "input": processor.config() if hasattr(processor, "config") else None,
        "evaluation": EvalProtocol.from_options(hparams).config(),
        "pooling": getattr(hparams["classifier"], "pooling", None),
        "dataset": hparams.get("dataset"),
        "fold": hparams.get("fold") if hparams.get("folds") else None,
        "class_names": [str(name) for name in class_names],
        "task": "multilabel" if is_multilabel(hparams) else "single_label",
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
    }


def save_run_petl_model(hparams, class_names, thresholds=None):
    """Writes ``<experiment_folder>/petl_model/`` of a finished run and logs its size
    (``thresholds``: the per-class decision thresholds of a multi-label model).

    Called by ``Run.finish_fold`` on the main process, after the test, when the modules hold
    the best validation checkpoint's weights.

    Returns
    -------
    Path
        The PETL model folder.
    """
    folder = Path(hparams["experiment_folder"]) / FOLDER_NAME
    try:
        fingerprint = backbone_fingerprint(hparams["backbone_source"])
    except (OSError, ValueError) as err:  # never lose a finished run over the fingerprint
        logger.error(f"Could not fingerprint {hparams['backbone_source']} ({err}); {folder} will "
                     "load onto any checkpoint of the same shape without a check.")
        fingerprint = None
    config = build_config(hparams, class_names, fingerprint, thresholds)
    config = save_petl_model(folder, hparams["modules"], config)
    backbone_bytes = fingerprint["bytes"] if fingerprint else sum(
        t.numel() * t.element_size() for t in hparams["backbone"].state_dict().values())
    logger.info(
        f"PETL model saved to {folder}: petl_model {human_size(folder_size(folder))}, "
        f"backbone {human_size(backbone_bytes)} "
        f"({config['trained_params']:,} trained parameters)"
    )
    return folder


# ==================================================================== loading
# A PETL model folder may come from someone else: it is data. Nothing in it is imported,
# instantiated, unpickled or parsed as YAML. The config is JSON whose keys and value types are
# checked here; the model is rebuilt from OUR method file (a registry name) with the folder's plain
# options; the tensors come from safetensors and must be exactly the rebuilt model's trained ones.
# format_version policy: a change that adds keys bumps FORMAT_VERSION; this reader accepts every
# version up to its own and refuses a newer folder.
CONFIG_SCHEMA = {
    # key: (allowed JSON types, required)
    "format_version": ((int,), True),
    "family": ((str,), True),
    "model_type": ((str, type(None)), False),
    "backbone_source": ((str,), True),
    "fingerprint": ((dict, type(None)), False),
    "method": ((str,), True),
    "options": ((dict,), True),
    "input": ((dict, type(None)), False),
    "evaluation": ((dict,), False),  # format_version 3
    "pooling": ((str, type(None)), False),
    "dataset": ((str, type(None)), False),
    "fold": ((int, str, type(None)), False),
    "class_names": ((list,), True),
    "parameters": ((list,), True),
    "buffers": ((list,), True),
    "trained_params": ((int,), False),
    # format_version 1 stored the run's composed yaml; it is kept as text and never parsed.
    "hyperparams": ((str,), False),
    # format_version 3: single_label (the default of older folders) or multilabel, and the
    # per-class thresholds of a multi-label model.
    "task": ((str,), False),
    "thresholds": ((list, type(None)), False),
}
PLAIN_SCALARS = (str, int, float, bool, type(None))


def _plain(value, depth=0):
    """True for JSON data of plain types (no nesting beyond lists/dicts of scalars)."""
    if isinstance(value, PLAIN_SCALARS):
        return True
    if isinstance(value, list) and depth < 2:
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 2:
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _looks_like_a_tag(value):
    """A string that YAML would read as a tag or a reference (``!new:...``, ``!ref <x>``)."""
    return isinstance(value, str) and value.lstrip().startswith(("!", "&", "*", "%"))


def _evaluated_by_a_reference(value):
    """A string that HyperPyYAML would dereference or evaluate once interpolated into a ``!ref``
    (``<key>``, or arithmetic with ``**``: ``9**9**9`` never finishes)."""
    return isinstance(value, str) and any(s in value for s in ("<", ">", "**"))


# Options a folder may give only from a fixed set: transformers fetches and runs an attention
# kernel from the hub for other values ('org/repo'; flash_attention_* may fall back to one).
OPTION_CHOICES = {"attn_implementation": ("sdpa", "eager")}
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config is a few KB; never read a huge file into memory


def schema_problems(data, schema):
    """What in the JSON object ``data`` breaks ``schema`` (``{key: (types, required)}``): unknown
    and missing keys, values of other types (a bool is no int); a list of str."""
    problems = [f"unknown key '{key}'" for key in sorted(set(data) - set(schema))]
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                problems.append(f"missing key '{key}'")
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"'{key}' is {type(value).__name__} ({value!r:.60}), expected {allowed}")
    return problems


def validate_config(config, path):
    """Checks a ``petl_config.json`` against the schema; raises ``PETLModelError`` naming every
    problem (unknown or missing keys, wrong types, YAML tags, a newer format)."""
    if not isinstance(config, dict):
        raise PETLModelError(f"{path} is not a PETL model config: expected a JSON object, found "
                             f"{type(config).__name__}.")
    version = config.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise PETLModelError(
            f"{path} has format_version {version}, written by a newer version of PETL-AST; this "
            f"version reads up to {FORMAT_VERSION}. Update PETL-AST (git pull) to load it."
        )
    problems = schema_problems(config, CONFIG_SCHEMA)
    if isinstance(version, int) and version < 1:
        problems.append(f"format_version {version} is not a version (1 or more)")
    if isinstance(config.get("method"), str) and not config["method"].isidentifier():
        problems.append(f"'method' is {config['method']!r}, not a method name")
    for key in ("class_names", "parameters", "buffers"):
        value = config.get(key)
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            problems.append(f"'{key}' must be a list of strings")
    options = config.get("options")
    if isinstance(options, dict):
        for key, value in options.items():
            if not key.isidentifier() or key.startswith("__"):
                problems.append(f"options: '{key}' is not an option name")
            elif key in RUN_ONLY_KEYS:
                problems.append(f"options.{key} is a path or setting of the run, "
                                "not a model option")
            elif key in OPTION_CHOICES and value not in OPTION_CHOICES[key]:
                problems.append(f"options.{key} is {value!r:.60}; a model folder may only give "
                                f"{' or '.join(OPTION_CHOICES[key])}")
            elif not _plain(value) or isinstance(value, dict):
                problems.append(f"options.{key} is not a plain value (found {type(value).__name__})")
            elif any(_looks_like_a_tag(v) for v in (value if isinstance(value, list) else [value])):
                problems.append(f"options.{key} holds a YAML tag or reference ({value!r:.60}): "
                                "options are plain values, never code")
            elif any(_evaluated_by_a_reference(v)
                     for v in (value if isinstance(value, list) else [value])):
                problems.append(f"options.{key} holds a reference or arithmetic ({value!r:.60}) "
                                "that the yaml would evaluate: options are plain values")
        from petl_modules.training.compose import ConfigError, validate_options

        try:
            validate_options({k: v for k, v in options.items() if _plain(v)})
        except ConfigError as err:
            problems.append(f"options: {err}")
    for key in ("input", "fingerprint"):
        if isinstance(config.get(key), dict) and not _plain(config[key]):
            problems.append(f"'{key}' holds something other than plain values")
    evaluation = config.get("evaluation")
    if isinstance(evaluation, dict):
        expected = set(EvalProtocol().config())
        if set(evaluation) != expected:
            problems.append(f"'evaluation' must hold exactly {', '.join(sorted(expected))}")
        else:
            try:
                EvalProtocol.from_options(evaluation)
            except (TypeError, ValueError) as err:
                problems.append(f"evaluation: {err}")
    problems += _task_problems(config)
    if problems:
        raise PETLModelError(
            f"{path} is not a valid PETL model config ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:20])
            + "\nIt was edited by hand or not written by PETL-AST; nothing in it was run."
        )
    return config


def _task_problems(config):
    """What is wrong with a config's ``task`` and ``thresholds`` (a multi-label model needs one
    threshold in [0, 1] per class)."""
    from petl_modules.training.metrics import TASKS

    task = config.get("task", "single_label")
    thresholds = config.get("thresholds")
    if not isinstance(task, str):
        return []  # reported as a wrong type
    if task not in TASKS:
        return [f"'task' is {task!r:.60}, not one of {', '.join(TASKS)}"]
    if task == "single_label":
        return [] if thresholds is None else ["'thresholds' given for a single_label model"]
    names = config.get("class_names")
    if not isinstance(thresholds, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds):
        return ["a multilabel model needs 'thresholds': a list of numbers in [0, 1]"]
    if isinstance(names, list) and len(thresholds) != len(names):
        return [f"'thresholds' has {len(thresholds)} values for {len(names)} class_names"]
    return []


def read_config(model_dir):
    """The checked ``petl_config.json`` of ``model_dir`` (see ``validate_config``)."""
    model_dir = Path(model_dir)
    if model_dir.is_dir() and (model_dir / FOLDER_NAME / CONFIG_FILE).is_file():
        model_dir = model_dir / FOLDER_NAME  # an experiment folder was given
    path = model_dir / CONFIG_FILE
    if not path.is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise PETLModelError(
            f"'{model_dir}' is not a PETL model folder: it must hold {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}. Every training run writes one in <experiment_folder>/{FOLDER_NAME}/."
        )

    def no_constants(name):
        raise ValueError(f"the JSON constant {name} is not allowed")

    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PETLModelError(f"{path} is {human_size(path.stat().st_size)}, too large for a PETL "
                             f"model config (at most {human_size(MAX_CONFIG_BYTES)}); not read.")
    try:
        with open(path, encoding="utf-8") as stream:
            config = json.load(stream, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise PETLModelError(f"{path} is not valid JSON ({reason}); the folder is damaged: copy it "
                             "again from where it came from.") from None
    validate_config(config, path)
    config["model_dir"] = str(model_dir)
    return config


def check_fingerprint(config, backbone_source):
    """Raises ``PETLModelError`` when ``backbone_source`` is not the checkpoint the model was
    trained on (compares the weights' fingerprints)."""
    expected = config.get("fingerprint")
    if not expected:
        logger.warning(f"{config['model_dir']} has no backbone fingerprint; not checked.")
        return
    if not isinstance(expected.get("sha256"), str) or not isinstance(expected.get("excluded", []), list):
        raise PETLModelError(f"{config['model_dir']}: 'fingerprint' is malformed (needs a sha256 "
                             "string and an 'excluded' list).")
    found = backbone_fingerprint(backbone_source, exclude=expected.get("excluded", ()))
    if found["sha256"] != expected["sha256"]:
        raise PETLModelError(
            f"The backbone checkpoint '{backbone_source}' is not the one the PETL model in "
            f"{config['model_dir']} was trained on ('{config['backbone_source']}'): the "
            f"fingerprints of their weights differ ({found['sha256'][:12]} != "
            f"{expected['sha256'][:12]}). Pass --backbone_source=<a local copy of "
            f"{config['backbone_source']}> (saved with save_pretrained)."
        )


def rebuild_modules(config, backbone_source=None):
    """Builds the model of a PETL model folder from our own method file, with the folder's options
    as plain values: ``{"petl_model", "classifier"}`` with the base checkpoint's weights and freshly
    initialised trained tensors. The folder's yaml text (format_version 1) is never read."""
    from petl_modules.training.compose import ConfigError, compose_model_hparams, load_hparams

    source = str(backbone_source or config["backbone_source"])
    scratch = tempfile.mkdtemp(prefix="petl_rebuild_")
    try:
        options = dict(config["options"], backbone_source=source, data_folder=scratch,
                       output_folder=scratch, experiment_folder=scratch)
        try:
            text = compose_model_hparams(config["method"], options)
        except ConfigError as err:
            raise PETLModelError(f"{config['model_dir']}: {err}") from None
        with _preserved_rng(), _quiet_transformers():
            try:
                hparams = load_hparams(text)
            except (ValueError, TypeError, KeyError) as err:
                raise PETLModelError(
                    f"Cannot rebuild the '{config['method']}' model of {config['model_dir']} from "
                    f"its options: {err}"
                ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"petl_model": hparams["petl_model"], "classifier": hparams["classifier"]}, hparams


def load_trained_state(modules, model_dir, config):
    """Loads ``petl_weights.safetensors`` over rebuilt ``modules``: exactly the tensors the rebuilt
    model trains must be there, with their shapes (missing or unexpected ones are an error)."""
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise PETLModelError(f"{path} is not a readable safetensors file ({err}); copy the folder "
                             "again from where it came from.") from None
    parameters, buffers = trained_tensor_names(modules)
    expected = set(parameters) | set(buffers)
    problems = [f"{name}: missing" for name in sorted(expected - set(state))]
    problems += [f"{name}: not a tensor of the rebuilt model" for name in sorted(set(state) - expected)]
    parts = {}
    for key in ("petl_model", "classifier"):
        own = modules[key].state_dict()
        parts[key] = {n.split(".", 1)[1]: t for n, t in state.items()
                      if n.split(".", 1)[0] == key and n in expected}
        for name, tensor in parts[key].items():
            if own[name].shape != tensor.shape or own[name].dtype.is_floating_point != tensor.dtype.is_floating_point:
                problems.append(f"{key}.{name} has shape {tuple(tensor.shape)} ({tensor.dtype}), "
                                f"the rebuilt model {tuple(own[name].shape)} ({own[name].dtype})")
    if problems:
        raise PETLModelError(
            f"The tensors in {path} do not fit the '{config['method']}' model rebuilt from its "
            f"config ({len(problems)} problem(s)):\n  " + "\n  ".join(problems[:10])
            + "\nThe folder was damaged, edited by hand or written by another version of the code."
        )
    for key in ("petl_model", "classifier"):
        modules[key].load_state_dict(parts[key], strict=False)  # the frozen rest is the base's
    outputs = getattr(getattr(modules["classifier"], "head", None), "out_features", None)
    if outputs is not None and int(outputs) != len(config["class_names"]):
        raise PETLModelError(
            f"{model_dir}: {len(config['class_names'])} class_names but the head has {outputs} "
            "outputs; the config was edited by hand."
        )


def load_petl_model(model_dir, backbone_source=None, device="cpu", check=True):
    """Rebuilds a trained model from its PETL model folder on its base checkpoint.

    Arguments
    ---------
    model_dir : str or Path
        A ``petl_model/`` folder (or the experiment folder holding one).
    backbone_source : str, optional
        Another copy of the base checkpoint (e.g. a local ``save_pretrained`` folder of the hub
        checkpoint the run used). Default: the run's ``backbone_source``.
    device : str
        Where to put the modules.
    check : bool
        Compare the base checkpoint's fingerprint with the one recorded at training (default).

    Returns
    -------
    (dict, dict)
        ``{"petl_model", "classifier"}`` in eval mode on ``device``, and the config.

    Raises
    ------
    PETLModelError
        Not a PETL model folder, or ``backbone_source`` is not the base checkpoint it was trained on.
    """
    config = read_config(model_dir)
    source = str(backbone_source or config["backbone_source"])
    if check:
        check_fingerprint(config, source)
    modules, _ = rebuild_modules(config, source)
    load_trained_state(modules, config["model_dir"], config)
    for module in modules.values():
        module.to(device).eval()
    return modules, config


# ==================================================================== merging
def merge_petl_model(modules):
    """Folds LoRA updates into the backbone weights, in place (zero-overhead inference).

    Every ``LoRA`` wrapper becomes a plain ``nn.Linear`` holding ``W + s B A``
    (``petl_modules.methods.lora.merge_lora``). BitFit biases and fine-tuned layers are trained in place
    already: nothing to fold. Other PETL modules (adapters, prompts, prefixes, MoA) stay.

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
