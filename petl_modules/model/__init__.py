"""The model layer: a trained model as a typed, self-contained artifact, below training.

- ``spec.py``: ``ModelSpec`` (what defines a model: base checkpoint, method config, head, task,
  evaluation protocol, class names) and ``petl_config.json`` (format 4; formats 1-3 read);
- ``folder.py``: building a model from its spec, the model folder (save, load, merge LoRA);
- ``petl_model.py``: ``PETLModel`` (``from_pretrained``, ``save_pretrained``, ``model(wavs)``,
  ``classify``) and ``PETLClassifier`` (the SpeechBrain-style name: ``from_folder``);
- ``multitask.py``: several tasks' models on one frozen backbone (``TaskRouter``,
  ``MultiTaskModel``); ``multitask_classifier.py``: loading them from their folders
  (``MultiTaskClassifier``);
- ``bases.py``: how a base checkpoint is named without a local path and found again;
- ``hub.py``: Hugging Face Hub repo ids where a folder is expected;
- ``audio.py`` (reading any audio file as 16 kHz mono, only the part a clip uses),
  ``clip.py`` (a clip of a recording: a file, a segment, a crop or a window, one reader),
  ``windows.py`` (the evaluation protocol: first clip or sliding windows), ``task.py``
  (the task kinds, one class each: loss, outputs, scores, thresholds, result fields),
  ``scores.py`` (accuracy, F1, mAP, thresholds), ``precision.py`` (bf16, ``torch.compile``),
  ``metrics_file.py`` (a model folder's optional ``metrics.json``).

Nothing here imports ``training/``, ``sharing/``, the recipes, the method files or a YAML parser:
a model folder loads from an installed package alone.

Example
-------
>>> from petl_modules.model import PETLModel
>>> model = PETLModel.from_pretrained("results/FSC/lora/10/petl_model")  # doctest: +SKIP
>>> model.classify("utterance.wav")["label"]  # doctest: +SKIP
'activate,lights,none'
"""

_LAZY = {
    "PETLModel": "petl_modules.model.petl_model",
    "PETLClassifier": "petl_modules.model.petl_model",
    "MultiTaskClassifier": "petl_modules.model.multitask_classifier",
    "ModelSpec": "petl_modules.model.spec",
    "BackboneRef": "petl_modules.model.spec",
    "PETLModelError": "petl_modules.model.spec",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    """The classes above, imported when first used (``import petl_modules.model.audio`` stays light)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
