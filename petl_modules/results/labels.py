"""Labels of runs: a run is named by the options it recorded (its first fold's ``hparams``) that
differ from the defaults its own composition gives (``recipe.yaml`` < the method file < the dataset
yaml, with their ``family_defaults`` for the run's backbone family)."""

import json
import logging
import os
from pathlib import Path

import ruamel.yaml

from petl_modules.paths import hparams_folder, project_root, read_yaml_tree

logger = logging.getLogger(__name__)

# Options that never name a different model or training set-up (paths, plumbing, repetitions).
NOT_OPTIONS = {
    "seed", "fold", "folds", "method", "dataset", "dataset_name", "backbone_source", "data_folder",
    "output_folder", "experiment_folder", "save_folder", "train_log", "manifest_folder", "num_workers",
    "skip_bad_files", "n_classes", "class_names", "confusion_matrix", "manifest",
}


def plain_value(value):
    """A yaml value as JSON would hold it; None for tagged values (``!ref``, ``!new``, ...)."""
    if getattr(value, "tag", None) is not None and getattr(value.tag, "value", None):
        return None
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _file_defining(folder_glob, key, value):
    """The first repository yaml file matching ``folder_glob`` whose ``key`` is ``value``."""
    for path in sorted(project_root().glob(folder_glob)):
        if plain_value(read_yaml_tree(path).get(key)) == value:
            return path
    return None


def _method_file(method):
    plain_name = method.replace("_", "").replace("-", "").isalnum()  # no path tricks
    path = hparams_folder() / f"{method}.yaml"
    if plain_name and path.is_file():
        return path
    return _file_defining("hparams/*.yaml", "method", method)


def compose_defaults(method_file, dataset_file, family):
    """The yaml text a run of ``method_file`` on ``dataset_file`` composes without command-line
    options, for a backbone of ``family`` (``ast``, ``wav2vec2``): ``recipe.compose_hparams``
    with the family the run recorded, instead of the one of a ``backbone_source`` that need not
    exist here (so the method's and dataset's ``family_defaults`` apply as in the run)."""

    from petl_modules.training import compose  # imports torch: only when a table is made

    # data_folder is a !PLACEHOLDER that compose_hparams insists on; it is no option.
    return compose.compose_hparams(method_file, dataset_file, {"data_folder": "unused"}, family=family)


_DEFAULTS = {}
_WARNED = set()

# recipe.yaml keys that change the model itself, shown with the method's own options.
MODEL_KEYS = {"pooling", "position_embeddings"}


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def default_options(method, dataset, family):
    """``(defaults, method_keys)``: the plain option values a run of ``method`` on ``dataset``
    with a ``family`` backbone gets without command-line options (its composition, per-family
    defaults included), and the names of the method's own options (its config class's).

    Keys whose composed value is derived (``!ref``) or an object are not options: they are left
    out, so a run is never labelled by them (what they derive from is)."""
    key = (method, dataset, family)
    if key not in _DEFAULTS:
        defaults, method_keys = {}, set()
        method_file = _method_file(method)
        dataset_file = _file_defining("recipes/*/*.yaml", "dataset", dataset)
        if method_file is None:
            _warn_once(f"No method file in {hparams_folder()} says 'method: {method}': "
                       f"runs of '{method}' are grouped without their options.")
        else:
            if dataset_file is None:
                _warn_once(f"No recipe yaml says 'dataset: {dataset}': options of runs on "
                           f"'{dataset}' are compared with the method's defaults only.")
            try:
                text = compose_defaults(method_file, dataset_file or os.devnull, family)
            except (ValueError, OSError, ruamel.yaml.YAMLError) as err:  # ConfigError is a ValueError
                _warn_once(f"Cannot compose the defaults of '{method}' on '{dataset}' ({family}): "
                           f"{err}. Its runs are grouped without their options.")
            else:
                tree = ruamel.yaml.YAML().load(text) or {}
                defaults = {k: v for k, v in ((k, plain_value(v)) for k, v in tree.items())
                            if v is not None or tree[k] is None}
                method_keys = method_options(method)
        _DEFAULTS[key] = defaults, (method_keys | MODEL_KEYS) - NOT_OPTIONS
    return _DEFAULTS[key]


def method_options(method):
    """The names of ``method``'s own options: its config class's fields (``petl_modules.methods``)."""
    from petl_modules.methods import METHODS  # imports torch: only when a table is made

    return set(METHODS[method].options()) if method in METHODS else set()


def _show(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def changed_options(run):
    """``(method options, other settings)`` the run recorded with a value other than the one its
    own composition gives by default, as ``key=value`` lists."""
    defaults, method_keys = default_options(run["method"], run["dataset"], run["backbone"])
    method, other = [], []
    for key, value in sorted(run["options"].items()):
        if key in NOT_OPTIONS or key not in defaults or same_option(defaults[key], value):
            continue
        (method if key in method_keys else other).append(f"{key}={_show(value)}")
    return method, other


def same_option(default, value):
    """Equal as options: 50 and 50.0 are, True and 1 are not."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value) and default == value
    return default == value


def method_label(run):
    """``method`` plus its options that differ from the defaults, e.g. ``lora (reduction_rate=64)``."""
    changed = changed_options(run)[0]
    return f"{run['method']} ({', '.join(changed)})" if changed else run["method"]


def settings_label(run):
    """Other training settings that differ from the defaults (epochs, batch size, input length)."""
    return ", ".join(changed_options(run)[1])


def backbone_label(run):
    source = str(run.get("backbone_source") or "")
    name = Path(source.rstrip("/")).name if source else ""
    return f"{run['backbone']} ({name})" if name else str(run["backbone"])
