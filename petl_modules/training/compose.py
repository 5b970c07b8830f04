"""Composing a run's configuration: recipe.yaml < method file < dataset file < command line.

One piece of code composes configuration (``compose_hparams``); nothing here builds objects but
``load_hparams``. (A PETL model folder is rebuilt without any of this, from its method's config
class: ``petl_modules.model``.)
"""

import difflib
import io
import logging
import math
import os
import re
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

from petl_modules.backbones import FAMILIES, lobe_class
from petl_modules.model.windows import EVAL_WINDOWS, WINDOW_POOLINGS
from petl_modules.paths import hparams_folder
from petl_modules.training.metrics import CLASS_WEIGHTS, TASKS
from petl_modules.training.mixup import MIXUPS
from petl_modules.training.sampling import SAMPLINGS
from petl_modules.training.windows import TRAIN_CROPS

logger = logging.getLogger(__name__)

COMMON_YAML = Path(__file__).with_name("recipe.yaml")


class ConfigError(ValueError):
    """A wrong option or file given by the user (raised before any data is read)."""


# ==================================================================== composing the yaml files
def _load_tree(path):
    """The round-trip tree of a yaml file: tags are kept as data, nothing is built."""
    try:
        with open(path) as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(f"File not found: {path}") from None
    return _load_text(text, str(path))


def _load_text(text, name):
    """The round-trip tree of yaml ``text`` (``name`` says where it comes from, for errors)."""
    try:
        tree = ruamel.yaml.YAML().load(text)
    except ruamel.yaml.constructor.DuplicateKeyError as err:
        key = re.search(r'duplicate key "([^"]+)"', str(err))
        key = key.group(1) if key else "a key"
        where = "" if err.problem_mark is None else f" (line {err.problem_mark.line + 1})"
        if name == "the command line":
            raise ConfigError(f"--{key} is given twice on the command line; keep one.") from None
        raise ConfigError(f"{name} is not valid yaml: '{key}' is given twice{where}; keep "
                          "one (a duplicate key would silently hide the other value).") from None
    except ruamel.yaml.YAMLError as err:
        raise ConfigError(f"{name} is not valid yaml: {' '.join(str(err).split())}") from None
    if tree is None:
        return ruamel.yaml.comments.CommentedMap()
    if not isinstance(tree, dict):
        raise ConfigError(f"{name} must be a mapping of 'key: value' lines.")
    return tree


def _method_files():
    return sorted(p.name for p in hparams_folder().glob("*.yaml"))


# Options whose values are checked before anything is built: (kind, minimum, allow None).
OPTION_RANGES = {
    "batch_size": (int, 1, False),
    "number_of_epochs": (int, 1, False),
    "lr": (float, 0, False),
    "head_lr": (float, 0, False),
    "weight_decay": (float, 0, False),
    "num_workers": (int, 0, False),
    "seed": (int, None, False),
    "few_shot_samples": (int, 0, False),
    "max_frames": (int, 1, False),
    "n_classes": (int, 2, False),
    "clip_seconds": (float, 0, True),
    "ckpt_interval_minutes": (float, 0, False),
    "window_hop_seconds": (float, 0, True),
    # splits and folds made for data that come without them (the recipe for your own data)
    "num_folds": (int, 0, False),
    "valid_fraction": (float, 0, False),
    "test_fraction": (float, 0, False),
    "split_seed": (int, None, False),
    # sampling, mixup, shards (petl_modules/training/sampling.py, mixup.py, shards.py)
    "mixup_alpha": (float, 0, False),
    "mixup_prob": (float, 0, False),
    "shuffle_buffer": (int, 1, False),
}
STRICTLY_POSITIVE = {"lr", "head_lr", "clip_seconds", "window_hop_seconds", "valid_fraction",
                     "test_fraction", "mixup_alpha"}
AT_MOST_ONE = {"mixup_prob"}
# Options that take one of a few values (petl_modules/training/windows.py).
OPTION_VALUES = {
    "train_crop": TRAIN_CROPS,
    "eval_windows": EVAL_WINDOWS,
    "window_pooling": WINDOW_POOLINGS,
    "window_results": (True, False),
    # petl_modules/training/metrics.py
    "task": TASKS,
    "class_weights": CLASS_WEIGHTS,
    "sampling": SAMPLINGS,
    "mixup": MIXUPS,
}


def validate_options(values):
    """Checks the types and ranges of the options in ``OPTION_RANGES`` that ``values`` holds as
    plain values; raises ``ConfigError`` naming the option and what it accepts."""
    problems = []
    for key, (kind, low, nullable) in OPTION_RANGES.items():
        if key not in values or getattr(values[key], "tag", None) is not None \
                and getattr(values[key].tag, "value", None):
            continue  # absent, or computed by the yaml (checked once built)
        value = values[key]
        if value is None and nullable:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and not (number and float(value).is_integer()):
            problems.append(f"--{key}={value!r} must be a whole number"
                            + (f" >= {low}" if low is not None else ""))
        elif kind is float and not (number and math.isfinite(value)):
            problems.append(f"--{key}={value!r} must be a number")
        elif low is not None and (value <= low if key in STRICTLY_POSITIVE else value < low):
            bound = f"> {low}" if key in STRICTLY_POSITIVE else f">= {low}"
            problems.append(f"--{key}={value!r} is out of range: it must be {bound}")
        elif key in AT_MOST_ONE and value > 1:
            problems.append(f"--{key}={value!r} is out of range: it must be between 0 and 1")
    for key, allowed in OPTION_VALUES.items():
        value = values.get(key, allowed[0])
        if getattr(value, "tag", None) is not None and getattr(value.tag, "value", None):
            continue  # computed by the yaml (checked once built)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            shown = "|".join("null" if a is None else str(a) for a in allowed)
            problems.append(f"--{key}={value!r} is not one of {shown}")
    if values.get("window_results") is True and values.get("eval_windows", "first") == "first":
        problems.append("--window_results=True writes the results of sliding windows: add "
                        "--eval_windows=sliding")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


FAMILY_DEFAULTS = "family_defaults"


def _backbone_family(layers):
    """The lobe family (``ast``, ``wav2vec2``) of the ``backbone_source`` the first of ``layers``
    (command line, dataset, method, recipe.yaml) that sets it names; None when its config cannot
    be read (then no backbone can be built either: building it reports why)."""
    source = next(layer["backbone_source"] for layer in layers if "backbone_source" in layer)
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(source, str):
        raise ConfigError(
            f"family_defaults need a plain backbone_source (a hub id or a folder), got '{source}'."
        )
    try:
        return lobe_class(source).family
    except OSError as err:
        logger.warning(f"family_defaults not applied: {err}")
        return None


def _apply_family_defaults(merged, table, family, file_name):
    """Sets the entries of ``table[family]`` (a ``family_defaults`` mapping) in ``merged``."""
    if table is None:
        return
    families = sorted({lobe.family for lobe in FAMILIES.values()})
    if not isinstance(table, dict) or not set(table) <= set(families):
        raise ConfigError(
            f"{file_name}: {FAMILY_DEFAULTS} must map backbone families ({', '.join(families)}) to "
            f"'key: value' defaults; got {dict(table) if isinstance(table, dict) else table}."
        )
    for key, value in (table.get(family) or {}).items():
        if key not in merged:
            raise ConfigError(
                f"{file_name}: {FAMILY_DEFAULTS}.{family}.{key} sets '{key}', which no earlier "
                "file defines: define it (with its default) before giving a per-family value."
            )
        merged[key] = value


def compose_hparams(method_file, dataset_file, overrides=None, family=None):
    """Composes recipe.yaml < method yaml < dataset yaml < ``overrides`` into one yaml text.

    Per-backbone defaults: a method or dataset yaml may hold a ``family_defaults`` mapping,
    backbone family (``ast``, ``wav2vec2``: the family of ``backbone_source``'s ``model_type``) ->
    ``key: value``. Each file's entries for the family of the run apply right after that file, so
    the order is: recipe.yaml < method < method's family_defaults < dataset < dataset's
    family_defaults < command line. E.g. ``family_defaults: {wav2vec2: {number_of_epochs: 50}}``.

    Arguments
    ---------
    method_file : str or Path
        ``hparams/<method>.yaml``.
    dataset_file : str or Path
        ``recipes/<DATASET>/<dataset>.yaml``.
    overrides : str or dict
        Command-line overrides (the yaml string ``sb.parse_arguments`` returns, or a dict). Every
        key must exist in one of the three files.
    family : str, optional
        The backbone family whose ``family_defaults`` apply; default: read from the config of
        ``backbone_source``.

    Returns
    -------
    str
        One HyperPyYAML document (``load_hparams`` instantiates it).
    """
    method_file = Path(method_file)
    if not method_file.is_file():
        raise ConfigError(
            f"Method file '{method_file}' not found. Available methods in hparams/: "
            f"{', '.join(_method_files())}."
        )
    merged = _load_tree(COMMON_YAML)
    method = _load_tree(method_file)
    if "method" not in method or "method_config" not in method:
        raise ConfigError(
            f"'{method_file}' is not a method file: it must define 'method' and 'method_config' "
            "(the method's config class, see docs/extending.md). "
            f"Pass one of hparams/{{{','.join(_method_files())}}} as the first argument."
        )
    dataset = _load_tree(dataset_file)
    if isinstance(overrides, str):
        overrides = _load_text(overrides, "the command line") if overrides.strip() else {}
    overrides = overrides or {}
    if "method" in overrides:
        raise ConfigError(
            f"--method cannot be overridden: the method is the method file given as the first "
            f"argument (hparams/<method>.yaml; here {method_file.name}). Available: "
            f"{', '.join(_method_files())}."
        )
    if family is None and any(FAMILY_DEFAULTS in layer for layer in (method, dataset)):
        family = _backbone_family([overrides, dataset, method, merged])
    for layer, name in ((method, method_file.name), (dataset, Path(dataset_file).name)):
        for key, value in layer.items():
            if key != FAMILY_DEFAULTS:
                merged[key] = value
        _apply_family_defaults(merged, layer.get(FAMILY_DEFAULTS), family, name)
    for key, value in overrides.items():
        if key not in merged:
            close = difflib.get_close_matches(key, list(merged), n=3)
            hint = f" Did you mean: {', '.join('--' + c for c in close)}?" if close else ""
            raise ConfigError(
                f"Unknown option --{key}: it is not a key of {COMMON_YAML.name}, {method_file.name} "
                f"or {Path(dataset_file).name}.{hint}"
            )
        merged[key] = value
    data_folder = merged.get("data_folder")
    if getattr(getattr(data_folder, "tag", None), "value", None) == "!PLACEHOLDER":
        raise ConfigError("Missing --data_folder=/path/to/the/dataset (the folder of its release).")
    validate_options(merged)
    return _dump(merged)


def _dump(tree):
    text = io.StringIO()
    ruamel.yaml.YAML().dump(tree, text)
    return text.getvalue()


def load_hparams(yaml_text, **overrides):
    """Instantiates a composed yaml (``compose_hparams``), with extra key overrides."""
    return load_hyperpyyaml(yaml_text, overrides or None, overrides_must_match=True)


def load_fold_hparams(yaml_text, fold):
    """Instantiates the run's yaml for one fold, in ``<output_folder>/fold_<k>`` (``fold`` None:
    datasets with official splits, in ``<output_folder>`` itself)."""
    if fold is None:
        return load_hparams(yaml_text)
    overrides = f"fold: {int(fold)}\nexperiment_folder: !ref <output_folder>/fold_{int(fold)}\n"
    return load_hyperpyyaml(yaml_text, overrides, overrides_must_match=True)


def scalar_hparams(hparams):
    """The plain (JSON-serialisable) top-level values of ``hparams``: options of the run."""
    return {
        k: v for k, v in hparams.items()
        if isinstance(v, (str, int, float, bool, type(None)))
        or (isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v))
    }
