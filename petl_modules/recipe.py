"""The recipe machinery every ``recipes/<DATASET>/train.py`` shares.

A recipe gives three things: its dataset yaml, a preparation function (writes manifests once) and
a function that returns the train/valid/test datasets of a fold. ``run_recipe`` does the rest, in
the order of SpeechBrain's templates: parse the command line, compose the yaml files, build the
model (so that a wrong option fails before any data is read), prepare the data on the main
process, then for each fold: experiment folder, datasets, ``fit``, test with the best checkpoint;
finally ``results.json``.
"""

import difflib
import errno
import io
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main

from petl_modules import tracking
from petl_modules.audio import AudioError
from petl_modules.backbones import FAMILIES, lobe_class
from petl_modules.cache import check_cacheable, use_backbone_cache
from petl_modules.checkpointing import CheckpointError
from petl_modules.features import load_input
from petl_modules.prepare import DataError
from petl_modules.run_folder import RunFolderError, RunLock, check_run_identity, run_identity, write_json_atomic  # noqa: F401

logger = logging.getLogger(__name__)

COMMON_YAML = Path(__file__).with_name("recipe.yaml")
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    return sorted(p.name for p in (REPO_ROOT / "hparams").glob("*.yaml"))


def method_registry():
    """``{method name: method file}``: the ``method`` key of every ``hparams/*.yaml``.

    The only way a PETL model folder names the code that rebuilds it.
    """
    registry = {}
    for path in sorted((REPO_ROOT / "hparams").glob("*.yaml")):
        name = _load_tree(path).get("method")
        if isinstance(name, str):
            registry.setdefault(name, path)
    return registry


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
}
STRICTLY_POSITIVE = {"lr", "head_lr", "clip_seconds"}


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
    if "method" not in method or "petl_model" not in method:
        raise ConfigError(
            f"'{method_file}' is not a method file: it must define 'method' and 'petl_model'. "
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


OBJECT_TAGS = ("!new:", "!name:", "!module:", "!copy", "!include", "!tuple")


def compose_model_hparams(method, options):
    """Composes recipe.yaml < the registry's file of ``method`` < ``options`` (plain values).

    Used to rebuild a PETL model folder: the code comes from our own method file, the folder only
    gives values. An option may set a value key (a plain or computed one), never an object
    (``!new:``, ``!name:``, ... or a mapping), and its value must be plain data.

    Raises
    ------
    ConfigError
        Unknown method, an option naming an object, or a value that is not plain data.
    """
    registry = method_registry()
    if method not in registry:
        raise ConfigError(
            f"the method '{method}' is not one of this installation's method files "
            f"({', '.join(sorted(registry))}); it was trained with a method file you do not have."
        )
    merged = _load_tree(COMMON_YAML)
    for key, value in _load_tree(registry[method]).items():
        if key != FAMILY_DEFAULTS:
            merged[key] = value
    plain = (str, int, float, bool, type(None))
    for key, value in options.items():
        if key == "method":
            continue
        node = merged.get(key)
        tag = getattr(getattr(node, "tag", None), "value", None) or ""
        if key.startswith("__") or isinstance(node, dict) or tag.startswith(OBJECT_TAGS):
            raise ConfigError(f"the option '{key}' names an object of the model, not a value")
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, plain) for v in items) or any(
                isinstance(v, str) and v.lstrip().startswith(("!", "&", "*", "%")) for v in items):
            raise ConfigError(f"the option '{key}' is not a plain value: {value!r:.80}")
        merged[key] = list(value) if isinstance(value, list) else value
    text = _dump(merged)
    reread = _load_text(text, "the rebuilt configuration")
    for key in options:
        node = reread.get(key)
        if key != "method" and getattr(getattr(node, "tag", None), "value", None):
            raise ConfigError(f"the option '{key}' would be read as a yaml tag")
    return text


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


# ==================================================================== data
def load_manifest(csv_path, data_folder, key_test=None):
    """A ``DynamicItemDataset`` from a manifest (``$data_root`` -> ``data_folder``), filtered."""
    dataset = DynamicItemDataset.from_csv(csv_path, replacements={"data_root": str(data_folder)})
    if key_test:
        dataset = dataset.filtered_sorted(key_test=key_test)
    return dataset


def checked_class_names(datasets, hparams):
    """The class names of a run: the dataset yaml's ``class_names``, or those of the training split.

    Raises
    ------
    DataError
        A validation/test example whose label the model cannot output (naming it), or a number
        of classes other than ``n_classes``.
    """
    given = hparams.get("class_names")
    names = [str(n) for n in given] if given else class_names_of([datasets["train"]])
    known = set(names)
    strays = []
    for split, dataset in datasets.items():
        with dataset.output_keys_as(["id", "label"]):
            strays += [(split, item["id"], item["label"]) for item in dataset
                       if item["label"] not in known]
    where = hparams.get("manifest_folder")
    if strays:
        listed = "\n  ".join(f"{split}: {uid} has label '{label}'" for split, uid, label in strays[:10])
        source = "the dataset yaml's class_names" if given else "any training example"
        raise DataError(
            f"{len(strays)} example(s) in the manifests in {where} have a label that is not in "
            f"{source}:\n  {listed}\nFix those rows in the dataset's metadata (or leave them "
            "out), then delete the manifests folder to prepare again."
        )
    if len(names) != int(hparams["n_classes"]):
        raise DataError(
            f"The training examples in {where} hold {len(names)} classes but the dataset yaml says "
            f"n_classes={hparams['n_classes']}: check the data (a class with no training example?) "
            "or pass --n_classes."
        )
    return names


def class_names_of(datasets):
    """Sorted class names found in the ``label`` field of ``datasets``."""
    names = set()
    for dataset in datasets:
        with dataset.output_keys_as(["label"]):
            names.update(item["label"] for item in dataset)
    return sorted(names)


def few_shot_subset(dataset, samples_per_class, seed):
    """Keeps ``samples_per_class`` random items of each class (seeded, balanced)."""
    by_class = {}
    with dataset.output_keys_as(["id", "label"]):
        for item in dataset:
            by_class.setdefault(item["label"], []).append(item["id"])
    rng = random.Random(seed)
    keep = []
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        if len(ids) < samples_per_class:
            logger.warning(
                f"few_shot_samples={samples_per_class}: class '{label}' has only {len(ids)} "
                "training examples; keeping all of them."
            )
        keep += rng.sample(ids, min(samples_per_class, len(ids)))
    keep = set(keep)
    return dataset.filtered_sorted(key_test={"id": lambda i: i in keep})


def add_pipelines(datasets, input_processor, encoder):
    """Adds ``inputs`` (features of the audio file) and ``label_index`` to every dataset."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("inputs")
    def audio_pipeline(wav):
        return load_input(wav, input_processor)  # reads only what the model uses

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label_index")
    def label_pipeline(label):
        return encoder.encode_label_torch(label)

    sb.dataio.dataset.add_dynamic_item(list(datasets), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(datasets), label_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets), ["id", "inputs", "label_index"])


# ==================================================================== parameters
def parameter_report(modules):
    """Total / trainable parameters of ``modules`` (a dict), like PEFT's report."""
    petl_model, classifier = modules["petl_model"], modules["classifier"]
    total = sum(p.numel() for m in (petl_model, classifier) for p in m.parameters())
    head = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    trainable = head + sum(p.numel() for p in petl_model.parameters() if p.requires_grad)
    return {
        "total_params": total,
        "trainable_params": trainable,
        "trainable_params_without_head": trainable - head,
        "trainable_percent": 100.0 * trainable / total,
    }


# ==================================================================== folds and results
def fold_list(hparams):
    """The folds to run: ``[None]`` for datasets with official splits, else the chosen ones."""
    folds = hparams.get("folds")
    choice = hparams.get("fold", "all")
    if not folds:
        if str(choice) not in ("all", "None", "1"):
            raise ConfigError(
                f"--fold={choice}: {hparams['dataset']} has official splits, not folds; drop --fold."
            )
        return [None]
    folds = [int(f) for f in folds]
    if str(choice) == "all":
        return folds
    try:
        chosen = int(choice)
    except ValueError:
        chosen = None
    if chosen not in folds:
        raise ConfigError(
            f"--fold={choice} is out of range for {hparams['dataset']}: use 'all' or one of {folds}."
        )
    return [chosen]


def rotating_folds(folds, test_fold):
    """The split of a rotating k-fold protocol: ``test_fold`` tests, the fold before it validates.

    ``rotating_folds([1, 2, 3, 4, 5], 1)`` -> ``{"train": [2, 3, 4], "valid": [5], "test": [1]}``
    (ESC-50's reference rotation; UrbanSound8K uses the same to keep validation off the test fold).
    """
    folds = [int(f) for f in folds]
    test = int(test_fold)
    valid = folds[folds.index(test) - 1]
    return {"train": [f for f in folds if f not in (test, valid)], "valid": [valid], "test": [test]}


def rotating_fold_datasets(manifest, data_root, folds, fold):
    """``{"train", "valid", "test"}`` datasets of ``rotating_folds(folds, fold)``, filtered from
    one manifest with a ``fold`` column."""
    return {
        split: load_manifest(manifest, data_root, key_test={"fold": lambda f, s=chosen: int(f) in s})
        for split, chosen in rotating_folds(folds, fold).items()
    }


def aggregate_results(output_folder, header):
    """Combines the ``fold_result.json`` files below ``output_folder`` into ``results.json``."""
    output_folder = Path(output_folder)
    folds = []
    for path in sorted(output_folder.glob("**/fold_result.json")):
        with open(path) as stream:
            folds.append(json.load(stream))
    folds.sort(key=lambda r: (r["fold"] is not None, r["fold"] or 0))
    results = dict(header)
    results["folds"] = folds
    test = [r["test_accuracy"] for r in folds]
    valid = [r["valid_accuracy"] for r in folds]
    if test:
        mean = sum(test) / len(test)
        results["test_accuracy_mean"] = mean
        results["test_accuracy_std"] = math.sqrt(sum((t - mean) ** 2 for t in test) / len(test))
        results["test_accuracy"] = mean
        results["valid_accuracy"] = sum(valid) / len(valid)
    write_json_atomic(output_folder / "results.json", results)
    return results


def run_recipe(brain_class, dataset_yaml, prepare, make_datasets, argv=None):
    """Runs a recipe from its command line. See the module docstring.

    Arguments
    ---------
    brain_class : type
        A ``ClassificationBrain`` subclass.
    dataset_yaml : Path
        The recipe's dataset yaml.
    prepare : callable
        ``prepare(hparams)``: writes the manifests (run on the main process only).
    make_datasets : callable
        ``make_datasets(hparams, fold)`` -> ``{"train", "valid", "test"}`` of ``DynamicItemDataset``
        with ``wav`` and ``label`` fields.
    argv : list of str, optional
        Command line (default ``sys.argv[1:]``).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    try:
        yaml_text = compose_hparams(hparams_file, dataset_yaml, overrides)
        folds = fold_list(ruamel.yaml.YAML().load(yaml_text))  # plain keys: nothing built yet
        hparams = load_fold_hparams(yaml_text, folds[0])  # builds the model: options checked
        validate_options(scalar_hparams(hparams))  # values the yaml computed
        if hparams.get("cache_backbone_outputs"):
            check_cacheable(hparams)
        tracking.check_wandb(hparams)
    except (ConfigError, ValueError, TypeError, OSError) as err:
        # Wrong options are found here, before any data is read.
        sys.exit(f"Error in the configuration ({hparams_file} + {dataset_yaml}): {err}")
    lock = RunLock(hparams["output_folder"])
    try:
        _on_main_then_everywhere(_claim_output_folder, lock, hparams)
        return _run(brain_class, hparams, yaml_text, run_opts, prepare, make_datasets, folds)
    except RunFolderError as err:
        sys.exit(f"Error with the output folder: {err}")
    except (DataError, AudioError) as err:
        sys.exit(f"Error in the data: {_worker_message(err)}")
    except CheckpointError as err:
        sys.exit(f"Error in the checkpoints: {err}")
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        sys.exit(
            f"Error: no space left on the disk while writing to {hparams['output_folder']} ({err}). "
            "Free some space (or pass --output_folder on another disk) and rerun the same command: "
            "it resumes from the last complete checkpoint."
        )
    finally:
        lock.release()


def _worker_message(err):
    """The message of an error raised in a DataLoader worker, without the worker's traceback."""
    message = str(err).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def _disk_full(err):
    """True for the errors a full disk gives (Python's ENOSPC, torch.save's failed write)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left" in str(err) or "file write failed" in str(err)


def _claim_output_folder(lock, hparams):
    """Locks the output folder for this run and checks (or records) the run's identity."""
    from petl_modules.pretrained import backbone_fingerprint

    lock.acquire()
    try:
        fingerprint = backbone_fingerprint(hparams["backbone_source"])["sha256"]
    except (OSError, ValueError):
        fingerprint = None  # reported when the PETL model folder is saved
    identity = run_identity(scalar_hparams(hparams), fingerprint)
    check_run_identity(hparams["output_folder"], identity)


def _on_main_then_everywhere(function, *args):
    """Runs ``function`` on the main process; under DDP every process then raises its
    ``RunFolderError`` (if any), so that no process goes on alone."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return function(*args)
    message = [None]
    if if_main_process():
        try:
            function(*args)
        except RunFolderError as err:
            message = [str(err)]
    torch.distributed.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RunFolderError(message[0])


def _run(brain_class, hparams, yaml_text, run_opts, prepare, make_datasets, folds):
    output_folder = Path(hparams["output_folder"])
    sb.create_experiment_directory(experiment_directory=str(output_folder))
    run_on_main(prepare, kwargs={"hparams": hparams})

    header = {
        "dataset": hparams["dataset"],
        "method": hparams["method"],
        "backbone": hparams["backbone"].family,
        "model_type": hparams["backbone"].config.model_type,  # wav2vec2 family: hubert, wavlm, ...
        "backbone_source": hparams["backbone_source"],
        "seed": hparams["seed"],
        # The folds this command runs: results.json with fewer of them is partial.
        "requested_folds": [f for f in folds if f is not None],
    }
    for fold in folds:
        if fold != folds[0]:  # the first fold's objects were built by run_recipe
            hparams = load_fold_hparams(yaml_text, fold)
        finished = Path(hparams["experiment_folder"]) / "fold_result.json"
        if finished.is_file() and not run_opts["test_only"]:
            # Rerunning the command of an interrupted multi-fold run resumes at the first
            # unfinished fold (that one then resumes from its latest checkpoint).
            what = "This run" if fold is None else f"Fold {fold}"
            logger.info(f"{what} already finished ({finished}): not run again.")
            header.update(parameter_report(hparams["modules"]))
            continue
        run_fold(brain_class, hparams, yaml_text, run_opts, make_datasets, fold, header)

    results = aggregate_results(output_folder, header) if if_main_process() else None
    if results is not None:
        logger.info(
            f"Test accuracy {results['test_accuracy_mean']:.4f} +- "
            f"{results['test_accuracy_std']:.4f} over {len(results['folds'])} fold(s); "
            f"results in {output_folder / 'results.json'}"
        )
    return results


def run_fold(brain_class, hparams, yaml_text, run_opts, make_datasets, fold, header):
    """Trains and tests one fold (or the official split) in its experiment folder."""
    experiment_folder = Path(hparams["experiment_folder"])
    if if_main_process():
        experiment_folder.mkdir(parents=True, exist_ok=True)
        (experiment_folder / "hyperparams.yaml").write_text(yaml_text)
    sb.create_experiment_directory(experiment_directory=str(experiment_folder))

    datasets = make_datasets(hparams, fold)
    class_names = checked_class_names(datasets, hparams)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(class_names)
    encoder.expect_len(len(class_names))
    if if_main_process():
        encoder.save(experiment_folder / "label_encoder.txt")
    if int(hparams["few_shot_samples"]) > 0:
        datasets["train"] = few_shot_subset(
            datasets["train"], int(hparams["few_shot_samples"]), hparams["seed"]
        )
    add_pipelines(datasets.values(), hparams["backbone"].input_processor, encoder)
    if hparams.get("cache_backbone_outputs"):
        use_backbone_cache(hparams, datasets, device=run_opts.get("device", "cpu"))

    report = parameter_report(hparams["modules"])
    logger.info(
        f"trainable params: {report['trainable_params']:,} "
        f"({report['trainable_params_without_head']:,} without the head) || "
        f"all params: {report['total_params']:,} || trainable%: {report['trainable_percent']:.4f}"
    )
    header.update(report)
    hparams["train_logger"] = tracking.experiment_logger(hparams, fold, scalar_hparams(hparams))

    brain = brain_class(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_loader_options"],
        valid_loader_kwargs=hparams["eval_loader_options"],
    )
    brain.evaluate(
        datasets["test"], max_key="valid_acc", test_loader_kwargs=hparams["eval_loader_options"]
    )
    best = hparams["checkpointer"].find_checkpoint(max_key="valid_acc")
    result = {
        "fold": fold,
        "valid_accuracy": float(best.meta["valid_acc"]) if best else None,
        "best_epoch": int(best.meta.get("epoch", 0)) if best else None,
        "test_accuracy": brain.test_stats["accuracy"],
        "test_loss": brain.test_stats["loss"],
        "experiment_folder": str(experiment_folder),
        "class_names": list(class_names),
        "hparams": scalar_hparams(hparams),
    }
    if if_main_process():
        # The modules hold the best checkpoint's weights (evaluate recovered it): ship them.
        from petl_modules.pretrained import save_run_petl_model

        save_run_petl_model(hparams, class_names)
        # Written last: it marks the fold as finished (a rerun of the command skips the fold).
        write_json_atomic(experiment_folder / "fold_result.json", result)
    return result
