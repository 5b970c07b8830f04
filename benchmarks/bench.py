#!/usr/bin/env python3
"""What PETL costs, measured: train-step and forward time, peak memory and trainable parameters of
every method file, and the speed-ups the project claims.

Usage (from the repository root)::

    python benchmarks/bench.py [--suite methods,moa,data,cache,merge,classify,onnx,prepare,reference,multitask,compile,
                                prepare_full,int8,batching,compile_cache,vs_lora,backbones] [--demo_folder=...] [--batching_utterances=N]
        [--backbone_source=...]
        [--device=cpu|cuda] [--precision=fp32|bf16] [--batch_size=4] [--frames=400] [--threads=N]
        [--steps=N] [--quick] [--json=out.json] [--markdown=out.md]
        [--warmup=N] [--methods='lora|dense_moa N=15']   (extras: warm-up steps, method variants)
        [--reference_python=PY --reference_git=GIT [--reference_script=...] [--rounds=3]]

Default backbone: the AST-base shape (``transformers.ASTConfig()``) with random weights, saved with
``save_pretrained`` to a temporary folder (no download); FSC shapes (31 classes), batch 4, 400
frames, 2 threads: the reference's measurement set-up. ``--quick`` runs every suite on a tiny AST
(a smoke test; its figures mean nothing).

Models are built as users build them: ``compose_hparams(hparams/<method>.yaml, recipes/FSC/fsc.yaml,
overrides)`` then ``load_hparams``, and trained through ``ClassificationBrain.fit_batch`` (zero_grad,
forward, loss, backward, AdamW, cosine scheduler step).

Suites and the ratios they give (``--json`` writes ``{"machine", "results", "ratios"}``):

- ``methods``: every hparams file and its variants. ``soft_moa_n15_vs_adapter``,
  ``dense_moa_n15_vs_adapter``: train step of the mixture (N=15, MHSA, Pfeiffer) / one bottleneck
  adapter (RR 128) at the same place. Also SDPA vs eager attention and gradient checkpointing.
- ``moa``: the MoA module alone, fwd+bwd: a per-expert Python loop (the reference's way, written
  here) / ours (stacked weights, einsum). ``moa_loop_vs_batched_n15``: Dense-MoA at N=15, where
  the loop runs every expert over all tokens; Soft-MoA's experts see only the N*p slots, so its
  loop costs little (``moa_loop_vs_batched_n15_soft``).
- ``data``: time from the start of training (manifests prepared) to the first batch, 10x more
  utterances / 1x: ``first_batch_10x_data``. Then 10,000 generated 10 s clips (16 kHz FLAC, about
  2.9 GB; ``--quick``: 200 of 2 s) read by one training process (one DataLoader, no workers) from
  loose files (the recipes' ``DynamicItemDataset``) and from tar shards of 1000 clips
  (``--shards``), decoding only and with AST's fbank features, the files' page cache dropped
  before each epoch (``posix_fadvise``): files opened per clip, clips/s
  (``shards_vs_files_opens_per_clip``, ``shards_decode_clips_per_s``), the shard writing speed and
  the shuffle buffer's peak memory.
- ``prepare_full`` (not in the default set: it writes 1.7M empty files): AudioSet's full lists
  (2M segments) prepared by ``recipes/AudioSet`` in a fresh process (``prepare_full_s``,
  ``prepare_full_peak_mb``), and the 2M-row training manifest's memory as SpeechBrain's
  ``DynamicItemDataset`` and as a shard table (``manifest_rows_dataset_mb``,
  ``manifest_rows_shard_table_mb``).
- ``cache``: linear probing epoch without / with cached backbone outputs (epochs after the first):
  ``linear_cache_epoch_speedup``; the same for the weighted layer sum (one pooled vector per layer
  cached): ``layer_sum_cache_epoch_speedup``.
- ``merge``: forward of the LoRA model merged with ``petl_modules.methods.lora.merge_lora`` / the plain
  backbone: ``lora_merged_vs_plain``.
- ``classify``: peak memory of ``PETLClassifier.classify_files`` (what ``python -m
  petl_modules.classify`` runs) on a generated one-hour 16 kHz file / on a 10 s file, same model
  (the linear probe on the benchmark's backbone): ``classify_memory_1h_vs_10s``; the same with
  sliding windows over the whole file (``eval_windows: sliding``, windows in batches of 8) on a
  5-minute file / a 10 s file: ``classify_memory_5min_vs_10s_sliding``.
- ``prepare``: preparation of your own data (``recipes/AudioFolder``: layout, split, one header
  read per file in parallel threads) on 20,000 generated 0.1 s files in 10 class folders
  (``--quick``: 500), into a fresh manifest folder each time: ``prepare_files_per_s`` (a figure,
  not a ratio). The files were just written, so they are in the OS file cache; a first read from
  a cold disk is slower.
- ``onnx``: inference latency at batch 1 of the ONNX export (``petl_modules.sharing.onnx_export``:
  the conformer adapter model, features to probabilities) on onnxruntime's CPU provider with
  ``--threads`` threads / the same model in PyTorch eager, runs taken in turn:
  ``onnxruntime_vs_eager_batch1``.

Timings: median and min over ``--steps`` timed steps after warm-up. Peak memory: on CPU the peak
resident set size during the timed train steps (Linux ``VmHWM``, reset before each block, after
freeing what the previous block left) above the process's RSS before any model was built (so it
counts weights, gradients, optimiser state and activations), on CUDA ``max_memory_allocated``.

- ``multitask`` (not in the default set: a batch of 32 on AST-base takes minutes on a CPU): four
  tasks of different methods (``MULTITASK``) on one frozen backbone
  (``petl_modules.model.multitask``) against one task's model and four separate models, in turn
  (time ratios: the median over rounds of the ratio within a round; memory measured apart):
  ``multitask_every_task_vs_one_task``, ``multitask_every_task_vs_separate_models``,
  ``multitask_mixed_batch_vs_one_task``, ``multitask_weights_vs_one_model`` and the memory ratios.
- ``reference`` (not in the default set; needs the reference's own environment): the eight pairs
  of ``REFERENCE_PAIRS``, the original PETL_AST model (``../shared/reference-bench/bench_ref.py``
  run by ``--reference_python`` on the checkout ``--reference_git``) and ours, interleaved
  (reference, ours fp32, ours bf16, next pair, ...) for ``--rounds`` rounds; per pair the median
  over rounds of ours / reference (train step and forward) and its spread (min-max over rounds),
  ours at fp32 and at bf16 (autocast) against the reference's fp32. Skipped, with the reason,
  when the reference environment is absent.

- ``vs_lora`` (not in the default set): train steps of the methods beyond the papers
  (``LORA_RATIO_GROUP``: LoRA on every projection, DoRA, (IA)3, VeRA, the weighted layer sum) and
  of LoRA (q,v), ``--rounds`` interleaved rounds of ``--steps`` steps each after one warm-up step
  each: ``<method>_vs_lora_train_step``, the median over rounds of the ratio within a round.
- ``backbones`` (not in the default set: it saves a random w2v-BERT 2.0, 2.3 GB): forward (no
  gradient) of the frozen AST-base, BEATs_iter3 and w2v-BERT 2.0 shapes, random weights, on the
  same ``--batch_size`` clips of ``--frames`` / 100 s (features computed once, not timed), in
  interleaved rounds: ``BEATs_iter3_vs_ast_forward``, ``w2v_BERT_20_vs_ast_forward``.

- ``compile`` (not in the default set: compiling takes minutes per method on a CPU): eager
  against ``torch.compile`` (what ``--compile`` does in training and ``classify``) for the
  reference pairs' methods (``--methods`` picks others): the first compiled train step and forward
  (compilation included) timed apart, then train steps and forwards of the two in turn;
  ``compile_vs_eager_<method>_train_step`` and ``..._forward``, and whether a module fell back to
  eager mode.

- ``int8``, ``batching``, ``compile_cache`` (not in the default set): int8 inference (the ONNX
  graph quantised by onnxruntime) against fp32 eager at batch 1 and 8, and its agreement with
  fp32 over the test clips of a model the demo trained (``--demo_folder``, or a new demo run):
  ``int8_throughput_vs_fp32_eager_batch{1,8}``, ``int8_top1_agreement_demo``,
  ``int8_max_prob_difference_demo``; training epochs with batches by duration
  (``dynamic_batching``) against fixed-count batches of the same mean size on generated 0.5-30 s
  utterances (``--batching_utterances``) on the wav2vec2-base shape with ``clip_seconds: null``:
  ``dynamic_batching_padding``, ``dynamic_vs_fixed_batches_epoch``; the first compiled train step
  of two fresh processes sharing one new inductor cache: ``compile_cache_second_vs_first_start``.

``--precision=bf16`` runs under ``torch.autocast`` on CPU too, where the CPU has native bf16
(AVX512-BF16 or AMX); elsewhere it warns and measures fp32.

Layout: this file is the command line and ``SUITE_FUNCTIONS``, the registry of suites (a new suite
is a module of ``benchmarks/suites/`` and one entry there); ``benchmarks/common.py`` measures
(timings, peak memory, result rows, rounds in turn, the machine), ``benchmarks/models.py`` builds
models as users do and holds the method variants (``METHODS``), ``benchmarks/ratios.py`` computes
the ratios and their targets, ``benchmarks/report.py`` writes the Markdown report.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.common import PeakMemory, machine_info, read_status_mb, result, trim_memory  # noqa: E402, F401
from benchmarks.models import METHODS  # noqa: E402
from benchmarks.ratios import RATIO_KEYS, TARGETS, compute_ratios, target_of  # noqa: E402, F401
from benchmarks.report import render  # noqa: E402
from benchmarks.suites.backbones import suite_backbones  # noqa: E402
from benchmarks.suites.batching import suite_batching  # noqa: E402
from benchmarks.suites.cache import suite_cache  # noqa: E402
from benchmarks.suites.compile import suite_compile, suite_compile_cache  # noqa: E402
from benchmarks.suites.data import suite_data  # noqa: E402
from benchmarks.suites.inference import suite_classify, suite_merge, suite_onnx  # noqa: E402
from benchmarks.suites.int8 import suite_int8  # noqa: E402
from benchmarks.suites.long_audio import parse_cases, suite_long_audio  # noqa: E402
from benchmarks.suites.methods import LORA_RATIO_GROUP, suite_methods, suite_vs_lora  # noqa: E402, F401
from benchmarks.suites.moa import suite_moa  # noqa: E402
from benchmarks.suites.multitask import suite_multitask  # noqa: E402
from benchmarks.suites.prepare import suite_prepare, suite_prepare_full  # noqa: E402
from benchmarks.suites.reference import reference_environment, suite_reference  # noqa: E402, F401
from petl_modules.tiny import tiny_ast_config  # noqa: E402

# Every suite: its name (--suite) and its function (args -> result rows), in the order of --help.
SUITE_FUNCTIONS = {"methods": suite_methods, "moa": suite_moa, "data": suite_data,
                   "cache": suite_cache, "merge": suite_merge, "classify": suite_classify,
                   "onnx": suite_onnx, "prepare": suite_prepare, "reference": suite_reference,
                   "multitask": suite_multitask, "compile": suite_compile,
                   "prepare_full": suite_prepare_full, "int8": suite_int8,
                   "batching": suite_batching, "compile_cache": suite_compile_cache,
                   "vs_lora": suite_vs_lora, "backbones": suite_backbones,
                   "long_audio": suite_long_audio}
SUITES = ("methods", "moa", "data", "cache", "merge", "classify", "onnx", "prepare")  # the default set
ALL_SUITES = tuple(SUITE_FUNCTIONS)
# Dense bf16 peak FLOP/s of GPUs (vendor data sheets, without sparsity), for the MFU estimate.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10": 125e12}


# ==================================================================== command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=",".join(SUITES),
                        help=f"comma-separated suites among {', '.join(ALL_SUITES)} (default: all "
                             "but reference)")
    parser.add_argument("--backbone_source", default=None,
                        help="hub id or save_pretrained folder (default: random AST-base, no download)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--quick", action="store_true",
                        help="tiny AST, 64 frames, 2 steps, fewer variants: checks that everything runs")
    parser.add_argument("--methods", default=None,
                        help="methods suite: only these variants ('|'-separated names as printed)")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--reference_python", default=None,
                        help="reference suite: python of the reference's environment (transformers 4.x)")
    parser.add_argument("--reference_git", default=None,
                        help="reference suite: git dir of a umbertocappellazzo/PETL_AST checkout")
    parser.add_argument("--reference_script", default=None,
                        help="reference suite: bench_ref.py (default ../shared/reference-bench/"
                             "bench_ref.py from the repository root)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="reference, vs_lora, backbones and long_audio suites: interleaved rounds "
                             "(3; long_audio's one-hour file: --rounds=1 takes ~85 min on 2 cores)")
    parser.add_argument("--long_audio_cases", default=None,
                        help="long_audio suite: precision:features:batch,... (features shared or "
                             "window; fp32 first), e.g. fp32:shared:8,int8:shared:8 (default: all 7)")
    parser.add_argument("--markdown", default=None, help="write the report as Markdown here")
    parser.add_argument("--batching_utterances", type=int, default=24,
                        help="batching suite: generated utterances of 0.5-30 s (default 24)")
    parser.add_argument("--demo_folder", default=None,
                        help="int8 suite: the --output_folder of a python -m petl_modules.demo run "
                             "(default: a new demo run in the work folder)")
    parser.add_argument("--workdir", default=None,
                        help="where the suites write their data, kept afterwards: a rerun reuses "
                             "the data suite's generated clips (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in ALL_SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose among {', '.join(ALL_SUITES)}")
    args.suites = suites
    if args.long_audio_cases:
        parse_cases(args.long_audio_cases, "--long_audio_cases")  # a bad list is refused before any suite runs
    if args.methods:
        args.methods = [m.strip() for m in args.methods.split("|") if m.strip()]
        known = [m[0] for m in METHODS]
        unknown = [m for m in args.methods if m not in known]
        if unknown:
            parser.error(f"unknown method variant(s) {unknown}; known: {' | '.join(known)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda but torch sees no GPU")
    from petl_modules.model.precision import resolve_precision

    args.precision = resolve_precision(args.precision, args.device)  # no bf16: fp32, warned
    if args.reference_script is None:
        from petl_modules.paths import project_root

        args.reference_script = str(project_root().parent / "shared" / "reference-bench" / "bench_ref.py")
    args.reference_skipped = None
    for name in ("batch_size", "frames", "threads", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.quick:
        args.frames = min(args.frames, 64)
        args.steps = min(args.steps, 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args.device_type = "cuda" if args.device == "cuda" else "cpu"
    args.gpu_peak_flops = None
    if args.device == "cuda":
        name = torch.cuda.get_device_name(0)
        args.gpu_peak_flops = next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)
        if args.precision != "bf16":
            args.gpu_peak_flops = None  # the MFU estimate is against the bf16 peak
    trim_memory()
    PeakMemory.baseline_mb = read_status_mb("VmRSS") or 0.0
    kept = contextlib.nullcontext(args.workdir) if args.workdir else None
    with kept or tempfile.TemporaryDirectory(prefix="petl_bench_") as workdir:
        args.workdir = Path(workdir)
        args.workdir.mkdir(parents=True, exist_ok=True)
        if args.backbone_source is None:
            folder = args.workdir / ("tiny_ast" if args.quick else "ast_base")
            torch.manual_seed(0)
            # Quick: tiny, but wide enough for every method's default width (RR 128 -> r = 2).
            config = (tiny_ast_config(hidden_size=256, intermediate_size=512) if args.quick
                      else transformers.ASTConfig())
            transformers.ASTModel(config).save_pretrained(folder)
            args.backbone_source = str(folder)
            args.backbone_label = ("tiny AST (random)" if args.quick
                                   else "AST-base shape (transformers.ASTConfig(), random weights)")
        else:
            args.backbone_label = args.backbone_source
        rows = []
        for suite in args.suites:
            print(f"[{suite}]", file=sys.stderr, flush=True)
            torch.manual_seed(0)
            rows += SUITE_FUNCTIONS[suite](args)
    machine = machine_info(args)
    if "reference" in args.suites:
        machine["reference_skipped"] = args.reference_skipped
    ratios = compute_ratios(rows)
    report = render(machine, rows, ratios)
    print(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"machine": machine, "results": rows, "ratios": ratios}, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(report)
    missing = [k for k in RATIO_KEYS if ratios.get(k) is None or not math.isfinite(ratios[k])]
    if set(args.suites) == set(SUITES) and missing:
        print(f"warning: ratios not measured: {', '.join(missing)}", file=sys.stderr)
    return {"machine": machine, "results": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
