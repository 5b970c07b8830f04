"""A trained model as one ONNX graph, checked with onnxruntime before it is kept.

``python -m petl_modules.export MODEL_DIR OUT --format=onnx`` writes::

    OUT/
    ├── model.onnx         input features -> class probabilities (backbone, PETL modules, head, softmax)
    └── onnx_config.json   the inputs and their axes, the input processor's settings (what turns a
                           16 kHz waveform into ``input_values``), class_names, the parity check

Every method exports (LoRA merged first; adapters, prompts, prefixes, MoA and the conformer block
as they are). Inputs, with dynamic ``batch`` and length axes:

- spectrogram backbones (AST, Whisper): ``input_values [batch, frames, mel]``. The graph cuts or
  pads ``frames`` to the length the model was trained on (AST ``max_frames``, Whisper's clip) as
  the input processor pads (its ``pad_frames``): AST's fbank is padded with zeros BEFORE it is
  normalised, so a padded frame is ``padding_value`` (0.467 with the AudioSet statistics), not 0,
  and the normalised fbank of a clip of any length gives ``classify``'s answer (Optimum fixes AST's
  time axis instead). Whisper's extractor pads the waveform to the clip: its features of
  ``clip_samples`` are exact (fewer frames are padded with the extractor's silence, which differs
  in the two frames past the clip's end);
- waveform backbones (wav2vec2, HuBERT, WavLM, data2vec-audio): ``input_values [batch, samples]``
  (cut to the clip, then normalised per utterance when the processor says ``normalize``) and
  ``lengths [batch]``, each utterance's valid length relative to ``samples`` (SpeechBrain's
  convention; 1.0 when unpadded).

The exporter is torch's dynamo-based ``torch.onnx.export(..., dynamo=True)`` (needs onnxscript),
for every method and family: it traces with symbolic shapes, so sizes computed from the input (the
clip's padding, the CNN's frames, the prompts' positions) stay expressions of the input length,
and a branch on the data (does this batch have padding?) is an error rather than a silent
constant; the token mask the lobes set is then kept as a tensor (``token_mask``). The
TorchScript-based exporter (``dynamo=False``, deprecated in torch 2.9+) records the branch its
example took: traced on an unpadded batch, a conformer adapter on wav2vec2-large's layout lost its
padding mask and drifted on padded batches (6e-5 on a tiny random model, growing with the weights).

Parity check (always run, before the model is kept): onnxruntime (CPU) fed generated clips as a
client feeds them (AST: the normalised fbank of the whole clip, unpadded) against PyTorch (eager)
fed as ``classify`` feeds it (the input processor's padded output), on clips shorter than, as long
as and longer than the trained length (0.6, 1.0, 1.5 times), in batches of 1 and 3 (waveform
batches with different valid lengths); the maximum absolute difference of the probabilities must
be at most 1e-4, else the export fails and its files are removed.
"""

import logging
import math
from pathlib import Path

import torch

from petl_modules.files import write_json_atomic
from petl_modules.model.spec import PETLModelError
from petl_modules.model.bases import shareable_name

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "onnx_config.json"
OPSET = 18
TOLERANCE = 1e-4
BATCH_SIZES = (1, 3)
# clips shorter than, as long as and longer than the trained length
LENGTH_FRACTIONS = (0.6, 1.0, 1.5)


class ProbabilityModel(torch.nn.Module):
    """Backbone + PETL modules + head + softmax (a multi-label model: a sigmoid per class), from
    model inputs to ``[B, C]`` probabilities.

    Spectrogram inputs ``[B, T, F]`` are cut or padded to ``frames`` (the processor's fixed length)
    inside the model by the input processor's own ``pad_frames`` (AST: the normalised zero,
    ``padding_value``); waveforms ``[B, S]`` take relative ``lengths [B]`` (the lobe cuts and pads
    them to its clip). The same computation as ``PETLClassifier.classify_inputs``.
    """

    def __init__(self, petl_model, classifier, frames=None, multilabel=False):
        super().__init__()
        self.petl_model = petl_model
        self.classifier = classifier
        self.frames = frames
        self.multilabel = multilabel
        self.pad_frames = getattr(petl_model.adapted_model.input_processor, "pad_frames", None)

    def forward(self, input_values, lengths=None):
        if self.frames is not None:
            input_values = self.pad_frames(input_values, self.frames)
        hidden, mask = self.petl_model(input_values, lengths)
        logits = self.classifier(hidden, mask).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)


def fixed_frames(lobe):
    """The frames a spectrogram lobe's inputs must have (AST ``max_frames``, Whisper's clip)."""
    processor = lobe.input_processor
    if lobe.input_kind != "spectrogram":
        return None
    return int(getattr(processor, "max_frames", None) or processor.frames)


def generated_inputs(lobe, batch, fraction, seed=0):
    """Generated utterances of ``fraction`` of the trained length (AST ``max_frames``, the clip;
    waveforms: valid lengths 1.0, 0.8, 0.6, ... of it) as an ONNX client feeds them and as
    ``classify`` feeds the model: ``(client, classify)``, each ``(inputs, lengths or None)``.

    A client feeds AST the normalised fbank of the whole clip (fewer or more frames than
    ``max_frames``); the other processors' outputs are what a client computes (Whisper's extractor
    pads the waveform to the clip; a waveform is cut to the clip, then normalised).
    """
    processor = lobe.input_processor
    generator = torch.Generator().manual_seed(seed)
    samples = round((processor.samples_needed or 16000) * fraction)
    if lobe.input_kind == "spectrogram":
        wavs = [0.1 * (1 + k) * torch.randn(samples, generator=generator) for k in range(batch)]
        client = getattr(processor, "unpadded", processor)
        return ((torch.stack([client(w) for w in wavs]), None),
                (torch.stack([processor(w) for w in wavs]), None))
    valid = [max(processor.min_samples, round(samples * (1 - 0.2 * k))) for k in range(batch)]
    wavs = [processor(0.1 * torch.randn(n, generator=generator)) for n in valid]
    inputs = torch.zeros(batch, max(len(w) for w in wavs))
    for k, wav in enumerate(wavs):
        inputs[k, : len(wav)] = wav
    inputs = (inputs, torch.tensor([len(w) / inputs.shape[1] for w in wavs]))
    return inputs, inputs


def parity(session, model, lobe):
    """Max abs difference of the probabilities of onnxruntime's ``session`` fed as a client feeds
    it and ``model`` (eager) fed as ``classify`` feeds it, over generated clips shorter than, as
    long as and longer than the trained length, in batches of 1 and 3; with each case's
    difference."""
    cases = []
    for fraction in LENGTH_FRACTIONS:
        for batch in BATCH_SIZES:
            (inputs, lengths), (reference, reference_lengths) = generated_inputs(
                lobe, batch, fraction, seed=batch)
            feed = {"input_values": inputs.numpy()}
            if lengths is not None:
                feed["lengths"] = lengths.numpy()
            with torch.no_grad():
                expected = model(reference, reference_lengths)
            found = torch.from_numpy(session.run(["probabilities"], feed)[0])
            difference = float((found - expected).abs().max()) if found.shape == expected.shape \
                else math.inf
            cases.append({"batch": batch, "fraction": fraction, "length": int(inputs.shape[1]),
                          "max_abs_difference": difference})
    return max(c["max_abs_difference"] for c in cases), cases


def export_graph(model, lobe, path, opset=OPSET):
    """``torch.onnx.export`` (dynamo) of a ``ProbabilityModel`` of ``lobe`` to ``path``, with
    dynamic batch and length axes; returns the example inputs it traced."""
    waveform = lobe.input_kind == "waveform"
    example = generated_inputs(lobe, 2, 1.0)[0]
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    shapes = {"input_values": {0: batch, 1: length}}
    if waveform:
        shapes["lengths"] = {0: batch}
    with torch.no_grad():
        torch.onnx.export(model, example if waveform else example[:1], str(path), dynamo=True,
                          opset_version=int(opset), verbose=False, input_names=list(shapes),
                          output_names=["probabilities"], dynamic_shapes=shapes, external_data=False)
    return example


def export_onnx(modules, config, out_dir, opset=None, merged_lora_modules=0):
    """Writes ``modules`` (LoRA already merged) as ``model.onnx`` + ``onnx_config.json`` in
    ``out_dir`` after the onnxruntime parity check (see the module docstring).

    Returns
    -------
    dict
        The content of ``onnx_config.json``.

    Raises
    ------
    PETLModelError
        The exporter failed, or onnxruntime's probabilities differ from PyTorch's by more than
        ``TOLERANCE`` (the files are removed).
    """
    import onnxruntime

    opset = int(opset or OPSET)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lobe = modules["petl_model"].adapted_model
    model = ProbabilityModel(modules["petl_model"], modules["classifier"], fixed_frames(lobe),
                             multilabel=config.get("task") == "multilabel").eval()
    waveform = lobe.input_kind == "waveform"
    path = out_dir / MODEL_FILE
    for stale in (path, out_dir / f"{MODEL_FILE}.data", out_dir / CONFIG_FILE):
        stale.unlink(missing_ok=True)
    where = f"the '{config['method']}' model of {config['model_dir']}"
    try:
        example = export_graph(model, lobe, path, opset)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        difference, cases = parity(session, model, lobe)
    except Exception as err:  # noqa: BLE001 (the exporter and onnxruntime raise many types)
        _remove(out_dir)
        logger.debug("ONNX export failed", exc_info=True)
        text = str(err).split("## Exception summary", 1)[-1].strip()[:1500]
        raise PETLModelError(f"ONNX export of {where} failed: {type(err).__name__}: {text}") from err
    if not difference <= TOLERANCE:
        _remove(out_dir)
        raise PETLModelError(
            f"ONNX export of {where} failed the parity check: onnxruntime's probabilities differ "
            f"from PyTorch's by {difference:.3g} (> {TOLERANCE:g}); cases: {cases}. The files were "
            "removed."
        )
    opset = file_opset(path)  # the exporter may write another opset than asked (e.g. --opset=1)
    inputs = [{"name": "input_values", "axes": ["batch", "samples"] if waveform
               else ["batch", "frames", int(example[0].shape[-1])]}]
    if waveform:
        inputs.append({"name": "lengths", "axes": ["batch"],
                       "meaning": "valid length of each utterance relative to samples (1.0: all)"})
    side = {
        "format": "onnx",
        "model": MODEL_FILE,
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__.split('+')[0]}",
        "inputs": inputs,
        "outputs": [{"name": "probabilities", "axes": ["batch", "classes"]}],
        "input": config.get("input"),
        "frames": fixed_frames(lobe),
        # AST: the value of a padded frame (the normalised zero), to batch clips of unequal length
        "padding_value": getattr(lobe.input_processor, "padding_value", None),
        "class_names": config["class_names"],
        # multi-label: a sigmoid per class, predicted where it reaches the class's threshold
        "task": config.get("task", "single_label"),
        "thresholds": config.get("thresholds"),
        # how the run was tested: the first clip, or sliding windows whose probabilities are pooled
        "evaluation": config.get("evaluation"),
        "pooling": config.get("pooling"),
        "family": config["family"],
        "method": config["method"],
        "merged_lora_modules": merged_lora_modules,
        # names, never paths of this machine (the export is meant to be shared)
        "base_backbone_source": shareable_name(config["backbone_source"]),
        "petl_model": shareable_name(config["model_dir"]),
        "parity": {"runtime": f"onnxruntime {onnxruntime.__version__} CPU", "tolerance": TOLERANCE,
                   "max_abs_difference": difference, "cases": cases},
    }
    write_json_atomic(out_dir / CONFIG_FILE, side)
    return side


def file_opset(path):
    """The ONNX opset (default domain) that the model file at ``path`` declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _remove(out_dir):
    for name in (MODEL_FILE, f"{MODEL_FILE}.data", CONFIG_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)
