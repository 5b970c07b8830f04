"""The task head of an exported backbone: in transformers' own classification class where it maps
onto it exactly, and always beside it as ``classifier_head.safetensors`` + ``classifier_head.json``.

``write_transformers_checkpoint`` writes the merged backbone as the family's audio-classification
class (``ASTForAudioClassification`` for pooling ``cls_distill``, ``*ForSequenceClassification``
for the wav2vec2 family and w2v-BERT, ``WhisperForAudioClassification`` for pooling ``mean``: the lobes'
``classification_model``) with ``id2label``/``label2id`` (and ``problem_type`` for multi-label),
so that ``pipeline("audio-classification", model=OUT)`` gives ``classify``'s scores; otherwise as
the base model (``ASTModel``, ...), which has no place for our head. Both with the run's
``preprocessor_config.json``. The side files (the PETL-AST reading of the head)::

    classifier_head.safetensors   head.weight [C, D], head.bias [C] (cls_distill: norm.weight/bias [D])
    classifier_head.json          class_names (index order), pooling, input settings, origin

``read_head`` reads it back as data (JSON + safetensors), e.g. when a PEFT adapter we exported is
imported again.
"""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from petl_modules.files import write_json_atomic
from petl_modules.methods.classifier import POOLINGS
from petl_modules.model.bases import shareable_name
from petl_modules.model.spec import PETLModelError
from petl_modules.model.task import Task

HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_head.json"
MAX_HEAD_CONFIG_BYTES = 16 * 2 ** 20


def write_preprocessor_config(lobe, source, out_dir):
    """``preprocessor_config.json`` of the run's input settings (``lobe.feature_extractor()``);
    where transformers has no extractor for them, the base checkpoint's ``source`` copied (when
    it has one)."""
    extractor = lobe.feature_extractor()
    if extractor is None:
        return lobe.copy_preprocessor_config(source, out_dir)
    extractor.save_pretrained(out_dir)
    return True


def write_transformers_checkpoint(out_dir, modules, config, backbone_source):
    """Writes the merged backbone of ``modules`` to ``out_dir`` (see the module docstring).

    Returns
    -------
    dict
        ``transformers_class`` (the class written, or None: the base model) and ``pipeline``
        (None, or why ``pipeline("audio-classification")`` does not give ``classify``'s scores,
        or on which files it does not).
    """
    lobe = modules["petl_model"].adapted_model
    model, note = lobe.classification_model(modules["classifier"])
    if model is None:
        lobe.export_pretrained(out_dir)  # the lobe's checkpoint format (save_pretrained)
    else:
        names = list(config["class_names"])
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: index for index, name in enumerate(names)}
        if config.get("task") == "multilabel":
            model.config.problem_type = "multi_label_classification"
        model.save_pretrained(out_dir)
    write_preprocessor_config(lobe, backbone_source or config["backbone_source"], out_dir)
    return {"transformers_class": None if model is None else type(model).__name__,
            "pipeline": note}


def write_head(out_dir, modules, config, backbone_source, **extra):
    """Writes the head of ``modules["classifier"]`` and its JSON (``config``: the PETL model
    folder's) into ``out_dir``; ``extra`` keys are added to the JSON. Returns the JSON content."""
    out_dir = Path(out_dir)
    head = {k: v.detach().cpu().contiguous() for k, v in modules["classifier"].state_dict().items()}
    save_file(head, str(out_dir / HEAD_WEIGHTS), metadata={"format": "pt"})
    task = Task.of_view(config)
    side = {
        "class_names": config["class_names"],
        "task": task.kind,
        "thresholds": task.thresholds,
        "pooling": config.get("pooling"),
        "input": config.get("input"),
        "family": config["family"],
        "method": config["method"],
        **extra,
        # names, never paths of this machine (the export is meant to be shared)
        "base_backbone_source": shareable_name(backbone_source or config["backbone_source"]),
        "petl_model": shareable_name(config["model_dir"]),
        "head_weights": HEAD_WEIGHTS,
    }
    write_json_atomic(out_dir / HEAD_CONFIG, side)
    return side


def read_head(folder):
    """``(head state {"head.weight", "head.bias"}, side JSON)`` of ``folder``, or None when it has
    no head; ``PETLModelError`` naming the file when it is malformed. Read as data only."""
    folder = Path(folder)
    config_path, weights_path = folder / HEAD_CONFIG, folder / HEAD_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        return None
    if config_path.stat().st_size > MAX_HEAD_CONFIG_BYTES:
        raise PETLModelError(f"{config_path} is too large for a head config; not read.")
    try:
        side = json.loads(config_path.read_text(encoding="utf-8"))
        state = load_file(str(weights_path))
    except Exception as err:  # noqa: BLE001 (JSON and safetensors raise their own types)
        raise PETLModelError(f"{folder}: the saved head cannot be read ({err}).") from None
    names = side.get("class_names") if isinstance(side, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or set(state) - {"norm.weight", "norm.bias"} != {"head.weight", "head.bias"} \
            or state["head.weight"].dim() != 2 \
            or state["head.weight"].shape[0] != len(names):
        raise PETLModelError(f"{folder}: {HEAD_CONFIG} / {HEAD_WEIGHTS} are not a head written by "
                             "PETL-AST (class_names and head.weight [C, D], head.bias [C]).")
    if side.get("pooling") is not None and side["pooling"] not in POOLINGS:
        raise PETLModelError(f"{config_path}: pooling {str(side['pooling'])!r:.60} is not one of "
                             f"{', '.join(POOLINGS)}; it was edited by hand or not written by PETL-AST.")
    return state, side
