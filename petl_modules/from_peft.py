"""Importing a PEFT LoRA, DoRA, (IA)3 or VeRA adapter trained elsewhere as a PETL model folder.

Usage::

    python -m petl_modules.from_peft ADAPTER_DIR OUT_DIR [--backbone_source=...]
        [--class_names=a,b,c | --class_names=@labels.txt] [--pooling=mean|cls|cls_distill] [--seed=0]
        [--max_frames=N] [--clip_seconds=S]

``ADAPTER_DIR`` holds ``adapter_config.json`` and ``adapter_model.safetensors`` (read as data;
``adapter_model.bin`` is refused). ``OUT_DIR`` (new or empty) becomes a ``petl_model/`` folder that
``python -m petl_modules.classify`` and ``--format=onnx`` take. The head is the one our export wrote
beside the adapter, or a new one for ``--class_names`` (seeded; train it, or use the folder for
its backbone features). What our methods cannot represent is refused with the reason
(``petl_modules.sharing.peft_lora``).
"""

import argparse
import logging
import sys
from pathlib import Path

from petl_modules.model.spec import PETLModelError


def class_names_argument(value):
    """``a,b,c`` or ``@file`` (one name a line) -> list of names."""
    if value.startswith("@"):
        names = Path(value[1:]).read_text(encoding="utf-8").splitlines()
    else:
        names = value.split(",")
    names = [n.strip() for n in names if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("give at least two distinct class names")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.from_peft",
        description="Import a PEFT LoRA, DoRA, (IA)3 or VeRA adapter (adapter_config.json + "
                    "adapter_model.safetensors) "
                    "as a PETL model folder (petl_model/).",
    )
    parser.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="a PEFT adapter folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the petl_model/ folder to write")
    parser.add_argument("--backbone_source", default=None,
                        help="the base checkpoint (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--class_names", type=class_names_argument, default=None,
                        help="a new head for these classes: a,b,c or @file (default: the head our "
                             "export wrote beside the adapter)")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "cls_distill"],
                        help="a new head's pooling")
    parser.add_argument("--seed", type=int, default=0, help="a new head's initialisation seed")
    parser.add_argument("--max_frames", type=int, default=None,
                        help="AST: input frames (default: the base checkpoint's max_length)")
    parser.add_argument("--clip_seconds", type=float, default=None,
                        help="wav2vec2 family: clip length in seconds (default: whole utterances)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.disable(logging.INFO)
    from petl_modules.sharing.peft_lora import import_peft_adapter

    try:
        config = import_peft_adapter(args.adapter_dir, args.out_dir, args.backbone_source,
                                     args.class_names, args.pooling, args.max_frames,
                                     args.clip_seconds, args.seed)
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    from petl_modules.methods import METHODS

    options = config["options"]
    shown = ", ".join(f"{k} {options[k]}" for k in METHODS[config["method"]].options())
    print(f"Imported {config['method']} ({shown}) on {config['backbone_source']} with "
          f"{len(config['class_names'])} classes to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
