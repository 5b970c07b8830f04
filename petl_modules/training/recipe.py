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
(``sys.exit(message)``). The parts of the steps are modules of one job each, their names imported
from here too: ``manifests`` (datasets, class names, few-shot), ``folds`` (folds, results.json),
``claim`` (the output folder) and ``pipelines`` (each row's clip read as the model's input).
"""

import json
import logging
import sys
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main

from petl_modules.methods.config import MethodConfig
from petl_modules.model.task import Task
from petl_modules.training import metrics, tracking
from petl_modules.training.batching import BatchingError, check_dynamic_batching, example_seconds
from petl_modules.training.cache import check_cacheable, use_backbone_cache
from petl_modules.training.claim import claimed_output_folder  # noqa: F401 (recipes import it here)
from petl_modules.training.compose import (
    ConfigError,
    compose_hparams,
    load_fold_hparams,
    scalar_hparams,
    validate_options,
)
# The steps of a recipe in modules of their own; recipes, docs and tests import them from here.
from petl_modules.training.folds import (  # noqa: F401
    aggregate_results,
    fold_list,
    rotating_fold_datasets,
    rotating_folds,
)
from petl_modules.training.manifests import (  # noqa: F401
    MIN_VALIDATION_CLIPS,
    checked_class_names,
    class_names_of,
    few_shot_ids,
    few_shot_subset,
    load_manifest,
    manifest_rows,
    small_validation_warning,
)
from petl_modules.training.mixup import WaveformMixup, mixup_options
from petl_modules.training.pipelines import add_pipelines
from petl_modules.training.prepare import DATA_REPORT_FILE, DataError
from petl_modules.training.run_folder import write_json_atomic
from petl_modules.training.sampling import use_class_balanced_sampling
from petl_modules.training.windows import (  # noqa: F401 (SEGMENT_FIELDS, segment_span: from here too)
    SEGMENT_FIELDS,
    WINDOW_RESULTS_FILE,
    EvalProtocol,
    TrainCrop,
    clip_samples,
    has_segments,
    segment_span,
    window_dataset,
)

logger = logging.getLogger(__name__)


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
    if any(has_segments(d) for d in datasets.values()) and hparams.get("cache_backbone_outputs"):
        raise DataError("cache_backbone_outputs=True does not handle segments of long files "
                        "(start/end in the manifest): run without it.")
    if protocol.sliding:  # validation and test cover whole files (or segments)
        for split in ("valid", "test"):
            datasets[split] = window_dataset(datasets[split], processor, protocol)
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
