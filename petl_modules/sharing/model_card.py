"""The model card (``README.md``) of a PETL model folder pushed to the Hugging Face Hub.

Built from the folder's data only (``petl_config.json`` and the optional ``metrics.json``), as a
``huggingface_hub.ModelCard``: YAML front matter the Hub reads (library, tags, pipeline, base
model, datasets, metrics and a ``model-index`` with the test accuracy), then what the model is
(method, backbone and its checkpoint id, dataset, scores, trained parameters, the training
command), how to use it, and the citations of the two papers whose methods it implements.
"""

import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from petl_modules.methods import METHODS
from petl_modules.model.task import Task

LIBRARY_NAME = "petl-ast"
CITATIONS = """\
@inproceedings{cappellazzo2024petl,
  title     = {Parameter-Efficient Transfer Learning of Audio Spectrogram Transformers},
  author    = {Cappellazzo, Umberto and Falavigna, Daniele and Brutti, Alessio and Ravanelli, Mirco},
  booktitle = {IEEE 34th International Workshop on Machine Learning for Signal Processing (MLSP)},
  year      = {2024},
  eprint    = {2312.03694},
  archivePrefix = {arXiv}
}

@inproceedings{cappellazzo2024moa,
  title     = {Efficient Fine-tuning of Audio Spectrogram Transformers via Soft Mixture of Adapters},
  author    = {Cappellazzo, Umberto and Falavigna, Daniele and Brutti, Alessio},
  booktitle = {Interspeech 2024},
  year      = {2024},
  eprint    = {2402.00828},
  archivePrefix = {arXiv}
}"""

# The backbone's options worth a line in the card beside the method's own (its config class's).
SIZE_OPTIONS = ("max_frames", "clip_seconds")


def is_hub_id(source):
    """True when a ``backbone_source`` reads as a Hub id (``owner/name``), not a local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", str(source))) and not str(source).startswith(".")


def method_keys(method):
    """The options of ``method`` (its config class's fields, ``petl_modules.methods``), in order."""
    return list(METHODS[method].options()) if method in METHODS else []


def _score(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def model_card(config, metrics=None, repo_id=None):
    """The ``ModelCard`` of a PETL model folder.

    Arguments
    ---------
    config : dict
        Its checked ``petl_config.json``, flat (``petl_modules.model.folder.read_config``).
    metrics : dict, optional
        Its checked ``metrics.json`` (``petl_modules.model.metrics_file.read_metrics``).
    repo_id : str, optional
        Where it is pushed (for the usage lines).

    Returns
    -------
    huggingface_hub.ModelCard
    """
    metrics = metrics or {}
    dataset = metrics.get("dataset") or config.get("dataset")
    name = repo_id.split("/")[-1] if repo_id else f"{config['family']}-{config['method']}"
    data = card_data(config, metrics, dataset, name)
    lines = [*summary_lines(config, metrics, dataset, name),
             *usage_lines(config, metrics, repo_id or "<this repo id>"),
             "## Citation", "", "```bibtex", CITATIONS, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def card_data(config, metrics, dataset, name):
    """The card's front matter (``ModelCardData``): library, tags, pipeline, base model, dataset,
    the task's metric and a ``model-index`` with its test score."""
    method, family, source = config["method"], config["family"], config["backbone_source"]
    task = Task.of_view(config)
    score = metrics.get(task.test_key)
    eval_results = None
    if score is not None and dataset:
        eval_results = [EvalResult(task_type="audio-classification", dataset_type=dataset,
                                   dataset_name=dataset, metric_type=task.metric,
                                   metric_value=float(score), metric_name=f"Test {task.metric_name}")]
    return ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag="audio-classification",
        tags=["audio-classification", "parameter-efficient-fine-tuning", "petl", method, family,
              "speechbrain"],
        base_model=source if is_hub_id(source) else None,
        datasets=[dataset] if dataset else None,
        metrics=[task.metric],
        model_name=name,
        eval_results=eval_results,
    )


def summary_lines(config, metrics, dataset, name):
    """The card's title, what the model is and its table: method, backbone, dataset, the task's
    scores, trained parameters, classes."""
    method, family, source = config["method"], config["family"], config["backbone_source"]
    task = Task.of_view(config)
    options = config.get("options", {})
    settings = ", ".join(f"{k}={options[k]}" for k in [*method_keys(method), *SIZE_OPTIONS]
                         if options.get(k) is not None)
    fold = metrics.get("fold", config.get("fold"))
    trained = config.get("trained_params")
    return [
        f"# {name}",
        "",
        f"A **{method}** model ({family} backbone) for audio classification on "
        f"**{dataset or 'an unnamed dataset'}**, trained with PETL-AST (parameter-efficient "
        "transfer learning, SpeechBrain recipes): the pre-trained backbone stays frozen and only "
        "the few tensors of this folder were trained.",
        "",
        "| | |",
        "|---|---|",
        f"| Method | `{method}`" + (f" ({settings})" if settings else "") + " |",
        f"| Backbone | {family}, checkpoint `{source}` |",
        f"| Dataset | {dataset or 'n/a'}" + (f", fold {fold}" if fold not in (None, "") else "") + " |",
        f"| Test {task.metric_name} | {_score(metrics.get(task.test_key))} |",
        *task.card_rows(metrics, _score),
        f"| Validation {task.metric_name} (best epoch) | {_score(metrics.get(task.valid_key))}"
        + (f" (epoch {metrics['best_epoch']})" if metrics.get("best_epoch") is not None else "")
        + " |",
        f"| Trained parameters | {trained:,} (head included) |" if isinstance(trained, int)
        else "| Trained parameters | n/a |",
        f"| Classes | {len(config['class_names'])}{task.classes_note} |",
        "",
    ]


def usage_lines(config, metrics, where):
    """How the card's model was trained (its command, if recorded) and is used."""
    source = config["backbone_source"]
    lines = []
    if metrics.get("command"):
        lines += ["Trained with:", "", "```bash", metrics["command"], "```", ""]
    if not is_hub_id(source):
        lines += [f"The base checkpoint was a local folder (`{source}`): pass a copy of it with "
                  "`--backbone_source=...` (its weights' fingerprint is checked).", ""]
    return lines + [
        "## Usage",
        "",
        "```bash",
        f"python -m petl_modules.classify {where} audio.wav",
        "```",
        "",
        "```python",
        "from petl_modules.classify import PETLClassifier",
        f'classifier = PETLClassifier.from_folder("{where}")',
        'out_prob, score, index, label = classifier.classify_file("audio.wav")',
        "```",
        "",
        "The folder holds `petl_config.json` (plain JSON: method, options, input settings, "
        "labels, the base checkpoint's fingerprint), `petl_weights.safetensors` (only the "
        "trained tensors) and `metrics.json`; loading it never runs code from it.",
        "",
    ]
