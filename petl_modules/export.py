"""Exporting a PETL model as a plain transformers checkpoint (LoRA / BitFit / full-FT merged).

Usage::

    python -m petl_modules.export MODEL_DIR OUT_DIR [--backbone_source=...]

``OUT_DIR`` (new, empty or a previous export: nothing else is overwritten) becomes a
``save_pretrained`` folder of the backbone with the trained weights folded in
(``AutoModel.from_pretrained(OUT_DIR)`` loads it, and ``--backbone_source=OUT_DIR`` starts a new run
from it), plus the task head in a side file::

    OUT_DIR/
    ├── config.json, model.safetensors   the merged backbone (plain transformers)
    ├── preprocessor_config.json          the base checkpoint's, when it has one
    ├── classifier_head.safetensors       the head: head.weight [C, D], head.bias [C]
    └── classifier_head.json              class_names (index order), pooling, input settings, origin

Only methods whose result is a plain backbone can be exported: linear, BitFit, full fine-tuning and
LoRA (merged). Methods that add modules (adapters, prompts, prefixes, MoA) are refused: use their
PETL model folder with ``python -m petl_modules.classify`` instead.
"""

import argparse
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from petl_modules.sharing.hub import resolve_model_dir
from petl_modules.training.pretrained import (
    PETLModelError,
    load_petl_model,
    merge_petl_model,
    unmerged_petl_modules,
)
from petl_modules.training.run_folder import current_umask, write_json_atomic

HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_head.json"


def check_out_dir(out_dir):
    """Raises ``PETLModelError`` unless ``out_dir`` is new, empty or a previous export (regular
    files only, ``classifier_head.json`` among them): export never overwrites other content, and
    never writes through a symbolic link it finds there."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return  # new (or not a folder: creating it fails with its own message)
    entries = sorted(out_dir.iterdir())
    previous = (out_dir / HEAD_CONFIG).is_file() and all(
        e.is_file() and not e.is_symlink() for e in entries)
    if entries and not previous:
        shown = ", ".join(e.name for e in entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise PETLModelError(
            f"OUT_DIR {out_dir} is not empty ({shown}) and is not a previous export: export "
            "writes config.json, model.safetensors and the head there and would replace what is "
            "there. Give a new or empty folder."
        )


def export_petl_model(model_dir, out_dir, backbone_source=None):
    """Writes the merged backbone (``save_pretrained``) and the head of a PETL model folder.

    Arguments
    ---------
    model_dir : str or Path
        A ``petl_model/`` folder (or the experiment folder holding it).
    out_dir : str or Path
        Where to write (created).
    backbone_source : str, optional
        Another local copy of the base checkpoint.

    Returns
    -------
    dict
        The content of ``classifier_head.json``.

    Raises
    ------
    PETLModelError
        The method adds modules a plain transformers model cannot hold, or ``out_dir`` holds
        something else (``check_out_dir``).
    """
    check_out_dir(out_dir)
    model_dir = resolve_model_dir(model_dir)  # a local folder, or a Hub repo id's snapshot
    modules, config = load_petl_model(model_dir, backbone_source)
    merged = merge_petl_model(modules)
    leftover = unmerged_petl_modules(modules["petl_model"])
    if leftover:
        kinds = sorted({kind for _, kind in leftover})
        raise PETLModelError(
            f"Cannot export the '{config['method']}' model of {config['model_dir']} as a plain "
            f"transformers checkpoint: it adds modules transformers cannot hold "
            f"({', '.join(kinds)}, {len(leftover)} in all; only LoRA, BitFit, linear and full "
            "fine-tuning fold into the backbone). Ship the PETL model folder itself "
            f"({config['model_dir']}, a few MB) with its base checkpoint, and run it with "
            f"python -m petl_modules.classify {config['model_dir']} FILE..."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lobe = modules["petl_model"].adapted_model
    try:
        lobe.export_pretrained(out_dir)  # the lobe's checkpoint format (save_pretrained)
    except ValueError as err:
        raise PETLModelError(str(err)) from None
    # Its input processor's settings (e.g. do_normalize), so a run on the export sees the same inputs.
    lobe.copy_preprocessor_config(backbone_source or config["backbone_source"], out_dir)
    head = {k: v.detach().cpu().contiguous() for k, v in modules["classifier"].state_dict().items()}
    save_file(head, str(out_dir / HEAD_WEIGHTS), metadata={"format": "pt"})
    os.chmod(out_dir / HEAD_WEIGHTS, 0o666 & ~current_umask())  # safetensors makes it owner-only
    side = {
        "class_names": config["class_names"],
        "pooling": config.get("pooling"),
        "input": config.get("input"),
        "family": config["family"],
        "method": config["method"],
        "merged_lora_modules": len(merged),
        "base_backbone_source": str(backbone_source or config["backbone_source"]),
        "petl_model": config["model_dir"],
        "head_weights": HEAD_WEIGHTS,
    }
    write_json_atomic(out_dir / HEAD_CONFIG, side)
    return side


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.export",
        description="Export a PETL model folder as a plain transformers save_pretrained folder "
                    "(LoRA / BitFit / full fine-tuning merged) plus its head and labels.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a petl_model/ folder, or a Hub repo id (owner/name[@revision])")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write")
    parser.add_argument("--backbone_source", default=None,
                        help="another local copy of the base checkpoint (default: the run's)")
    args = parser.parse_args(argv)
    try:
        side = export_petl_model(args.model_dir, args.out_dir, args.backbone_source)
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(f"Exported {side['method']} model ({side['merged_lora_modules']} LoRA modules merged, "
          f"{len(side['class_names'])} classes) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
