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
  convention; 1.0 when unpadded);
- spectrogram backbones that mask padding instead of padding to a fixed length (BEATs, w2v-BERT
  2.0: ``Backbone.takes_lengths``): ``input_values [batch, frames, features]`` of any length, padded
  with zeros to batch, and ``lengths [batch]`` as above.

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

``--precision=int8``: the graph's linear layers (every ``MatMul`` with a constant weight) are
quantised by onnxruntime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``:
int8 weights per output channel, activations quantised per batch at run time) and the fp32 graph
is not kept. Its check feeds the same cases; instead of the 1e-4 tolerance, every row's most
probable class must be PyTorch's (``top1_agreement`` 1.0) unless PyTorch's own two best classes
lie within ``NEAR_TIE`` (0.01) of each other (``near_ties``: a tie that the quantisation noise may
break either way), and the probabilities may differ by at most ``INT8_TOLERANCE`` (0.05).
"""

import logging
import math
from pathlib import Path

import torch
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules.files import write_json_atomic
from petl_modules.model.spec import PETLModelError
from petl_modules.model.task import SingleLabel, Task
from petl_modules.model.bases import shareable_name

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "onnx_config.json"
FP32_FILE = "model_fp32.onnx"  # int8: the traced graph before quantisation (removed)
OPSET = 18  # fp32: an opset most ONNX runtimes read
# int8 (a graph for onnxruntime alone): from opset 23 the exporter writes attention as one
# `Attention` node instead of scaled_dot_product_attention's decomposition, whose guard against
# fully masked rows (IsNaN/Where over every score) took 28% of an int8 AST-base forward at 1212
# tokens; int8 at batch 8 went from 1.58x to 2.36x PyTorch fp32 eager (benchmarks/README.md).
INT8_OPSET = 23
TOLERANCE = 1e-4
PRECISIONS = ("fp32", "int8")
INT8_TOLERANCE = 0.05  # max |probability difference| of the int8 graph against PyTorch fp32
NEAR_TIE = 0.01  # PyTorch's two best classes this close: the int8 graph may pick either
BATCH_SIZES = (1, 3)
# clips shorter than, as long as and longer than the trained length
LENGTH_FRACTIONS = (0.6, 1.0, 1.5)


class ProbabilityModel(torch.nn.Module):
    """Backbone + PETL modules + head + the task's output activation (softmax; a multi-label model:
    a sigmoid per class), from model inputs to ``[B, C]`` probabilities.

    Spectrogram inputs ``[B, T, F]`` are cut or padded to ``frames`` (the processor's fixed length)
    inside the model by the input processor's own ``pad_frames`` (AST: the normalised zero,
    ``padding_value``); waveforms ``[B, S]`` take relative ``lengths [B]`` (the lobe cuts and pads
    them to its clip). The same computation as ``PETLClassifier.classify_inputs``.
    """

    def __init__(self, petl_model, classifier, frames=None, task=None):
        super().__init__()
        self.petl_model = petl_model
        self.classifier = classifier
        self.frames = frames
        self.task = task or SingleLabel()
        self.pad_frames = getattr(petl_model.adapted_model.input_processor, "pad_frames", None)

    def forward(self, input_values, lengths=None):
        if self.frames is not None:
            input_values = self.pad_frames(input_values, self.frames)
        hidden, mask = self.petl_model(input_values, lengths)
        return self.task.probabilities(self.classifier(hidden, mask))


def fixed_frames(lobe):
    """The frames a spectrogram lobe's inputs must have (AST ``max_frames``, Whisper's clip); None
    for waveforms and for lobes that mask padding (``takes_lengths``)."""
    processor = lobe.input_processor
    if lobe.input_kind != "spectrogram" or lobe.takes_lengths:
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
    if not lobe.takes_lengths:
        wavs = [0.1 * (1 + k) * torch.randn(samples, generator=generator) for k in range(batch)]
        client = getattr(processor, "unpadded", processor)
        return ((torch.stack([client(w) for w in wavs]), None),
                (torch.stack([processor(w) for w in wavs]), None))
    valid = [max(processor.min_samples, round(samples * (1 - 0.2 * k))) for k in range(batch)]
    inputs = batch_pad_right([processor(0.1 * torch.randn(n, generator=generator)) for n in valid])
    return inputs, inputs


def compared(session, model, lobe):
    """onnxruntime's ``session`` fed as a client feeds it and ``model`` (eager) fed as ``classify``
    feeds it, over generated clips shorter than, as long as and longer than the trained length, in
    batches of 1 and 3: ``[(case, found [B, C], expected [B, C])]`` (``found`` None when its shape
    is not the expected one)."""
    out = []
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
            case = {"batch": batch, "fraction": fraction, "length": int(inputs.shape[1])}
            out.append((case, found if found.shape == expected.shape else None, expected))
    return out


def parity(session, model, lobe):
    """Max abs difference of the probabilities of ``session`` and ``model`` over the generated
    clips of ``compared``; with each case's difference."""
    cases = [{**case, "max_abs_difference": math.inf if found is None
              else float((found - expected).abs().max())}
             for case, found, expected in compared(session, model, lobe)]
    return max(c["max_abs_difference"] for c in cases), cases


def int8_agreement(session, model, lobe):
    """The int8 graph's check (see the module docstring): ``{"top1_agreement", "near_ties",
    "max_abs_difference", "rows", "passed"}`` over the generated clips of ``compared``."""
    rows = agreeing = ties = 0
    worst = 0.0
    for _, found, expected in compared(session, model, lobe):
        if found is None:
            return {"top1_agreement": 0.0, "near_ties": 0, "max_abs_difference": math.inf,
                    "rows": rows, "passed": False}
        difference = (found - expected).abs().amax(dim=-1)
        best = expected.topk(min(2, expected.shape[-1]), dim=-1).values
        margin = best[:, 0] - best[:, -1]
        same = found.argmax(dim=-1) == expected.argmax(dim=-1)
        rows += len(same)
        agreeing += int(same.sum())
        ties += int((~same & (margin <= NEAR_TIE)).sum())
        worst = max(worst, float(difference.max()))
    return {"top1_agreement": agreeing / rows, "near_ties": ties, "max_abs_difference": worst,
            "rows": rows, "passed": agreeing + ties == rows and worst <= INT8_TOLERANCE}


def quantize_int8(fp32_path, int8_path):
    """onnxruntime's dynamic quantisation of the linear layers of the graph at ``fp32_path``
    (``MatMul`` with a constant weight: int8 weights per output channel, activations quantised at
    run time) written to ``int8_path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _WithoutPreprocessingHint()
    logging.getLogger().addFilter(hint)  # its advice to users of static quantisation
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.getLogger().removeFilter(hint)


class _WithoutPreprocessingHint(logging.Filter):
    """Drops onnxruntime's "consider to run pre-processing before quantization" warning."""

    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage()


def require_onnxruntime(what):
    """``onnxruntime`` (imported), or a ``PETLModelError`` saying ``what`` needs it and how to
    install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise PETLModelError(
            f"{what} needs onnxruntime, which is not installed ({err}): pip install "
            "'petl-ast[export]' (onnx, onnxscript, onnxruntime).") from None
    return onnxruntime


def export_graph(model, lobe, path, opset=OPSET):
    """``torch.onnx.export`` (dynamo) of a ``ProbabilityModel`` of ``lobe`` to ``path``, with
    dynamic batch and length axes; returns the example inputs it traced."""
    takes_lengths = lobe.takes_lengths
    example = generated_inputs(lobe, 2, 1.0)[0]
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    shapes = {"input_values": {0: batch, 1: length}}
    if takes_lengths:
        shapes["lengths"] = {0: batch}
    with torch.no_grad():
        torch.onnx.export(model, example if takes_lengths else example[:1], str(path), dynamo=True,
                          opset_version=int(opset), verbose=False, input_names=list(shapes),
                          output_names=["probabilities"], dynamic_shapes=shapes, external_data=False)
    return example


def export_onnx(modules, config, out_dir, opset=None, merged_lora_modules=0, precision="fp32"):
    """Writes ``modules`` (LoRA already merged) as ``model.onnx`` + ``onnx_config.json`` in
    ``out_dir`` after its check against PyTorch (see the module docstring): fp32, or ``int8``
    (onnxruntime's dynamic quantisation of the linear layers).

    Returns
    -------
    dict
        The content of ``onnx_config.json``.

    Raises
    ------
    PETLModelError
        onnxruntime is missing, the exporter failed (the message names the method and family), or
        the check failed (fp32: onnxruntime's probabilities differ from PyTorch's by more than
        ``TOLERANCE``; int8: see ``int8_agreement``); the files are removed.
    """
    if precision not in PRECISIONS:
        raise PETLModelError(f"Unknown ONNX precision '{precision}': use one of {', '.join(PRECISIONS)}.")
    where = f"the '{config['method']}' model ({config['family']} family) of {config['model_dir']}"
    onnxruntime = require_onnxruntime(f"ONNX export ({precision}) of {where}")
    opset = int(opset or (INT8_OPSET if precision == "int8" else OPSET))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lobe = modules["petl_model"].adapted_model
    task = Task.of_view(config)
    model = ProbabilityModel(modules["petl_model"], modules["classifier"], fixed_frames(lobe),
                             task).eval()
    path = out_dir / MODEL_FILE
    _remove(out_dir)
    try:
        traced = out_dir / FP32_FILE if precision == "int8" else path
        example = export_graph(model, lobe, traced, opset)
        if precision == "int8":
            quantize_int8(traced, path)
            traced.unlink()
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        check = _check(session, model, lobe, precision)
    except Exception as err:  # noqa: BLE001 (the exporter and onnxruntime raise many types)
        _remove(out_dir)
        logger.debug("ONNX export failed", exc_info=True)
        text = str(err).split("## Exception summary", 1)[-1].strip()[:1500]
        raise PETLModelError(f"ONNX export ({precision}) of {where} failed: {type(err).__name__}: "
                             f"{text}") from err
    if not check.pop("passed"):
        _remove(out_dir)
        rule = (f"differ from PyTorch's by {check['max_abs_difference']:.3g} (> {TOLERANCE:g})"
                if precision == "fp32" else
                f"agree with PyTorch fp32 on the most probable class in "
                f"{check['top1_agreement']:.1%} of {check['rows']} rows ({check['near_ties']} near "
                f"ties allowed) and differ by up to {check['max_abs_difference']:.3g} (limit "
                f"{INT8_TOLERANCE:g})")
        raise PETLModelError(
            f"ONNX export ({precision}) of {where} failed the "
            f"{'parity' if precision == 'fp32' else 'int8 agreement'} check: onnxruntime's probabilities "
            f"{rule}; {check}. The files were removed."
        )
    opset = file_opset(path)  # the exporter may write another opset than asked (e.g. --opset=1)
    check["runtime"] = f"onnxruntime {onnxruntime.__version__} CPU"
    side = side_config(config, lobe, example, opset, merged_lora_modules, precision)
    side["parity"] = check
    write_json_atomic(out_dir / CONFIG_FILE, side)
    return side


def _check(session, model, lobe, precision):
    """The export's check of ``precision`` (fp32: ``parity``; int8: ``int8_agreement``) as it is
    recorded in ``onnx_config.json`` ``parity``, with ``passed``."""
    if precision == "int8":
        return {"precision": "int8", "tolerance": INT8_TOLERANCE,
                **int8_agreement(session, model, lobe)}
    difference, cases = parity(session, model, lobe)
    return {"precision": "fp32", "tolerance": TOLERANCE, "max_abs_difference": difference,
            "cases": cases, "passed": difference <= TOLERANCE}


def side_config(config, lobe, example, opset, merged_lora_modules, precision):
    """``onnx_config.json`` (without its ``parity`` check) of an export of ``config``'s model."""
    task = Task.of_view(config)
    waveform, takes_lengths = lobe.input_kind == "waveform", lobe.takes_lengths
    inputs = [{"name": "input_values", "axes": ["batch", "samples"] if waveform
               else ["batch", "frames", int(example[0].shape[-1])]}]
    if takes_lengths:
        inputs.append({"name": "lengths", "axes": ["batch"],
                       "meaning": "valid length of each utterance relative to samples (1.0: all)"})
    return {
        "format": "onnx",
        "model": MODEL_FILE,
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__.split('+')[0]}",
        # int8: onnxruntime's dynamic quantisation of the linear layers
        "precision": precision,
        "inputs": inputs,
        "outputs": [{"name": "probabilities", "axes": ["batch", "classes"]}],
        "input": config.get("input"),
        "frames": fixed_frames(lobe),
        # AST: the value of a padded frame (the normalised zero), to batch clips of unequal length
        "padding_value": getattr(lobe.input_processor, "padding_value", None),
        "class_names": config["class_names"],
        # multi-label: a sigmoid per class, predicted where it reaches the class's threshold
        "task": task.kind,
        "thresholds": task.thresholds,
        # how the run was tested: the first clip, or sliding windows whose probabilities are pooled
        "evaluation": config.get("evaluation"),
        "pooling": config.get("pooling"),
        "family": config["family"],
        "method": config["method"],
        "merged_lora_modules": merged_lora_modules,
        # names, never paths of this machine (the export is meant to be shared)
        "base_backbone_source": shareable_name(config["backbone_source"]),
        "petl_model": shareable_name(config["model_dir"]),
    }


def file_opset(path):
    """The ONNX opset (default domain) that the model file at ``path`` declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _remove(out_dir):
    for name in (MODEL_FILE, f"{MODEL_FILE}.data", FP32_FILE, CONFIG_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)
