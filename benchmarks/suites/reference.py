"""The ``reference`` suite: the original PETL_AST models (their own environment, run by
``bench_ref.py``) against ours, interleaved."""

import gc
import json
import os
import statistics
import sys
from pathlib import Path

from benchmarks.common import result
from benchmarks.models import METHODS, build_hparams, make_brain, random_batch, time_steps
from petl_modules.training.recipe import parameter_report

# (ours: a METHODS name, the reference's bench_ref.py configuration): identical trainable counts.
REFERENCE_PAIRS = [
    ("full_ft", "full-FT"),
    ("linear", "linear"),
    ("lora", "LoRA-RR128-a8"),
    ("adapter conformer Pfeiffer", "adapter-P-par-conf-RR96"),
    ("prompt_tuning deep P=25", "prompt-deep-25"),
    ("prefix_tuning", "prefix-24"),
    ("dense_moa N=15", "DenseMoA-P-MHSA-bott-RR128-N15"),
    ("soft_moa N=15", "SoftMoA-P-MHSA-bott-RR128-s1-N15"),
]


def reference_environment(args):
    """``(script, reason)``: the reference's ``bench_ref.py`` if its environment is usable, else
    None and why not (the suite is then skipped with that message)."""
    script = Path(args.reference_script)
    if not args.reference_python:
        return None, "no --reference_python (the reference's own environment, transformers 4.x)"
    if not args.reference_git:
        return None, "no --reference_git (a git checkout of umbertocappellazzo/PETL_AST)"
    if not script.is_file():
        return None, f"no reference benchmark script at {script} (--reference_script)"
    python = Path(args.reference_python)
    if not (python.is_file() and os.access(python, os.X_OK)):
        return None, f"--reference_python={python} is not an executable"
    git = Path(args.reference_git)
    if not git.exists():
        return None, f"--reference_git={git} does not exist"
    import subprocess

    probe = subprocess.run([str(python), "-c", "import torch, transformers, numpy, yaml"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"the reference environment {python} cannot import torch/transformers/numpy/yaml ({tail})"
    return script, None


def run_reference(args, script, config):
    """One ``bench_ref.py`` run of ``config`` (its own process): ``(train step s, forward s)``,
    medians over its timed steps."""
    import subprocess

    out = args.workdir / "reference.json"
    command = [str(args.reference_python), str(script), "--configs", config, "--batch",
               str(args.batch_size), "--max_length", str(args.frames), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--json", str(out)]
    env = dict(os.environ, PETL_AST_ORIG_GIT=str(args.reference_git))
    for key in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(key, None)
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_ref.py {config} failed: {proc.stderr[-2000:]}")
    (record,) = json.loads(out.read_text())["records"]
    if "error" in record:
        raise RuntimeError(f"bench_ref.py {config} failed: {record['error']} {record.get('stderr_tail', '')}")
    return record["train_step"]["median_s"], record["forward"]["median_s"], record["trainable_params"]


def measure_ours(args, name, precisions):
    """Our model of METHODS ``name``: ``{precision: (train step s, forward s)}`` (medians), and
    the trainable count."""
    (_, method_file, overrides), = [m for m in METHODS if m[0] == name]
    hparams = build_hparams(args, method_file, overrides)
    batch = random_batch(args, hparams)
    found = {}
    for precision in precisions:
        brain = make_brain(args, hparams, precision)
        train, infer = time_steps(args, brain, batch)
        found[precision] = (statistics.median(train), statistics.median(infer))
        del brain
    trainable = parameter_report(hparams["modules"])["trainable_params"]
    del hparams, batch
    gc.collect()
    return found, trainable


def suite_reference(args):
    """The original PETL_AST models against ours, interleaved, ``--rounds`` rounds (see the
    module doc). Rows: per pair and phase, our times at fp32 and bf16 and the reference's, the
    per-round ratios, their median and spread."""
    script, reason = reference_environment(args)
    if script is None:
        args.reference_skipped = reason
        print(f"[reference] skipped: {reason}. See ../shared/reference-bench/README.md.",
              file=sys.stderr, flush=True)
        return []
    pairs = REFERENCE_PAIRS
    if args.methods:
        pairs = [p for p in pairs if p[0] in args.methods]
    from petl_modules.model.precision import resolve_precision

    precisions = ["fp32"]
    if resolve_precision("bf16", args.device) == "bf16":
        precisions.append("bf16")
    samples = {ours: {"ref": [], **{p: [] for p in precisions}} for ours, _ in pairs}
    counts = {}
    for round_index in range(args.rounds):
        for ours, reference in pairs:
            ref_train, ref_fwd, ref_trainable = run_reference(args, script, reference)
            mine, trainable = measure_ours(args, ours, precisions)
            counts[ours] = (trainable, ref_trainable)
            samples[ours]["ref"].append((ref_train, ref_fwd))
            for precision in precisions:
                samples[ours][precision].append(mine[precision])
            print(f"  round {round_index + 1} {ours}: reference train {ref_train:.3f} s fwd "
                  f"{ref_fwd:.3f} s; ours " + ", ".join(
                      f"{p} train {mine[p][0]:.3f} s fwd {mine[p][1]:.3f} s" for p in precisions),
                  file=sys.stderr, flush=True)
    rows = []
    for ours, reference in pairs:
        ref = samples[ours]["ref"]
        for precision in precisions:
            for phase, k in (("train step", 0), ("forward", 1)):
                times = [t[k] for t in samples[ours][precision]]
                ratios = [t / r[k] for t, r in zip(times, ref)]
                rows.append(result(
                    "reference", f"{ours}: {phase} {precision} / reference fp32", times, None,
                    counts[ours][0], reference=reference, precision=precision, phase=phase,
                    pair=ours, reference_s=[r[k] for r in ref],
                    reference_trainable_params=counts[ours][1], ratios=ratios,
                    ratio_median=statistics.median(ratios), ratio_min=min(ratios),
                    ratio_max=max(ratios)))
    return rows
