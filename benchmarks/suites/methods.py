"""The ``methods`` suite (train step and forward of every method variant) and ``vs_lora`` (the
methods beyond the papers against LoRA, in interleaved rounds)."""

import gc
import statistics
import sys

from benchmarks.common import PeakMemory, interleaved_rounds, paired_ratio, result, timed
from benchmarks.models import (
    METHODS,
    build_hparams,
    make_brain,
    model_flops,
    random_batch,
    time_steps,
    token_count,
)
from petl_modules.training.recipe import parameter_report

# The vs_lora suite: the methods beyond the papers (issue 29) against LoRA on the papers' q,v.
LORA_RATIO_GROUP = ("lora", "lora q,k,v,o,ffn_in,ffn_out", "dora", "ia3", "vera", "layer_sum")
# --quick: one variant of every method file, and those the ratios need.
QUICK_METHODS = ("full_ft", "linear", "bitfit", "lora", "prefix_tuning", "prompt_tuning deep P=25",
                 "adapter conformer Pfeiffer", "adapter bottleneck MHSA RR128", "dense_moa N=15",
                 "soft_moa N=15", *LORA_RATIO_GROUP)


def suite_methods(args):
    """Train step and forward of every method variant (see ``METHODS``)."""
    rows = []
    methods = METHODS if not args.quick else [m for m in METHODS if m[0] in QUICK_METHODS]
    if args.methods:
        methods = [m for m in METHODS if m[0] in args.methods]
    for name, method_file, overrides in methods:
        hparams = build_hparams(args, method_file, overrides)
        report = parameter_report(hparams["modules"])
        brain = make_brain(args, hparams)
        batch = random_batch(args, hparams)
        with PeakMemory(args.device) as memory:
            train, infer = time_steps(args, brain, batch)
        tokens = token_count(hparams, batch)
        fwd_flops, train_flops = model_flops(hparams, hparams["method"], tokens, args.batch_size)
        extra = {"trainable_percent": report["trainable_percent"],
                 "samples_per_s": args.batch_size / statistics.median(train)}
        peak = args.gpu_peak_flops
        rows.append(result("methods", f"{name}: train step", train, memory.peak_mb,
                           report["trainable_params"], **extra,
                           mfu=None if not peak else train_flops / statistics.median(train) / peak))
        rows.append(result("methods", f"{name}: forward", infer, None, report["trainable_params"],
                           samples_per_s=args.batch_size / statistics.median(infer),
                           mfu=None if not peak else fwd_flops / statistics.median(infer) / peak))
        print(f"  {name}: train {statistics.median(train):.3f} s, forward "
              f"{statistics.median(infer):.3f} s", file=sys.stderr, flush=True)
        del brain, hparams, batch
        gc.collect()
    rows += interleaved_moa_vs_adapter(args, [m for m in methods if m[0] in MOA_RATIO_GROUP])
    return rows


MOA_RATIO_GROUP = ("adapter bottleneck MHSA RR128", "dense_moa N=15", "soft_moa N=15")


def interleaved_moa_vs_adapter(args, variants):
    """Train steps of the MoA ratio's three models taken in turn (adapter, Dense, Soft, adapter,
    ...), so that a busy machine slows each of them alike; the MoA ratios use these rows."""
    if len(variants) != len(MOA_RATIO_GROUP):
        return []
    brains = {}
    for name, method_file, overrides in variants:
        hparams = build_hparams(args, method_file, overrides)
        brains[name] = (make_brain(args, hparams), random_batch(args, hparams),
                        parameter_report(hparams["modules"])["trainable_params"])
    times = {name: [] for name in brains}
    for _ in range(args.warmup + args.steps):
        for name, (brain, batch, _) in brains.items():
            brain.modules.train()
            times[name] += timed(lambda b=brain, x=batch: b.fit_batch(x), 1, 0, args.device)
    return [result("methods", f"{name}: train step (interleaved)", times[name][args.warmup:], None,
                   trainable) for name, (_, _, trainable) in brains.items()]


def suite_vs_lora(args):
    """Train steps of the methods beyond the papers (``LORA_RATIO_GROUP``: LoRA on every
    projection, DoRA, (IA)3, VeRA, the weighted layer sum) and of LoRA (q,v), in interleaved
    rounds on one backbone: ``<method>_vs_lora_train_step`` (median over rounds of the ratio
    within a round)."""
    variants = [m for m in METHODS if m[0] in LORA_RATIO_GROUP]
    runs, trainable = {}, {}
    for name, method_file, overrides in variants:
        hparams = build_hparams(args, method_file, overrides)
        brain, batch = make_brain(args, hparams), random_batch(args, hparams)
        brain.modules.train()
        runs[name] = lambda b=brain, x=batch: b.fit_batch(x)
        trainable[name] = parameter_report(hparams["modules"])["trainable_params"]
    times, rounds = interleaved_rounds(args, runs)
    rows = []
    for name in runs:
        ratio, low, high = paired_ratio(rounds, name, "lora")
        rows.append(result("vs_lora", f"{name}: train step", times[name], None, trainable[name],
                           method=name, round_s=rounds[name], ratio_median=ratio, ratio_min=low,
                           ratio_max=high))
    return rows
