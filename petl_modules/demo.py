"""A complete PETL run offline in a few minutes: synthetic data, a tiny random backbone, the real recipe.

Usage (from the repository root)::

    python -m petl_modules.demo [--dataset=<recipe folder>] [--method=soft_moa]
        [--output_folder=results/demo] [--backbone_source=...] [--number_of_epochs=8] [--seed=10]
        [--per_class=N] [--task=single_label|multilabel]

The datasets it offers are the recipe folders that hold a synthetic generator,
``recipes/<DATASET>/*_synthetic.py``, found on disk (``petl_modules.synthetic``: the recipes are
not an installed package; ``petl_modules.paths.recipes_folder()``, ``$PETL_AST_ROOT``); without
``--dataset`` it runs the one whose generator's ``DEMO`` says ``default: True``. It writes a small
synthetic copy of the dataset in its official release layout (class-specific tones and chirps,
learnable), saves a small random AST with ``save_pretrained`` (unless ``--backbone_source`` names a
real checkpoint; the random one checks the plumbing only: it knows nothing about audio), and runs the real recipe command line
``python recipes/<DATASET>/train.py hparams/<method>.yaml ...`` in a subprocess, with the options the
generator's ``DEMO`` adds (e.g. the first fold of a multi-fold dataset): preparation, training,
checkpoints, test with the best checkpoint, ``results.json`` and the ``petl_model/`` folder, exactly
as on real data. It ends by printing the command it ran, the test accuracy (mAP for multi-label)
and where the outputs are. ``--task=multilabel`` asks a generator whose ``DEMO`` lists it in
``tasks`` for multi-label data and runs the recipe with ``--task=multilabel``.
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import ruamel.yaml

from petl_modules.paths import hparams_folder, project_root
from petl_modules.synthetic import available_datasets, demo_settings, make_dataset

# With the tiny backbone: 1 s inputs, small batches; reduction rates that keep an 8-wide bottleneck
# (hidden 64) for the methods that have one.
TINY_OPTIONS = ["--max_frames=100", "--batch_size=16", "--num_workers=0"]
TINY_METHOD_OPTIONS = {"reduction_rate": 8}


def default_dataset(datasets):
    """The dataset whose generator's ``DEMO`` says ``default: True`` (else the first listed)."""
    marked = [name for name in datasets if demo_settings(name).get("default")]
    return marked[0] if marked else datasets[0]


def parse_args(argv=None):
    datasets = available_datasets()
    if not datasets:
        sys.exit("[demo] No recipes/<DATASET>/*_synthetic.py found: nothing to run.")
    default = default_dataset(datasets)
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.demo",
        description="Train and test a PETL method on a synthetic copy of a dataset, offline, with "
                    "the real recipe command line.",
    )
    parser.add_argument("--dataset", default=default,
                        help=f"recipe folder under recipes/ with a synthetic generator: "
                             f"{', '.join(datasets)} (default {default})")
    parser.add_argument("--method", default="soft_moa",
                        help="method file hparams/<method>.yaml (default soft_moa)")
    parser.add_argument("--output_folder", default="results/demo",
                        help="where the data, the backbone and the run go (default results/demo)")
    parser.add_argument("--backbone_source", default=None,
                        help="hub id or save_pretrained folder; default: a tiny random AST")
    parser.add_argument("--number_of_epochs", type=int, default=8, help="default 8")
    parser.add_argument("--seed", type=int, default=10, help="default 10")
    multilabel = [name for name in datasets if "multilabel" in demo_settings(name).get("tasks", [])]
    parser.add_argument("--task", default="single_label", choices=["single_label", "multilabel"],
                        help="multilabel: several classes per file (datasets whose generator "
                             f"offers it: {', '.join(multilabel) or 'none'})")
    parser.add_argument("--per_class", type=int, default=None,
                        help="synthetic examples per class (per fold, speaker or split, as the "
                             "dataset's generator counts them); default: a few per dataset")
    args = parser.parse_args(argv)
    names = {name.lower(): name for name in datasets}
    if args.dataset.lower() not in names:
        parser.error(f"--dataset={args.dataset}: choose one of {', '.join(datasets)}.")
    args.dataset = names[args.dataset.lower()]
    methods = sorted(p.stem for p in hparams_folder().glob("*.yaml"))
    if args.method not in methods:
        parser.error(f"--method={args.method}: no hparams/{args.method}.yaml; choose one of "
                     f"{', '.join(methods)}.")
    if args.number_of_epochs < 1:
        parser.error("--number_of_epochs must be at least 1.")
    tasks = demo_settings(args.dataset).get("tasks", ["single_label"])
    if args.task not in tasks:
        parser.error(f"--task={args.task}: the synthetic {args.dataset} is {' or '.join(tasks)}; "
                     f"multi-label data: --dataset={' or '.join(multilabel) or '(none)'}.")
    return args


def tiny_backbone(folder, seed=0):
    """Saves a small random AST (``tiny_ast_config``) with ``save_pretrained``; returns the folder."""
    import torch
    import transformers

    from petl_modules.tiny import tiny_ast_config

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        transformers.ASTModel(tiny_ast_config()).save_pretrained(folder)
    return folder


def method_keys(method):
    """The top-level keys of ``hparams/<method>.yaml``."""
    with open(hparams_folder() / f"{method}.yaml") as stream:
        return set(ruamel.yaml.YAML().load(stream) or {})


def recipe_command(dataset, method, *options):
    """``python recipes/<dataset>/train.py hparams/<method>.yaml <options>`` as a list."""
    return [sys.executable, f"recipes/{dataset}/train.py", f"hparams/{method}.yaml", *options]


def main(argv=None):
    args = parse_args(argv)
    settings = demo_settings(args.dataset)
    output = Path(args.output_folder).resolve()

    print(f"[demo] Writing a synthetic {args.dataset} in its release layout to {output / 'data'}")
    task = {} if args.task == "single_label" else {"task": args.task}
    data = make_dataset(args.dataset, output / "data",
                        per_class=args.per_class or settings["per_class"], seed=args.seed, **task)
    if args.backbone_source:
        backbone = args.backbone_source
        options = []
    else:
        backbone = tiny_backbone(output / "backbone")
        print(f"[demo] Saved a tiny random AST (hidden 64, 2 layers) to {backbone}: a plumbing "
              "check, whose random weights know nothing about audio")
        options = TINY_OPTIONS + [f"--{key}={value}" for key, value in TINY_METHOD_OPTIONS.items()
                                  if key in method_keys(args.method)]
    run_folder = output / "run"
    if (run_folder / "env.log").is_file():  # a SpeechBrain run: start afresh, do not resume it
        print(f"[demo] Removing the previous demo run in {run_folder}")
        shutil.rmtree(run_folder)
    elif run_folder.exists() and any(run_folder.iterdir()):
        sys.exit(f"[demo] {run_folder} exists and is not a previous demo run: choose another "
                 "--output_folder.")
    command = recipe_command(
        args.dataset, args.method, f"--data_folder={data}", f"--backbone_source={backbone}",
        f"--output_folder={run_folder}", f"--number_of_epochs={args.number_of_epochs}",
        f"--seed={args.seed}", *options, *settings["options"],
        *[f"--task={args.task}" for _ in task],
    )
    print(f"[demo] Running: {shlex.join(command)}\n", flush=True)
    returncode = subprocess.call(command, cwd=project_root())
    if returncode != 0:
        sys.exit(f"[demo] The recipe failed (exit code {returncode}); its log is in "
                 f"{run_folder / 'log.txt'}.")

    with open(run_folder / "results.json") as stream:
        results = json.load(stream)
    fold = results["folds"][0]
    n_classes = len(fold["class_names"])
    experiment = Path(fold["experiment_folder"])
    real = recipe_command(args.dataset, args.method, f"--data_folder=/path/to/{Path(data).name}",
                          *[f"--task={args.task}" for _ in task])
    real[0] = "python"
    if "test_map_mean" in results:  # multi-label: asked for, or the dataset's own task
        scores = (f"test mAP {results['test_map_mean']:.3f} (micro F1 {results['test_f1_micro']:.3f}, "
                  f"macro F1 {results['test_f1_macro']:.3f}; {n_classes} classes), valid mAP "
                  f"{fold['valid_map']:.3f}")
    else:
        scores = (f"test accuracy {results['test_accuracy_mean']:.3f} (chance {1 / n_classes:.3f}, "
                  f"{n_classes} classes), valid accuracy {fold['valid_accuracy']:.3f}")
    print(
        f"\n[demo] Ran: {shlex.join(command)}\n"
        f"[demo] {args.dataset} / {args.method}: {scores}; trainable parameters "
        f"{results['trainable_params']:,} of "
        f"{results['total_params']:,} ({results['trainable_percent']:.2f}%).\n"
        f"[demo] Outputs: {run_folder / 'results.json'}, {experiment / 'train_log.txt'}, "
        f"{experiment / 'petl_model'}\n"
        f"[demo] On the real dataset: {shlex.join(real)}"
    )
    if not args.backbone_source:
        print("[demo] The tiny random backbone checks the plumbing only: the score above says the "
              "recipe runs end to end, not what a method reaches. On real data (a release or your "
              "own, docs/own_data.md) use a pre-trained checkpoint: the default AST, as the "
              "command above, or --backbone_source.")
    return results


if __name__ == "__main__":
    main()
