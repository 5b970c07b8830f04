"""The recipe machinery every ``recipes/<DATASET>/train.py`` shares, one function per step.

A recipe's ``main`` reads in the order of SpeechBrain's templates, each step a call here::

    hparams_file, run_opts, overrides = parse_arguments(argv)  # arguments.py: each kept whole
    sb.utils.distributed.ddp_init_group(run_opts)
    run = load_run(hparams_file, DATASET_YAML, overrides, run_opts)  # compose, check, build
    with claimed_output_folder(run):                 # lock, run identity, experiment folder
        run.prepare(prepare)                         # run_on_main; nothing to do with --shards
        for fold in run.unfinished_folds():
            hparams = run.fold_hparams(fold)         # the fold's objects and experiment folder
            datasets, class_names = run.datasets(make_datasets, hparams, fold)  # fold_datasets
            brain = Brain(...); brain.fit(...); brain.evaluate(..., max_key="valid_acc")
            run.finish_fold(fold, hparams, brain, class_names)  # petl_model/, fold_result.json
        return run.write_results()                   # results.json

A wrong option stops the run in ``load_run``, before any data is read; every other error a user
can fix (data, checkpoints, output folder, full disk) leaves ``claimed_output_folder`` as one line
(``sys.exit(message)``).
"""

import contextlib
import errno
import functools
import json
import logging
import math
import random
import sys
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main

from petl_modules.methods.config import MethodConfig
from petl_modules.model.audio import AudioError, load_input
from petl_modules.model.task import Task
from petl_modules.training import metrics, tracking
from petl_modules.training.batching import BatchingError, check_dynamic_batching, example_seconds
from petl_modules.training.cache import check_cacheable, use_backbone_cache
from petl_modules.training.checkpointing import CheckpointError
from petl_modules.training.compose import (
    ConfigError,
    compose_hparams,
    load_fold_hparams,
    scalar_hparams,
    validate_options,
)
from petl_modules.training.prepare import DATA_REPORT_FILE, DataError
from petl_modules.training.run_folder import (
    RunFolderError,
    RunLock,
    check_run_identity,
    run_identity,
    write_json_atomic,
)
from petl_modules.training.mixup import RawClip, WaveformMixup, mix_waveforms, mixup_options
from petl_modules.training.sampling import use_class_balanced_sampling
from petl_modules.training.windows import (
    WINDOW_KEYS,
    WINDOW_RESULTS_FILE,
    EvalProtocol,
    TrainCrop,
    clip_samples,
    is_window_dataset,
    window_dataset,
)

logger = logging.getLogger(__name__)


# ==================================================================== data
def load_manifest(csv_path, data_folder, key_test=None):
    """A ``DynamicItemDataset`` from a manifest (``$data_root`` -> ``data_folder``), filtered. A
    manifest is parsed once for all the splits and folds taken from it (``manifest_rows``)."""
    path = Path(csv_path)
    stat = path.stat()
    data = manifest_rows(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(data_folder))
    dataset = DynamicItemDataset({uid: dict(row) for uid, row in data.items()})  # SpeechBrain
    # writes "id" into the rows it hands out: each dataset gets its own copies
    if key_test:
        dataset = dataset.filtered_sorted(key_test=key_test)
    return dataset


@functools.lru_cache(maxsize=2)
def manifest_rows(path, mtime_ns, size, data_folder):
    """``{id: row}`` of the manifest at ``path`` (SpeechBrain's ``load_data_csv``), kept for the
    datasets built from it (each copies the rows); the modification time and size key the cache,
    so a manifest written again is read again."""
    return load_data_csv(path, {"data_root": data_folder})


def checked_class_names(datasets, hparams):
    """The class names of a run: the dataset yaml's ``class_names``, or those of the training split.

    Raises
    ------
    DataError
        A validation/test example whose label the model cannot output (naming it), or a number
        of classes other than ``n_classes``.
    """
    given = hparams.get("class_names")
    task = Task.of_options(hparams)
    names = [str(n) for n in given] if given else class_names_of([datasets["train"]], task)
    known = set(names)
    strays = []
    for split, dataset in datasets.items():
        with dataset.output_keys_as(["id", "label"]):
            strays += [(split, item["id"], item["label"]) for item in dataset
                       if not set(task.labels_of(item["label"])) <= known]
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


def class_names_of(datasets, task=None):
    """Sorted class names found in the ``label`` field of ``datasets`` (as ``task`` reads a
    label: ``;``-separated names for multi-label; default single-label)."""
    task = task or Task.of("single_label")
    names = set()
    for dataset in datasets:
        with dataset.output_keys_as(["label"]):
            for item in dataset:
                names.update(task.labels_of(item["label"]))
    return sorted(names)


def few_shot_subset(dataset, samples_per_class, seed):
    """Keeps ``samples_per_class`` random items of each class (seeded, balanced)."""
    with dataset.output_keys_as(["id", "label"]):
        keep = few_shot_ids(((item["id"], item["label"]) for item in dataset), samples_per_class,
                            seed)
    return dataset.filtered_sorted(key_test={"id": lambda i: i in keep})


def few_shot_ids(examples, samples_per_class, seed):
    """The ids ``few_shot_subset`` keeps of ``(id, label)`` pairs: ``samples_per_class`` per
    label, drawn with ``seed`` (a label with fewer keeps all, with a warning)."""
    by_class = {}
    for uid, label in examples:
        by_class.setdefault(label, []).append(uid)
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
    return set(keep)


def add_pipelines(datasets, input_processor, encoder, train_crop=None, task=None,
                  waveform_mixup=None):
    """Adds ``inputs`` (features of the audio file, or of one clip of it) and the ``task``'s
    target (``label_index``; multi-label: ``targets``, multi-hot) to every dataset of
    ``{split: dataset}``.

    The training split takes a random clip per epoch with ``train_crop``
    (``petl_modules.training.windows.TrainCrop``, kept as the dataset's ``train_crop``, where the
    Brain sets its epoch); a dataset of sliding windows (``window_dataset``) reads each window
    and also outputs its ``WINDOW_KEYS`` (file id, start and end); the others read the first clip.
    A dataset whose rows may be segments of long files (``SEGMENT_FIELDS``) reads, crops and
    windows within each segment (``segment_span``). With ``waveform_mixup``
    (``petl_modules.training.mixup.WaveformMixup``) each training clip's audio is mixed with its
    partner's before the features, and the training batches also hold ``mixed_targets``.
    """
    rate = getattr(input_processor, "sample_rate", 16000)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("inputs")
    def audio_pipeline(wav):
        return load_input(wav, input_processor)  # reads only what the model uses

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("inputs")
    def crop_pipeline(uid, wav):
        return load_input(wav, input_processor, start=train_crop(uid))

    @sb.utils.data_pipeline.takes("wav", "window_start", "window_end")
    @sb.utils.data_pipeline.provides("inputs")
    def window_pipeline(wav, start, end):
        return load_input(wav, input_processor, start=int(start), stop=int(end))

    def segment_input(uid, wav, fields, crop, processor=input_processor):
        span = segment_span(fields, rate)
        if span is None:
            return load_input(wav, processor, start=crop(uid) if crop else 0)
        first, last = span
        offset = crop(uid)(last - first) if crop else 0
        return load_input(wav, processor, start=first + offset, stop=last)

    @sb.utils.data_pipeline.takes("id", "wav", *SEGMENT_FIELDS)
    @sb.utils.data_pipeline.provides("inputs")
    def segment_pipeline(uid, wav, *values):
        return segment_input(uid, wav, dict(zip(SEGMENT_FIELDS, values)), None)

    @sb.utils.data_pipeline.takes("id", "wav", *SEGMENT_FIELDS)
    @sb.utils.data_pipeline.provides("inputs")
    def segment_crop_pipeline(uid, wav, *values):
        return segment_input(uid, wav, dict(zip(SEGMENT_FIELDS, values)), train_crop)

    task = task or Task.of("single_label")

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides(task.target_key)
    def label_pipeline(label):
        return task.target(label, encoder)

    def mixed_pipeline(dataset):
        raw = RawClip(input_processor)

        def read(uid):
            fields = dataset.data[uid]
            return segment_input(uid, fields["wav"], fields, train_crop, raw)

        def soft(uid):  # [C]: one-hot, or multi-hot for multi-label
            target = task.target(dataset.data[uid]["label"], encoder)
            return task.soft_targets(target[None], len(encoder))[0]

        @sb.utils.data_pipeline.takes("id")
        @sb.utils.data_pipeline.provides("inputs", "mixed_targets")
        def pipeline(uid):
            partner, lam = waveform_mixup(uid)
            own = read(uid)
            if lam >= 1.0:
                yield input_processor(own)
                yield soft(uid)
                return
            yield input_processor(mix_waveforms(own, read(partner), lam))
            yield lam * soft(uid) + (1.0 - lam) * soft(partner)
        return pipeline

    for split, dataset in datasets.items():
        keys = ["id", "inputs", task.target_key]
        segments = has_segments(dataset)
        if split == "train" and waveform_mixup is not None:
            dataset.add_dynamic_item(mixed_pipeline(dataset))
            keys.append("mixed_targets")
            dataset.train_crop = train_crop
            dataset.epoch_hooks = [waveform_mixup]
        elif is_window_dataset(dataset):
            dataset.add_dynamic_item(window_pipeline)
            keys += list(WINDOW_KEYS)
        elif split == "train" and train_crop is not None:
            dataset.add_dynamic_item(segment_crop_pipeline if segments else crop_pipeline)
            dataset.train_crop = train_crop
        else:
            dataset.add_dynamic_item(segment_pipeline if segments else audio_pipeline)
        dataset.add_dynamic_item(label_pipeline)
        dataset.set_output_keys(keys)


# Manifest columns of a row that is a segment of a long file: its first second (empty: 0), its end
# (empty: the file's end) and its length in seconds (the manifest's duration).
SEGMENT_FIELDS = ("seg_start", "seg_end", "duration")


def has_segments(dataset):
    """Whether some rows of ``dataset`` are segments of their files (``SEGMENT_FIELDS``)."""
    first = next(iter(dataset.data.values()), {})
    return all(field in first for field in SEGMENT_FIELDS) and any(
        segment_span(fields) is not None for fields in dataset.data.values())


def segment_span(fields, rate=16000):
    """``(first sample, end sample)`` at ``rate`` of a row that is a segment of its file, or None
    for a whole file (``seg_start`` and ``seg_end`` empty)."""
    start, end = fields.get("seg_start"), fields.get("seg_end")
    if start in (None, "") and end in (None, ""):
        return None
    first = round(float(start or 0) * rate)
    return first, first + max(1, round(float(fields["duration"]) * rate))


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
    # The run's task's scores (accuracy; multi-label: mAP and F1), never another task's.
    task = Task.of_result(folds[0] if folds else {})
    main = task.test_key
    test = [r[main] for r in folds]
    if test:
        mean = sum(test) / len(test)
        results[f"{main}_mean"] = mean
        results[f"{main}_std"] = math.sqrt(sum((t - mean) ** 2 for t in test) / len(test))
    for key in (task.valid_key, *task.test_fields):
        values = [r.get(key) for r in folds]
        if values and all(isinstance(v, (int, float)) for v in values):
            results[key] = sum(values) / len(values)
    write_json_atomic(output_folder / "results.json", results)
    return results





# ==================================================================== the run flow
def load_run(hparams_file, dataset_yaml, overrides, run_opts, options_from_data=None):
    """Composes the run's yaml files (``compose_hparams``), checks its options and builds the first
    fold's objects, so that a wrong option fails here, before any data is read.

    Arguments
    ---------
    hparams_file : str
        The method file (``hparams/<method>.yaml``), as ``parse_arguments`` returns it.
    dataset_yaml : Path
        The recipe's dataset yaml.
    overrides : dict or str
        The ``--key=value`` options (``petl_modules.training.arguments.parse_arguments``: ``{key:
        value}``; a yaml string as SpeechBrain's parser gives is read too).
    run_opts : dict
        SpeechBrain's run options (``parse_arguments``).
    options_from_data : callable, optional
        For a dataset whose classes and folds are those of the data (your own data): called
        with the composed options (plain values, nothing built) before the model is built, it
        returns options to set, e.g. ``{"class_names": [...], "n_classes": 3, "folds": [1, 2]}``
        (from listing folders or reading a manifest, no audio read; ``DataError`` for data it
        cannot use). They win over the files and the command line.

    Returns
    -------
    Run
        What every later step reads. A wrong option exits (``sys.exit``) with one line naming it.
    """
    try:
        given = ruamel.yaml.YAML().load(overrides) if isinstance(overrides, str) else overrides
        if (given or {}).get("shards"):  # the classes, folds and data options of the shards
            yaml_text = _compose_from_shards(hparams_file, dataset_yaml, dict(given))
        else:
            yaml_text = compose_hparams(hparams_file, dataset_yaml, overrides)
        if options_from_data is not None and not (given or {}).get("shards"):
            found = options_from_data(ruamel.yaml.YAML().load(yaml_text))
            yaml_text = compose_hparams(hparams_file, dataset_yaml, dict(given or {}, **found))
        folds = fold_list(ruamel.yaml.YAML().load(yaml_text))  # plain keys: nothing built yet
        hparams = load_fold_hparams(yaml_text, folds[0])  # builds the model: options checked
        check_method_config(hparams, hparams_file)
        validate_options(scalar_hparams(hparams))  # values the yaml computed
        if hparams.get("cache_backbone_outputs"):
            check_cacheable(hparams)
        check_dynamic_batching(hparams)
        tracking.check_wandb(hparams)
    except DataError as err:
        sys.exit(f"Error in the data: {err}")
    except (ConfigError, ValueError, TypeError, OSError) as err:
        sys.exit(f"Error in the configuration ({hparams_file} + {dataset_yaml}): {_message(err)}")
    return Run(yaml_text, folds, hparams, run_opts)


def _compose_from_shards(hparams_file, dataset_yaml, given):
    """``compose_hparams`` for a run that reads ``--shards``: class names, their number, the
    folds and the data options the shards were written with (``--subset``, ``--task``, ...) come
    from the shards' index, ``data_folder`` too unless given; a data option given on the command
    line with another value is an error."""
    from petl_modules.training.shards import check_run_against_index, read_index, run_options_from_index

    index = read_index(given["shards"])
    given.setdefault("data_folder", index["data_folder"])
    keys = ruamel.yaml.YAML().load(compose_hparams(hparams_file, dataset_yaml, given))
    check_run_against_index(index, dict(given, dataset=keys.get("dataset")), given["shards"])
    found = {**index.get("data_options", {}), **run_options_from_index(index)}
    found = {k: v for k, v in found.items() if k in keys and (k not in given or k == "class_names")}
    return compose_hparams(hparams_file, dataset_yaml, dict(given, **found))


def data_report(hparams):
    """What the data's preparation reported for results.json (``DATA_REPORT_FILE`` next to the
    manifests, e.g. the clips missing from a copy of the data; for a run from ``--shards``, the
    report the shards were written with): a dict, empty if none."""
    if hparams.get("shards"):
        from petl_modules.training.shards import read_index

        return dict(read_index(hparams["shards"]).get("data_report") or {})
    path = Path(hparams["manifest_folder"]) / DATA_REPORT_FILE
    try:
        with open(path) as stream:
            report = json.load(stream)
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def dataset_name(hparams):
    """The data's name in results tables: ``dataset_name`` (a recipe's dataset by default), or,
    when it is null (own data), the data folder's name."""
    return hparams.get("dataset_name") or Path(str(hparams["data_folder"])).resolve().name


def check_method_config(hparams, hparams_file):
    """Raises ``ConfigError`` unless the run's ``method_config`` is the config of its ``method``
    (what its PETL model folder records)."""
    config = hparams.get("method_config")
    if not isinstance(config, MethodConfig) or config.name != hparams["method"]:
        found = type(config).__name__ if config is not None else "nothing"
        raise ConfigError(
            f"{hparams_file} says 'method: {hparams['method']}' but its method_config is {found}: "
            f"it must build the config class registered as '{hparams['method']}' "
            "(method_config: !new:petl_modules.methods...; see docs/extending.md).")


class Run:
    """A run of a recipe command: its composed yaml, its folds (``[None]`` for official splits),
    the first fold's objects (``hparams``) and the header of its results.json."""

    def __init__(self, yaml_text, folds, hparams, run_opts):
        self.yaml_text, self.folds, self.hparams, self.run_opts = yaml_text, folds, hparams, run_opts
        self.output_folder = Path(hparams["output_folder"])
        self.header = {
            "dataset": hparams["dataset"],
            "dataset_name": dataset_name(hparams),  # the results table's column
            "method": hparams["method"],
            "backbone": hparams["backbone"].family,
            "model_type": hparams["backbone"].config.model_type,  # wav2vec2 family: hubert, wavlm, ...
            "backbone_source": hparams["backbone_source"],
            "seed": hparams["seed"],
            # The folds this command runs: results.json with fewer of them is partial.
            "requested_folds": [f for f in folds if f is not None],
        }
        self.header.update(parameter_report(hparams["modules"]))  # the same model in every fold
        # Said once per command (every fold has the same backbone), where the run's log shows it.
        self.plumbing_warning = hparams["backbone"].plumbing_only()

    def prepare(self, prepare):
        """Runs the recipe's ``prepare(hparams)`` on the main process (SpeechBrain's
        ``run_on_main``); nothing to prepare for a run that reads ``--shards``."""
        if not self.hparams.get("shards"):
            run_on_main(prepare, kwargs={"hparams": self.hparams})

    def datasets(self, make_datasets, hparams, fold):
        """``fold_datasets(make_datasets(hparams, fold), ...)``: the fold's datasets ready for the
        Brain, and the class names; read from the tar shards instead with ``--shards``
        (``petl_modules.training.shards.shard_datasets``)."""
        if hparams.get("shards"):
            from petl_modules.training.shards import shard_datasets

            return shard_datasets(hparams, fold)
        return fold_datasets(make_datasets(hparams, fold), hparams, self.run_opts)

    def experiment_folder(self, fold):
        """The experiment folder of ``fold``: ``<output_folder>/fold_<k>`` (as
        ``compose.load_fold_hparams`` sets it), or the yaml's for official splits."""
        if fold is None or fold == self.folds[0]:
            return Path(self.hparams["experiment_folder"])
        return self.output_folder / f"fold_{int(fold)}"

    def unfinished_folds(self):
        """The folds to run, in order. Rerunning the command of an interrupted multi-fold run
        resumes at the first unfinished fold (that one then resumes from its latest checkpoint):
        a fold with a ``fold_result.json`` is skipped, unless ``--test_only``."""
        for fold in self.folds:
            finished = self.experiment_folder(fold) / "fold_result.json"
            if finished.is_file() and not self.run_opts["test_only"]:
                what = "This run" if fold is None else f"Fold {fold}"
                logger.info(f"{what} already finished ({finished}): not run again.")
                continue
            yield fold

    def fold_hparams(self, fold):
        """The objects of ``fold`` (the first fold's were built by ``load_run``) in its experiment
        folder, which gets the composed yaml (``hyperparams.yaml``) and SpeechBrain's logs."""
        hparams = self.hparams if fold == self.folds[0] else load_fold_hparams(self.yaml_text, fold)
        folder = Path(hparams["experiment_folder"])
        if if_main_process():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hyperparams.yaml").write_text(self.yaml_text)
        sb.create_experiment_directory(experiment_directory=str(folder))
        if self.plumbing_warning:
            logger.warning(self.plumbing_warning)
            self.plumbing_warning = None
        report = parameter_report(hparams["modules"])
        logger.info(
            f"trainable params: {report['trainable_params']:,} "
            f"({report['trainable_params_without_head']:,} without the head) || "
            f"all params: {report['total_params']:,} || trainable%: {report['trainable_percent']:.4f}"
        )
        hparams["train_logger"] = tracking.experiment_logger(hparams, fold, scalar_hparams(hparams))
        return hparams

    def finish_fold(self, fold, hparams, brain, class_names):
        """Records a tested fold: its PETL model folder (``petl_model/``, the best checkpoint's
        weights, which ``evaluate`` recovered, with the fold's ``metrics.json``) and, last, its
        ``fold_result.json``, which marks it finished. Returns the fold's result."""
        task = Task.of_options(hparams)
        best = hparams["checkpointer"].find_checkpoint(max_key=task.selection_key)
        stats = brain.test_stats
        folder = Path(hparams["experiment_folder"])
        result = {"fold": fold,
                  **task.fold_result(float(best.meta[task.selection_key]) if best else None, stats)}
        result.update({
            "best_epoch": int(best.meta.get("epoch", 0)) if best else None,
            "test_loss": stats["loss"],
            "experiment_folder": str(folder),
            "class_names": list(class_names),
            "hparams": scalar_hparams(hparams),
        })
        if if_main_process():
            from petl_modules.model.metrics_file import run_command, write_metrics
            from petl_modules.paths import project_root
            from petl_modules.training.pretrained import save_run_petl_model

            if hparams.get("confusion_matrix") and stats.get("confusion") is not None:
                title = f"{hparams['dataset']} {hparams['method']}" + (f", fold {fold}" if fold else "")
                written = metrics.write_confusion_matrix(folder, stats["confusion"], class_names, title=title)
                logger.info(f"Test confusion matrix: {written[0]}, {written[1]}")
            thresholds = brain.best_thresholds() if task.uses_thresholds else None
            if stats.get("per_class"):  # the task's scores of every class (multi-label)
                written = metrics.write_per_class_scores(folder / metrics.PER_CLASS_FILE,
                                                         stats["per_class"], class_names, thresholds)
                logger.info(f"Test scores per class (AP, AUC, F1): {written}")
            model_folder = save_run_petl_model(hparams, class_names, thresholds)
            write_metrics(model_folder, result, dataset=hparams.get("dataset"),
                          command=run_command(root=project_root()))
            if hparams.get("window_results") and getattr(brain, "test_windows", None):
                brain.test_windows.write_csv(
                    folder / WINDOW_RESULTS_FILE, class_names,
                    getattr(hparams["backbone"].input_processor, "sample_rate", 16000))
            write_json_atomic(folder / "fold_result.json", result)
        return result

    def write_results(self):
        """``<output_folder>/results.json`` from every finished fold (main process; None on the
        others). Returns its content."""
        if not if_main_process():
            return None
        results = aggregate_results(self.output_folder, {**self.header, **data_report(self.hparams)})
        task = Task.of_result(results)
        main, notes = task.test_key, task.summary(results)
        logger.info(
            f"Test {task.metric_name} {results[f'{main}_mean']:.4f} +- {results[f'{main}_std']:.4f}"
            f"{f' ({notes})' if notes else ''} over "
            f"{len(results['folds'])} fold(s); results in {self.output_folder / 'results.json'}"
        )
        return results


@contextlib.contextmanager
def claimed_output_folder(run):
    """Within the block the output folder is this run's: locked (one process tree at a time), its
    recorded run identity checked (or recorded) and the experiment directory made. An error a user
    can fix (output folder, data, checkpoints, full disk) leaves the block as one line
    (``sys.exit``); the lock is released either way."""
    lock = RunLock(run.output_folder)
    try:
        _on_main_then_everywhere(_claim_output_folder, lock, run.hparams)
        sb.create_experiment_directory(experiment_directory=str(run.output_folder))
        yield run.output_folder
        if _distributed():
            torch.distributed.barrier()  # every process is done before the group goes
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
            f"Error: no space left on the disk while writing to {run.output_folder} ({err}). "
            "Free some space (or pass --output_folder on another disk) and rerun the same command: "
            "it resumes from the last complete checkpoint."
        )
    finally:
        lock.release()
        if _distributed():
            # An explicit end: gloo aborts a process that exits with its group still alive.
            torch.distributed.destroy_process_group()


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


# Fewer validation clips than this make the choice of the best epoch a warning.
MIN_VALIDATION_CLIPS = 50


def small_validation_warning(clips, hparams, files=None):
    """None, or the warning for a validation split of ``clips`` files (fewer than
    ``MIN_VALIDATION_CLIPS``) from which the best of several epochs is chosen, saying how to
    enlarge it (own data: ``--valid_fraction`` of the ``files`` of all splits, when the recipe
    draws the split; else more files in it)."""
    if clips >= MIN_VALIDATION_CLIPS or int(hparams.get("number_of_epochs", 1)) <= 1:
        return None
    text = (f"The validation split has {clips} clips (fewer than {MIN_VALIDATION_CLIPS}): the best "
            "epoch is chosen on it, and on so few clips that choice is noisy (one clip moves the "
            f"accuracy by {100 / max(clips, 1):.1f} points). Enlarge it: ")
    more = "put more files in the validation split (its folder or its rows of the manifest)"
    if hparams.get("valid_fraction") and files:
        wanted = MIN_VALIDATION_CLIPS / files
        if wanted <= 0.5:
            more = (f"where the recipe draws the split, --valid_fraction="
                    f"{math.ceil(wanted * 100) / 100:g} (now {float(hparams['valid_fraction']):g}) "
                    f"puts about {MIN_VALIDATION_CLIPS} of the {files} files there; else " + more)
        else:
            more = (f"add files ({files} in all: a --valid_fraction large enough would leave too "
                    "few to train), or " + more)
    return text + more + "."


def fold_datasets(datasets, hparams, run_opts):
    """Makes a fold's ``{"train", "valid", "test"}`` datasets (``wav`` and ``label`` fields, from
    the recipe's ``make_datasets``) ready for the Brain: labels checked and encoded (the encoder
    saved in the experiment folder), the few-shot subset taken, validation and test cut into
    sliding windows (``eval_windows: sliding``), the input pipelines added (random training crops
    with ``train_crop: random``; or the backbone output cache). Returns the datasets and the class
    names."""
    class_names = checked_class_names(datasets, hparams)
    task = Task.of_options(hparams)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(class_names)
    encoder.expect_len(len(class_names))
    if if_main_process():
        encoder.save(Path(hparams["experiment_folder"]) / "label_encoder.txt")
    if int(hparams["few_shot_samples"]) > 0:
        datasets["train"] = few_shot_subset(
            datasets["train"], int(hparams["few_shot_samples"]), hparams["seed"]
        )
    if hparams.get("class_weights") == "balanced":
        with datasets["train"].output_keys_as(["label"]):
            labels = [task.labels_of(item["label"]) for item in datasets["train"]]
        hparams["loss_weights"] = task.class_weights(labels, class_names)
        shown = ", ".join(f"{n} {w:.3g}" for n, w in zip(class_names, hparams["loss_weights"].tolist()))
        logger.info(f"class_weights=balanced: loss weights per class: {shown}")
    small = small_validation_warning(len(datasets["valid"]), hparams,
                                     sum(len(d) for d in datasets.values()))
    if small:
        logger.warning(small)
    processor = hparams["backbone"].input_processor
    if hparams.get("dynamic_batching"):
        try:
            example_seconds(datasets["train"], processor)  # every example has a duration
        except BatchingError as err:
            raise DataError(str(err)) from None
    protocol = EvalProtocol.from_options(hparams)
    rate = getattr(processor, "sample_rate", 16000)
    if any(has_segments(d) for d in datasets.values()) and hparams.get("cache_backbone_outputs"):
        raise DataError("cache_backbone_outputs=True does not handle segments of long files "
                        "(start/end in the manifest): run without it.")
    if protocol.sliding:  # validation and test cover whole files (or segments)
        for split in ("valid", "test"):
            span = functools.partial(segment_span, rate=rate) if has_segments(datasets[split]) else None
            datasets[split] = window_dataset(datasets[split], processor, protocol, span=span)
    crop = None
    if hparams.get("train_crop", "first") == "random":
        crop = TrainCrop(hparams["seed"], clip_samples(processor))
    if hparams.get("sampling", "random") == "class_balanced":
        use_class_balanced_sampling(datasets["train"], class_names, task)
    kind, alpha, prob = mixup_options(hparams)
    mixup = WaveformMixup(datasets["train"].data_ids, hparams["seed"], alpha, prob) \
        if kind == "waveform" else None
    add_pipelines(datasets, processor, encoder, train_crop=crop, task=task, waveform_mixup=mixup)
    if hparams.get("cache_backbone_outputs"):
        use_backbone_cache(hparams, datasets, device=run_opts.get("device", "cpu"),
                           target=task.target_key)
    return datasets, class_names


def _message(err):
    """The message of ``err``; HyperPyYAML adds the class being built to a ``TypeError``'s
    arguments (a tuple as text): joined here as one line."""
    if isinstance(err, TypeError) and len(err.args) > 1:
        return ": ".join(str(a) for a in err.args)
    return str(err)


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
    """Locks the output folder for this run and checks (or records) the run's identity (with the
    fingerprint the lobe took of its checkpoint while loading it)."""
    lock.acquire()
    identity = run_identity(scalar_hparams(hparams), hparams["backbone"].fingerprint()["sha256"])
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
