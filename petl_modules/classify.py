"""Classifying audio with a trained PETL model (a ``petl_model/`` folder on its base checkpoint).

Python, in the style of SpeechBrain's pretrained interfaces (``EncoderClassifier``)::

    from petl_modules.classify import PETLClassifier
    classifier = PETLClassifier.from_folder("results/FSC/adapter/10/petl_model")
    out_prob, score, index, text_lab = classifier.classify_file("utterance.wav")
    out_prob, score, index, text_lab = classifier.classify_batch(wavs, wav_lens)  # [B, S], [B]

Command line::

    python -m petl_modules.classify MODEL_DIR FILE... [--backbone_source=...] [--top_k=K] [--json]
        [--merge] [--device=...] [--batch_size=N] [--precision=fp32|bf16|int8] [--compile]
    python -m petl_modules.classify --model A --model B ... [options] -- FILE...

``MODEL_DIR`` is a local folder or a Hugging Face Hub repo id (``petl_modules.model.hub``).
With ``--model`` (once per task), folders trained on the same base checkpoint share one frozen
backbone and every file gets every task's answer (``PETLClassifier.from_folders``,
``petl_modules.model.multitask``).

Files are read as in training (``petl_modules.model.audio.load_input``: any format soundfile reads,
mixed to mono, resampled to 16 kHz) and turned into inputs by the backbone lobe's own
``input_processor`` (same clip length, normalisation and padding as the recipe). Files are
classified with the evaluation protocol the run was tested with (the PETL model folder's
``evaluation``, ``petl_modules.training.windows``): the first clip (the first ``max_frames``
frames, or the first ``clip_seconds``), or sliding windows over the whole file whose class
probabilities are pooled (mean or max), so that classify reproduces the recipe's test accuracy.
Only the part of a file that a clip uses is read, and windows run in batches of ``--batch_size``,
so memory does not grow with the file's length. A file that fails anywhere
(missing, unreadable, empty, NaN/Inf samples, a processing error, non-finite scores) is reported by
name with the reason on stderr; the others are still classified (a failed batch is retried file by
file) and the exit code is 1.

A multi-label model (``task: multilabel``) gives each class its own probability (sigmoid) and
predicts every class whose probability reaches that class's threshold (chosen on the validation
split at training, kept in the model folder): ``labels`` lists them (the text output prints them
all, ``;``-separated, or ``-`` for none); ``label``/``score`` stay the most probable class.

Speed: ``--precision=bf16`` runs the model under bf16 autocast (on CPU where it has AVX512-BF16 or
AMX, else fp32 with a warning; the class probabilities are computed in fp32); ``--compile`` runs it
through ``torch.compile`` (eagerly, with a warning, where compilation fails). In Python:
``classifier.set_speed(precision="bf16", compile=True)``. ``--precision=int8`` runs the model's
ONNX graph with its linear layers quantised (onnxruntime's dynamic quantisation, CPU), exported
once into ``$PETL_AST_HOME/onnx/`` (default ``~/.cache/petl-ast/onnx/``;
``petl_modules.sharing.int8``, in Python ``use_int8(classifier)``); it refuses with the reason (onnxruntime missing, a model that does
not export, another device, ``--compile``) rather than run fp32. Several tasks in int8 run one
graph per task (the frozen backbone is not shared).
"""

import argparse
import importlib
import json
import logging
import sys

from petl_modules.files import printable

# The classifier API, importable from here; imported when first used, so that the command line
# answers --help and argument errors without importing torch and transformers (seconds).
_API = {
    "PETLClassifier": "petl_modules.model.petl_model",
    "PETLModel": "petl_modules.model.petl_model",
    "top_classes": "petl_modules.model.petl_model",
    "MultiTaskClassifier": "petl_modules.model.multitask_classifier",
    "PETLModelError": "petl_modules.model.spec",
}


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


# ==================================================================== command line
def add_common_arguments(parser, per="file"):
    """The files and options of both command lines (one model; several tasks)."""
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--backbone_source", default=None,
                        help="another local copy of the base checkpoint (default: the run's)")
    parser.add_argument("--top_k", type=int, default=1, help=f"how many classes to list per {per}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=8, help="files per forward pass")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="bf16: autocast (CPU with AVX512-BF16/AMX or GPU; else fp32, warned); "
                             "int8: the ONNX graph, linear layers quantised, in onnxruntime (CPU; "
                             "exported once into ~/.cache/petl-ast/onnx)")


def check_counts(parser, args):
    for name in ("top_k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.classify",
        description="Classify audio files with a trained PETL model folder (petl_model/).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a petl_model/ folder (or the experiment folder holding it), or a "
                             "Hugging Face Hub repo id (owner/name[@revision])")
    add_common_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"file", "label", "score", "top_k"} (multi-label '
                             'models: and "labels", every class above its threshold)')
    parser.add_argument("--merge", action="store_true", help="fold LoRA into the backbone weights")
    parser.add_argument("--compile", nargs="?", const="True", default="False",
                        choices=["True", "False", "true", "false"],
                        help="--compile or --compile=True: torch.compile the model (eager, warned, "
                             "where it fails)")
    return check_counts(parser, parser.parse_args(argv))


def parse_several_args(argv):
    """The command line of several tasks: ``--model A --model B ... [options] -- FILE...``."""
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.classify --model A --model B ... --",
        description="Classify audio files with several PETL model folders trained on the same "
                    "base checkpoint, on one frozen backbone: every file gets every task's answer.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                        help="a petl_model/ folder or Hub repo id (once per task)")
    add_common_arguments(parser, per="task")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"file", "tasks": {MODEL_DIR: {"label", '
                             '"score", "top_k"}}} (multi-label tasks: and "labels")')
    return check_counts(parser, parser.parse_args(argv))


def report_errors(errors, total):
    """The files that could not be classified, on stderr; returns the exit code (0 or 1)."""
    for path, reason in errors:
        print(f"Error: could not classify {path}: {reason}", file=sys.stderr)
    if errors and len(errors) < total:
        print(f"{len(errors)} of {total} file(s) could not be classified; the others were.",
              file=sys.stderr)
    elif errors:
        print(f"No file could be classified ({len(errors)} given).", file=sys.stderr)
    return 1 if errors else 0


def load_for_command_line(load):
    """``load()``'s classifier, or None after printing why (the caller exits with 2)."""
    from petl_modules.model.spec import PETLModelError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.disable(logging.INFO)  # no "Setting seed" chatter from rebuilding the model
    try:
        return load()
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return None


def early_checks(args, compile=False):
    """Refuses ``--precision=int8`` where it cannot run, before the model loads."""
    if args.precision == "int8":
        from petl_modules.sharing.int8 import check_int8

        check_int8(args.device, compile)


def with_speed(classifier, precision, compile=False):
    """``classifier`` set to run in ``precision`` (int8: ``petl_modules.sharing.int8.use_int8``)."""
    if precision == "int8":
        from petl_modules.sharing.int8 import use_int8

        return use_int8(classifier, compile)
    return classifier.set_speed(precision, compile)


def main(argv=None):
    """Runs the command line; returns the exit code (0; 1 when a file could not be classified;
    2 when the model folder cannot be loaded)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        return main_several(argv)
    args = parse_args(argv)
    from petl_modules.model.petl_model import PETLClassifier

    compile = args.compile.lower() == "true"
    classifier = load_for_command_line(lambda: early_checks(args, compile) or with_speed(
        PETLClassifier.from_folder(args.model_dir, args.backbone_source, device=args.device,
                                   merge=args.merge), args.precision, compile))
    if classifier is None:
        return 2
    results, errors = classifier.classify_files(
        args.files, batch_size=args.batch_size, progressbar=len(args.files) > 1
    )
    task = classifier.task  # what the answers hold (multi-label: every class above its threshold)
    rows = [{"file": r["file"], **task.answer(r, classifier.top_k(r["probabilities"], args.top_k))}
            for r in results]
    if args.json:
        print(json.dumps(rows, indent=2, allow_nan=False))
    else:
        for row in rows:
            print(f"{printable(row['file'])}\t{task.answer_text(row)}")
    return report_errors(errors, len(args.files))


def main_several(argv):
    """``main`` with ``--model`` given (several tasks on one backbone); same exit codes."""
    args = parse_several_args(argv)
    from petl_modules.model.petl_model import PETLClassifier

    classifier = load_for_command_line(lambda: early_checks(args) or with_speed(
        PETLClassifier.from_folders(args.model, args.backbone_source, device=args.device),
        args.precision))
    if classifier is None:
        return 2
    results, errors = classifier.classify_files(
        args.files, batch_size=args.batch_size, progressbar=len(args.files) > 1
    )
    tasks = classifier.tasks
    rows = [{"file": r["file"], "tasks": {
        name: t if "error" in t else tasks[name].answer(t, classifier.top_k(name, t["probabilities"], args.top_k))
        for name, t in r["tasks"].items()}} for r in results]
    if args.json:
        print(json.dumps(rows, indent=2, allow_nan=False))
    else:
        for row in rows:
            for name, task in row["tasks"].items():
                if "error" not in task:
                    print(f"{printable(row['file'])}\t{printable(name)}\t{tasks[name].answer_text(task)}")
    failed = [(row["file"], name, task["error"]) for row in rows for name, task in row["tasks"].items()
              if "error" in task]
    for path, name, reason in failed:  # one task failed on a file; its other tasks answered
        print(f"Error: task {printable(name)} could not classify {printable(path)}: {reason}",
              file=sys.stderr)
    return max(report_errors(errors, len(args.files)), 1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
