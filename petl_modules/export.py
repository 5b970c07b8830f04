"""Exporting a PETL model: a plain transformers checkpoint (default), a PEFT adapter, or ONNX.

Usage::

    python -m petl_modules.export MODEL_DIR OUT_DIR [--format=transformers|peft|onnx]
        [--backbone_source=...] [--peft_names=5|4] [--opset=N] [--precision=fp32|int8]

``--format=peft`` (LoRA models): a PEFT adapter that ``peft.PeftModel.from_pretrained`` loads on
the base transformers model (``petl_modules.sharing.peft_lora``). ``--format=onnx`` (every method):
one ONNX graph from the input features to the class probabilities, checked against PyTorch with
onnxruntime before it is kept (``petl_modules.sharing.onnx_export``); ``--precision=int8`` quantises
its linear layers (onnxruntime's dynamic quantisation), checked by its agreement with PyTorch's
fp32 answers. The default format:

``OUT_DIR`` (new, empty or a previous export: nothing else is overwritten) becomes a
``save_pretrained`` folder of the backbone with the trained weights folded in
(``AutoModel.from_pretrained(OUT_DIR)`` loads it, and ``--backbone_source=OUT_DIR`` starts a new run
from it). Where the head maps exactly onto the family's transformers classification class (AST
with pooling ``cls_distill``: ``ASTForAudioClassification``; the wav2vec2 family and w2v-BERT:
``*ForSequenceClassification``; Whisper: ``WhisperForAudioClassification``; pooling ``mean``), it
is that class with the trained head and the labels, which ``pipeline("audio-classification",
model=OUT_DIR)`` runs as ``classify`` does (``petl_modules.sharing.head``); otherwise the base
model, and the command says why. The head is also written in side files::

    OUT_DIR/
    ├── config.json, model.safetensors   the merged backbone (+ the head, id2label, label2id)
    ├── preprocessor_config.json          the run's input settings (the family's feature extractor)
    ├── classifier_head.safetensors       the head: head.weight [C, D], head.bias [C]
    └── classifier_head.json              class_names (index order), task (multi-label: sigmoid per
                                          class and its thresholds), pooling, input settings, origin,
                                          transformers_class and what pipeline gives otherwise

Only methods whose result is a plain backbone can be exported: linear, BitFit, full fine-tuning and
LoRA, DoRA, (IA)3 and VeRA (merged). Methods that add modules (adapters, prompts, prefixes, MoA) or
read every layer (the layer sum) are refused: use their PETL model folder with
``python -m petl_modules.classify`` instead.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from petl_modules.files import readable_as_umask
from petl_modules.model.folder import load_petl_model, merge_petl_model, unmerged_petl_modules
from petl_modules.model.hub import resolve_model_dir
from petl_modules.model.spec import PETLModelError
from petl_modules.sharing.head import (  # noqa: F401 (HEAD_WEIGHTS: the name of its file)
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    write_head,
    write_transformers_checkpoint,
)

FORMATS = ("transformers", "peft", "onnx")
# A folder holding one of these (and nothing but regular files, and a PEFT export's base/ folder)
# is a previous export, which a new export may replace.
EXPORT_MARKERS = (HEAD_CONFIG, "onnx_config.json")


def check_out_dir(out_dir):
    """Raises ``PETLModelError`` unless ``out_dir`` is new, empty or a previous export (regular
    files only, ``classifier_head.json`` or ``onnx_config.json`` among them, and a PEFT export's
    ``base/`` folder of regular files): export never overwrites other content, and never writes
    through a symbolic link it finds there."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return  # new (or not a folder: creating it fails with its own message)
    entries = sorted(out_dir.iterdir())

    def plain(entry):
        if entry.is_symlink():
            return False
        if entry.is_dir() and entry.name == "base":
            return all(e.is_file() and not e.is_symlink() for e in entry.iterdir())
        return entry.is_file()

    previous = any((out_dir / m).is_file() for m in EXPORT_MARKERS) and all(map(plain, entries))
    if entries and not previous:
        shown = ", ".join(e.name for e in entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise PETLModelError(
            f"OUT_DIR {out_dir} is not empty ({shown}) and is not a previous export: export "
            "writes its files there and would replace what is there. Give a new or empty folder."
        )


def export_petl_model(model_dir, out_dir, backbone_source=None, format="transformers",
                      peft_names="5", opset=None, precision="fp32"):
    """Exports a PETL model folder in ``format`` (see the module docstring).

    Arguments
    ---------
    model_dir : str or Path
        A ``petl_model/`` folder (or the experiment folder holding it).
    out_dir : str or Path
        Where to write (created).
    backbone_source : str, optional
        Another local copy of the base checkpoint.
    format : str
        ``transformers`` (default: merged backbone + head), ``peft`` (LoRA adapter) or ``onnx``.
    peft_names : str
        ``--format=peft``: module names of transformers ``5`` (default) or ``4``.
    opset : int, optional
        ``--format=onnx``: the ONNX opset (default: ``onnx_export.OPSET``, 18; int8: ``INT8_OPSET``, 23).
    precision : str
        ``--format=onnx``: ``fp32`` (default) or ``int8`` (linear layers quantised).

    Returns
    -------
    dict
        The content of the side JSON written (``classifier_head.json`` or ``onnx_config.json``).

    Raises
    ------
    PETLModelError
        The method cannot be written in ``format`` (the message says which format can), the
        ONNX parity check failed, or ``out_dir`` holds something else (``check_out_dir``).
    """
    if format not in FORMATS:
        raise PETLModelError(f"Unknown format '{format}': use one of {', '.join(FORMATS)}.")
    if precision != "fp32" and format != "onnx":
        raise PETLModelError(f"--precision={precision} applies to --format=onnx only (the "
                             f"{format} export holds the trained fp32 weights).")
    check_out_dir(out_dir)  # new, empty or a previous export: every file in it is the export's
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed after every check passed: a failure or a kill leaves
    # the previous export untouched (and at most a hidden .<name>.partial-* folder, never OUT_DIR).
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        side = _write_export(model_dir, staging, backbone_source, format, peft_names, opset, precision)
        readable_as_umask(staging)
        replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return side


def replace_folder(new, target):
    """Puts the folder ``new`` in place of ``target`` (absent, empty or a previous export) by
    renames on one file system; the previous content is removed after."""
    target = Path(target)
    if target.is_symlink() or target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old / "previous", target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _write_export(model_dir, out_dir, backbone_source, format, peft_names, opset, precision):
    """The files of ``export_petl_model`` (written in ``out_dir``, a staging folder renamed to the
    target after); returns its side JSON."""
    model_dir = resolve_model_dir(model_dir)  # a local folder, or a Hub repo id's snapshot
    if format == "onnx":
        from petl_modules.sharing.onnx_export import require_onnxruntime

        require_onnxruntime(f"--format=onnx --precision={precision}")  # before the long work
    modules, config = load_petl_model(model_dir, backbone_source)
    if format == "peft":
        from petl_modules.sharing.peft_lora import export_peft

        return export_peft(modules, config, out_dir, backbone_source, peft_names=peft_names)
    merged = merge_petl_model(modules)
    if format == "onnx":
        from petl_modules.sharing.onnx_export import export_onnx

        return export_onnx(modules, config, out_dir, opset=opset, merged_lora_modules=len(merged),
                           precision=precision)
    petl_model = modules["petl_model"]
    leftover = unmerged_petl_modules(petl_model)
    # tensors of the method outside the backbone (the layer sum's weights)
    leftover += [(name, type(petl_model).__name__) for name, _ in petl_model.named_parameters(recurse=False)]
    if leftover:
        kinds = sorted({kind for _, kind in leftover})
        raise PETLModelError(
            f"Cannot export the '{config['method']}' model of {config['model_dir']} as a plain "
            f"transformers checkpoint: it adds modules or tensors transformers cannot hold "
            f"({', '.join(kinds)}, {len(leftover)} in all; only LoRA, DoRA, (IA)3, VeRA, BitFit, "
            "linear and full fine-tuning fold into the backbone). Export it with --format=onnx, or "
            f"ship the PETL model folder itself ({config['model_dir']}, a few MB) with its base checkpoint, and "
            f"run it with python -m petl_modules.classify {config['model_dir']} FILE..."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        written = write_transformers_checkpoint(out_dir, modules, config, backbone_source)
    except ValueError as err:
        raise PETLModelError(str(err)) from None
    return write_head(out_dir, modules, config, backbone_source, merged_lora_modules=len(merged),
                      **written)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.export",
        description="Export a PETL model folder: a plain transformers save_pretrained folder "
                    "(LoRA / BitFit / full fine-tuning merged) plus its head and labels (default), "
                    "a PEFT LoRA adapter (--format=peft) or an ONNX model (--format=onnx).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a petl_model/ folder, or a Hub repo id (owner/name[@revision])")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write")
    parser.add_argument("--format", default="transformers", choices=FORMATS,
                        help="transformers (default), peft (LoRA models) or onnx (every method)")
    parser.add_argument("--backbone_source", default=None,
                        help="another local copy of the base checkpoint (default: the run's)")
    parser.add_argument("--peft_names", default="5", choices=["5", "4"],
                        help="--format=peft: module names of transformers 5 (default) or 4.x")
    parser.add_argument("--opset", type=int, default=None, help="--format=onnx: the ONNX opset")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                        help="--format=onnx: fp32 (default) or int8 (onnxruntime's dynamic "
                             "quantisation of the linear layers)")
    args = parser.parse_args(argv)
    try:
        side = export_petl_model(args.model_dir, args.out_dir, args.backbone_source, args.format,
                                 args.peft_names, args.opset, args.precision)
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    done = {"transformers": f"{side.get('merged_lora_modules')} LoRA modules merged",
            "peft": "PEFT LoRA adapter" + (", its base in base/" if side.get("peft", {}).get(
                "base_written") else ""),
            "onnx": onnx_summary(side.get("parity", {}))}
    print(f"Exported {side['method']} model ({done[args.format]}, {len(side['class_names'])} "
          f"classes) to {args.out_dir}")
    if args.format == "transformers":
        print(pipeline_message(side, args.out_dir))
    return 0


def onnx_summary(check):
    """What the ONNX export's check found, in a few words."""
    if check.get("precision") == "int8":
        return (f"ONNX int8, top-1 agreement with fp32 {check['top1_agreement']:.0%} "
                f"({check['near_ties']} near ties), max probability difference "
                f"{check['max_abs_difference']:.2g}")
    return f"ONNX, onnxruntime parity {check.get('max_abs_difference', 0):.2g}"


def pipeline_message(side, out_dir):
    """What the transformers export gives ``pipeline("audio-classification")``: its class, and
    why (or on which files) its scores are not ``classify``'s."""
    if side["transformers_class"] is None:
        return (f"Written as the base model with the head beside it (classifier_head.*): "
                f"transformers' pipeline('audio-classification') cannot reproduce this head: "
                f"{side['pipeline']}. Its scores: python -m petl_modules.classify "
                f"{side['petl_model']} FILE...")
    text = (f"Written as {side['transformers_class']} with its labels: "
            f"pipeline('audio-classification', model='{out_dir}') gives classify's scores")
    return text + (f", except that {side['pipeline']}." if side["pipeline"] else ".")


if __name__ == "__main__":
    sys.exit(main())
