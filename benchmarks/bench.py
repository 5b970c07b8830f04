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
"""

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from speechbrain.dataio.batch import PaddedBatch  # noqa: E402

from petl_modules.tiny import tiny_ast_config  # noqa: E402
from petl_modules.training.brain import ClassificationBrain  # noqa: E402
from petl_modules.training.compose import compose_hparams, load_hparams  # noqa: E402
from petl_modules.training.recipe import parameter_report

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"
SUITES = ("methods", "moa", "data", "cache", "merge", "classify", "onnx", "prepare")  # the default set
ALL_SUITES = SUITES + ("reference", "multitask", "compile", "prepare_full", "int8", "batching",
                        "compile_cache", "vs_lora", "backbones", "long_audio")
# The batching suite: seconds of audio per batch and length buckets of dynamic_batching.
BATCHING_SECONDS, BATCHING_BUCKETS = 120, 8
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
RATIO_KEYS = (
    "soft_moa_n15_vs_adapter",
    "dense_moa_n15_vs_adapter",
    "moa_loop_vs_batched_n15",
    "linear_cache_epoch_speedup",
    "layer_sum_cache_epoch_speedup",
    "lora_merged_vs_plain",
    "first_batch_10x_data",
    "classify_memory_1h_vs_10s",
    "onnxruntime_vs_eager_batch1",
    "classify_memory_5min_vs_10s_sliding",
    "shards_vs_files_opens_per_clip",
    "shards_decode_clips_per_s",
)
TARGETS = {
    "shards_vs_files_opens_per_clip": ">= 50",
    "shards_decode_clips_per_s": ">= 300 (10 s clips, one process)",
    "prepare_full_s": "< 60 (2 cores)",
    "soft_moa_n15_vs_adapter": "<= 1.15",
    "dense_moa_n15_vs_adapter": "<= 1.5",
    "moa_loop_vs_batched_n15": ">= 3",
    "linear_cache_epoch_speedup": ">= 5",
    "layer_sum_cache_epoch_speedup": ">= 5",
    "lora_merged_vs_plain": "<= 1.02",
    "first_batch_10x_data": "<= 1.2",
    "classify_memory_1h_vs_10s": "<= 1.2",
    "classify_memory_5min_vs_10s_sliding": "<= 1.2",
    "int8_throughput_vs_fp32_eager_batch8": ">= 2.0",
    "int8_top1_agreement_demo": ">= 0.99",
    "dynamic_batching_padding": "<= 0.10",
    "dynamic_vs_fixed_batches_epoch": "<= 0.7",
    "multitask_every_task_vs_one_task": "<= 1.5 (out of reach: 4x the tokens, see README)",
    "multitask_weights_vs_one_model": "<= 1.2",
}
# The reference suite's targets, per phase and precision of ours (against the reference's fp32).
REFERENCE_TARGETS = {("train_step", "fp32"): "<= 1.0", ("train_step", "bf16"): "<= 0.6",
                     ("forward", "fp32"): "<= 0.8", ("forward", "bf16"): "<= 0.8"}
# Dense bf16 peak FLOP/s of GPUs (vendor data sheets, without sparsity), for the MFU estimate.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10": 125e12}
MOA_AT = {"adapter_type": "Pfeiffer", "location": "MHSA", "adapter_block": "bottleneck",
          "reduction_rate": 128}

# (name, method file, overrides): every hparams file, the paper's variants, and the comparisons.
METHODS = [
    ("full_ft", "full_ft", {}),
    ("linear", "linear", {}),
    ("bitfit", "bitfit", {}),
    ("lora", "lora", {}),
    ("prefix_tuning", "prefix_tuning", {}),
    ("prompt_tuning deep P=25", "prompt_tuning", {}),
    ("prompt_tuning shallow P=300", "prompt_tuning", {"deep_prompt": False, "prompt_len": 300}),
    ("adapter conformer Pfeiffer", "adapter", {}),
    ("adapter conformer Houlsby", "adapter", {"adapter_type": "Houlsby"}),
    ("adapter bottleneck Pfeiffer", "adapter", {"adapter_block": "bottleneck", "reduction_rate": 64}),
    ("adapter bottleneck Houlsby", "adapter",
     {"adapter_block": "bottleneck", "reduction_rate": 64, "adapter_type": "Houlsby"}),
    ("adapter bottleneck MHSA RR128", "adapter", dict(MOA_AT)),
    *[(f"dense_moa N={n}", "dense_moa", {"num_adapters": n}) for n in (2, 7, 15)],
    *[(f"soft_moa N={n}", "soft_moa", {"num_adapters": n}) for n in (2, 7, 15)],
    ("full_ft [eager attention]", "full_ft", {"attn_implementation": "eager"}),
    ("full_ft [gradient checkpointing]", "full_ft", {"gradient_checkpointing": True}),
    ("adapter conformer Pfeiffer [gradient checkpointing]", "adapter",
     {"gradient_checkpointing": True}),
    ("lora [gradient checkpointing]", "lora", {"gradient_checkpointing": True}),
    ("lora q,k,v,o,ffn_in,ffn_out", "lora", {"lora_targets": "q,k,v,o,ffn_in,ffn_out"}),
]
# Every other method file joins with its defaults (a new hparams/<method>.yaml needs no line here).
METHODS += [(stem, stem, {}) for stem in sorted(p.stem for p in (REPO / "hparams").glob("*.yaml"))
            if stem not in {file for _, file, _ in METHODS}]
# The vs_lora suite: the methods beyond the papers (issue 29) against LoRA on the papers' q,v.
LORA_RATIO_GROUP = ("lora", "lora q,k,v,o,ffn_in,ffn_out", "dora", "ia3", "vera", "layer_sum")
# --quick: one variant of every method file, and those the ratios need.
QUICK_METHODS = ("full_ft", "linear", "bitfit", "lora", "prefix_tuning", "prompt_tuning deep P=25",
                 "adapter conformer Pfeiffer", "adapter bottleneck MHSA RR128", "dense_moa N=15",
                 "soft_moa N=15", *LORA_RATIO_GROUP)


# ==================================================================== measuring
def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, steps, warmup, device):
    """Runs ``fn`` ``warmup`` times untimed then ``steps`` times; returns the times (s)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _read_status_mb(field):
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MB, or None."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    return None


def _trim_memory():
    """Collects garbage and gives freed heap pages back to the system (glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block. CUDA: ``max_memory_allocated``. CPU: the peak resident set size
    (``VmHWM``, reset before the block) minus ``baseline_mb``, the RSS of the process with its
    libraries loaded and no model (``main`` measures it), so that the figure is the model's
    weights, gradients, optimiser state and activations.

    ``peak_mb`` is None where the platform cannot say (no ``/proc/self/clear_refs``).
    """

    baseline_mb = 0.0

    def __init__(self, device):
        self.device = str(device)
        self.peak_mb = None

    def __enter__(self):
        _trim_memory()  # what earlier blocks freed goes back to the system first
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as stream:
                stream.write("5")  # resets VmHWM to the current RSS
            self._ok = True
        except OSError:
            self._ok = False
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self._ok:
            self.peak_mb = _read_status_mb("VmHWM") - self.baseline_mb
        return False


def result(suite, name, times, peak_mb=None, trainable=None, **extra):
    """One row of ``results``."""
    row = {"suite": suite, "name": name, "median_s": statistics.median(times), "min_s": min(times),
           "peak_mem_mb": None if peak_mb is None else round(peak_mb, 1),
           "trainable_params": trainable}
    row.update(extra)
    return row


def machine_info(args):
    """CPU model, threads, versions, GPU name."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "speechbrain": sb.__version__,
        "gpu": gpu,
        # Other processes' load: 1, 5 and 15 minute averages at the end of the run.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "device": args.device,
        "precision": args.precision,
        "backbone": args.backbone_label,
        "batch_size": args.batch_size,
        "frames": args.frames,
        "steps": args.steps,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


# ==================================================================== building models as users do
def build_hparams(args, method_file, overrides=None, dataset_yaml=FSC_YAML, **extra):
    """``compose_hparams`` of a method file with the FSC yaml and the benchmark's overrides, then
    ``load_hparams``: the model exactly as ``recipes/FSC/train.py`` builds it."""
    options = {
        "data_folder": str(args.workdir / "no_data"),
        "output_folder": str(args.workdir / "out"),
        "backbone_source": args.backbone_source,
        "batch_size": args.batch_size,
        "max_frames": args.frames,
        "num_workers": 0,
    }
    options.update(overrides or {})
    options.update(extra)
    return load_hparams(compose_hparams(REPO / "hparams" / f"{method_file}.yaml", dataset_yaml, options))


def make_brain(args, hparams, precision=None, compile=False):
    """A ``ClassificationBrain`` on the run's modules, optimiser and scheduler ready; with
    ``compile``, its modules ``torch.compile``-d as ``--compile`` does when ``fit`` starts."""
    brain = ClassificationBrain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts={"device": args.device, "precision": precision or args.precision,
                  "noprogressbar": True, "compile": compile},
        checkpointer=None,
    )
    if compile:
        brain._compile()  # what on_fit_start runs (EagerFallback around each compiled module)
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN)
    return brain


def random_batch(args, hparams):
    """A batch of ``batch_size`` random utterances through the lobe's own input processor."""
    processor = hparams["backbone"].input_processor
    seconds = args.frames / 100
    generator = torch.Generator().manual_seed(0)
    items = [
        {"id": f"utt{i}", "inputs": processor(0.1 * torch.randn(int(seconds * 16000), generator=generator)),
         "label_index": torch.tensor([i % int(hparams["n_classes"])])}
        for i in range(args.batch_size)
    ]
    return PaddedBatch(items)


def model_flops(hparams, method, tokens, batch_size):
    """Rough FLOPs of one forward (matmuls of the transformer: projections, FFN, attention) and
    of one train step (3x forward when every weight trains, 2x when gradients only flow through
    the backbone to inserted modules, 1x for linear probing). For the MFU estimate only."""
    config = hparams["backbone"].config
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    forward = batch_size * layers * (8 * tokens * d * d + 4 * tokens * d * f + 4 * tokens * tokens * d)
    factor = {"full_ft": 3, "linear": 1}.get(method, 2)
    return forward, factor * forward


def token_count(hparams, batch):
    with torch.no_grad():
        hidden, _ = hparams["petl_model"](batch.inputs.data[:1])
    return hidden.shape[1]


# ==================================================================== suites
def time_steps(args, brain, batch):
    """Timings (``timed``) of a train step and of an evaluation forward pass of ``batch``."""
    brain.modules.train()
    train = timed(lambda: brain.fit_batch(batch), args.steps, args.warmup, args.device)
    brain.modules.eval()

    def forward():
        with torch.no_grad(), brain.evaluation_ctx:
            brain.compute_forward(batch, sb.Stage.TEST)

    return train, timed(forward, args.steps, args.warmup, args.device)


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


def interleaved_rounds(args, runs):
    """``{name: [seconds per timed call]}`` and ``{name: [median per round]}`` of ``runs``
    (``{name: callable}``): each warmed up once (``--warmup``), then ``--rounds`` rounds in which
    each runs ``--steps`` timed calls in turn, so that a busy machine slows each of them alike."""
    for fn in runs.values():
        timed(fn, 0, args.warmup, args.device)
    times = {name: [] for name in runs}
    rounds = {name: [] for name in runs}
    for index in range(args.rounds):
        for name, fn in runs.items():
            step = timed(fn, args.steps, 0, args.device)
            times[name] += step
            rounds[name].append(statistics.median(step))
        print(f"  round {index + 1}: " + ", ".join(f"{n} {rounds[n][-1]:.2f} s" for n in runs),
              file=sys.stderr, flush=True)
    return times, rounds


def paired_ratio(rounds, name, base):
    """The median over rounds of ``name``'s round median / ``base``'s in the same round, and the
    spread (min, max) of those ratios."""
    ratios = [a / b for a, b in zip(rounds[name], rounds[base])]
    return statistics.median(ratios), min(ratios), max(ratios)


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


def _backbone_sources(args):
    """``{label: source}`` of the backbones suite, random weights saved in the work folder:
    AST-base (the benchmark's backbone), BEATs_iter3's shape (``beats_iter3_config``) and
    w2v-BERT 2.0's (``Wav2Vec2BertConfig()``); ``--quick``: their tiny configs."""
    from petl_modules.backbones.beats import beats_iter3_config, save_checkpoint
    from petl_modules.tiny import save_tiny_beats, save_tiny_w2v_bert

    folder = args.workdir / "backbones"
    folder.mkdir(exist_ok=True)
    if args.quick:
        return {"AST": args.backbone_source,
                "BEATs": str(save_tiny_beats(folder / "beats.pt")),
                "w2v-BERT": str(save_tiny_w2v_bert(folder / "w2v_bert"))}
    torch.manual_seed(0)
    transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig()).save_pretrained(folder / "w2v_bert")
    transformers.SeamlessM4TFeatureExtractor().save_pretrained(folder / "w2v_bert")
    return {"AST-base": args.backbone_source,
            "BEATs_iter3": str(save_checkpoint(beats_iter3_config(), folder / "beats_iter3.pt")),
            "w2v-BERT 2.0": str(folder / "w2v_bert")}


def suite_backbones(args):
    """Forward (no gradient, eval mode) of three frozen lobes on the same ``--batch_size`` random
    clips of ``--frames`` / 100 seconds, each through its own input processor (features computed
    once, outside the timing), in interleaved rounds: ``<backbone>_vs_ast_forward``."""
    from speechbrain.utils.data_utils import batch_pad_right

    from petl_modules.backbones import Backbone

    seconds = args.frames / 100
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(seconds * 16000), generator=generator) for _ in range(args.batch_size)]
    runs, params, tokens = {}, {}, {}
    for label, source in _backbone_sources(args).items():
        lobe = Backbone(source, max_frames=args.frames).to(args.device).eval()
        inputs, lengths = batch_pad_right([lobe.input_processor(w) for w in wavs])
        inputs, lengths = inputs.to(args.device), lengths.to(args.device)

        def forward(lobe=lobe, inputs=inputs, lengths=lengths):
            with torch.no_grad():
                return lobe(inputs, lengths) if lobe.takes_lengths else lobe(inputs)

        runs[label] = forward
        params[label] = sum(p.numel() for p in lobe.parameters())
        tokens[label] = forward()[0].shape[1]
    times, rounds = interleaved_rounds(args, runs)
    base = next(iter(runs))
    rows = []
    for label in runs:
        ratio, low, high = paired_ratio(rounds, label, base)
        rows.append(result("backbones", f"{label}: forward", times[label], None, None, backbone=label,
                           parameters=params[label], tokens=tokens[label], seconds=seconds, base=label == base,
                           round_s=rounds[label], ratio_median=ratio, ratio_min=low, ratio_max=high))
    return rows


class LoopBottleneck(torch.nn.Module):
    """One bottleneck adapter ``up(GELU(down x))`` as a module of its own (the reference's expert)."""

    def __init__(self, down_weight, down_bias, up_weight, up_bias):
        super().__init__()
        self.down = torch.nn.Linear(*down_weight.shape)
        self.up = torch.nn.Linear(*up_weight.shape)
        with torch.no_grad():
            self.down.weight.copy_(down_weight.T)
            self.down.bias.copy_(down_bias)
            self.up.weight.copy_(up_weight.T)
            self.up.bias.copy_(up_bias)

    def forward(self, x):
        return self.up(torch.nn.functional.gelu(self.down(x)))


class LoopMoA(torch.nn.Module):
    """A Dense- or Soft-MoA computed the reference's way: a Python loop over the experts
    (``src/MoA.py``: stacked expert outputs then the router's weighted sum; Soft: one expert call
    per slot group). Built from our module's weights, so both compute the same function."""

    def __init__(self, ours):
        super().__init__()
        experts = ours.experts
        self.kind = "dense" if hasattr(ours, "router") else "soft"
        self.experts = torch.nn.ModuleList(
            LoopBottleneck(experts.down_weight[n], experts.down_bias[n], experts.up_weight[n],
                           experts.up_bias[n])
            for n in range(experts.num_experts)
        )
        if self.kind == "dense":
            self.router = torch.nn.Linear(ours.router.in_features, ours.router.out_features)
            self.router.load_state_dict(ours.router.state_dict())
        else:
            self.phi = torch.nn.Parameter(ours.phi.detach().clone())

    def forward(self, x):
        if self.kind == "dense":
            weights = torch.softmax(self.router(x), dim=-1)  # [B, T, N]
            outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)  # [B, T, D, N]
            return (outputs * weights.unsqueeze(2)).sum(dim=-1)
        logits = torch.einsum("bmd,dnp->bmnp", x, self.phi)
        dispatch = torch.softmax(logits, dim=1)
        combine = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        outputs = torch.stack([expert(slots[:, n]) for n, expert in enumerate(self.experts)], dim=1)
        return torch.einsum("bnpd,bmnp->bmd", outputs, combine)


def suite_moa(args):
    """The MoA module alone at the model's token count, fwd+bwd: per-expert loop vs ours."""
    from petl_modules.methods.moa import DenseMoA, SoftMoA

    config = transformers.AutoConfig.from_pretrained(args.backbone_source)
    d = config.hidden_size
    patches_f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    patches_t = (args.frames - config.patch_size) // config.time_stride + 1
    tokens = 2 + patches_f * patches_t
    rows = []
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, tokens, d, generator=generator).to(args.device)
    for n in (15,) if args.quick else (2, 7, 15):
        for kind, cls in (("dense", DenseMoA), ("soft", SoftMoA)):
            torch.manual_seed(n)
            ours = cls(d, num_adapters=n, reduction_rate=128)
            with torch.no_grad():  # up-projections away from zero: a fair, non-trivial function
                ours.experts.up_weight.normal_(std=0.02)
            loop = LoopMoA(ours)
            ours, loop = ours.to(args.device), loop.to(args.device)
            with torch.no_grad():
                diff = (ours(x) - loop(x)).abs().max().item()
            if diff > 1e-3:
                raise RuntimeError(f"{kind} MoA N={n}: loop and batched differ by {diff}")
            for label, module in (("loop", loop), ("batched", ours)):
                inputs = x.detach().clone().requires_grad_(True)

                def step(module=module, inputs=inputs):
                    module.zero_grad(set_to_none=True)
                    with torch.autocast(args.device_type, dtype=torch.bfloat16,
                                        enabled=args.precision == "bf16"):
                        out = module(inputs)
                    out.float().square().mean().backward()

                times = timed(step, args.steps * (1 if args.quick else 3), args.warmup, args.device)
                trainable = sum(p.numel() for p in module.parameters())
                rows.append(result("moa", f"{kind}_moa N={n} {label}", times, None, trainable))
    return rows


def _load_recipe(name):
    """The ``recipes/<name>/train.py`` module (its ``prepare`` and ``make_datasets``)."""
    folder = REPO / "recipes" / name
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", folder / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fsc_run(args, per_class, tag):
    """A synthetic FSC release with ``per_class`` training utterances per intent, prepared."""
    from petl_modules.synthetic import make_dataset

    root = args.workdir / f"fsc_{tag}"
    data = make_dataset("FSC", root, per_class=per_class, seconds=min(args.frames / 100, 4.0))
    return data, root / "out"


def start_training(args, recipe, hparams):
    """What a recipe does from the manifests to the training datasets (``recipe.fold_datasets``:
    labels checked and encoded, input pipelines); returns the datasets and the class names."""
    from petl_modules.training.recipe import fold_datasets

    Path(hparams["experiment_folder"]).mkdir(parents=True, exist_ok=True)
    return fold_datasets(recipe.make_datasets(hparams, None), hparams, {"device": args.device})


def suite_data(args):
    """Data loading: time to the first batch (``first_batch_rows``), and reading tar shards
    against loose files (``shard_rows``)."""
    return first_batch_rows(args) + shard_rows(args)


def first_batch_rows(args):
    """Time from the start of training (manifests prepared) to the first batch, 1x and 10x data.

    The two sizes are measured in turn (1x, 10x, 1x, ...) so that a busy machine slows both alike.
    """
    recipe = _load_recipe("FSC")
    base = 1 if args.quick else 2
    runs = {}
    for scale in (1, 10):
        data, out = _fsc_run(args, base * scale, f"data{scale}x")
        hparams = build_hparams(args, "linear", data_folder=str(data), output_folder=str(out),
                                num_workers=2)
        recipe.prepare(hparams)  # manifests written once, before the clock
        runs[scale] = (hparams, make_brain(args, hparams))

    def first_batch(hparams, brain):
        datasets, _ = start_training(args, recipe, hparams)
        loader = brain.make_dataloader(datasets["train"], stage=sb.Stage.TRAIN,
                                       **hparams["train_loader_options"])
        iterator = iter(loader)
        next(iterator)
        del iterator

    times = {scale: [] for scale in runs}
    for _ in range(args.warmup + max(3, args.steps)):
        for scale, run in runs.items():
            times[scale] += timed(lambda: first_batch(*run), 1, 0, "cpu")
    rows = []
    for scale, (hparams, _) in runs.items():
        n_train = len(recipe.make_datasets(hparams, None)["train"])
        rows.append(result("data", f"first batch, {n_train} training utterances ({scale}x)",
                           times[scale][args.warmup:], None, None, utterances=n_train, scale=scale))
    return rows


SHARD_CLIPS, SHARD_SECONDS = 10000, 10.0  # --quick: 200 clips of 2 s


def _write_flac_clips(root, count, seconds):
    """``count`` different clips of ``seconds`` (16 kHz mono FLAC, noise and two tones: about
    290 KB per 10 s) in ten class folders (recipes/AudioFolder's layout); kept if present."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    paths = []
    for k in range(count):
        path = root / f"class{k % 10}" / f"{k:05d}.flac"
        paths.append(path)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tone = np.sin(2 * np.pi * (200 + 50 * (k % 10)) * t) + 0.5 * np.sin(2 * np.pi * 1234 * t)
        signal = 0.2 * tone + 0.05 * rng.standard_normal(len(t))
        sf.write(str(path), signal.astype("float32"), 16000, format="FLAC", subtype="PCM_16")
    return paths


def drop_page_cache(paths):
    """Drops the cached pages of ``paths`` from the page cache (``posix_fadvise(DONTNEED)``: no
    privilege needed, and other processes' cached files stay cached). Returns how: ``fadvise``,
    or ``none`` where the system has no fadvise (then the files may be read from memory)."""
    os.sync()
    how = "none"
    for path in paths:
        with contextlib.suppress(OSError, AttributeError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                how = "fadvise"
            finally:
                os.close(fd)
    return how


class OpenCounter:
    """Counts the audio files and tar shards our reading code opens (soundfile on a path, tarfile)."""

    def __init__(self):
        import tarfile

        import soundfile

        self.count = 0
        self.patches = [(soundfile, "SoundFile", soundfile.SoundFile), (tarfile, "open", tarfile.open)]
        counter = self

        class CountingSoundFile(soundfile.SoundFile):
            def __init__(self, file, *a, **k):
                if isinstance(file, (str, os.PathLike)):
                    counter.count += 1
                super().__init__(file, *a, **k)

        def counting_open(name=None, *a, **k):
            counter.count += 1
            return self.patches[1][2](name, *a, **k)

        soundfile.SoundFile, tarfile.open = CountingSoundFile, counting_open

    def close(self):
        for module, name, original in self.patches:
            setattr(module, name, original)


def _read_epoch(loader, limit=None):
    """Iterates a DataLoader; returns (clips, seconds, files opened)."""
    counter = OpenCounter()
    clips, start = 0, time.perf_counter()
    try:
        for batch in loader:
            clips += len(batch.id)
            if limit and clips >= limit:
                break
    finally:
        counter.close()
    return clips, time.perf_counter() - start, counter.count


def shard_rows(args):
    """Reading ``SHARD_CLIPS`` generated 10 s clips by one data-loading process (one DataLoader,
    no workers, one torch thread as in a DataLoader worker): from loose FLAC files (the recipes' DynamicItemDataset, shuffled) and from tar
    shards of 1000 clips (``--shards``: shuffled shard order, buffer of 1000), the page cache of
    those files dropped before each epoch where the machine allows it. Decoding only (the waveform)
    and with AST's 1024-frame fbank features, taken in turn. Also shard writing speed and the
    shuffle buffer's peak memory."""
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.dataio.sampler import ReproducibleRandomSampler

    from petl_modules.backbones.features import ASTFbank, Waveform
    from petl_modules.shard import write_shards
    from petl_modules.training.recipe import add_pipelines, load_manifest
    from petl_modules.model.task import Task
    from petl_modules.training.shards import SampleTable, ShardDataset

    count, seconds = (200, 2.0) if args.quick else (SHARD_CLIPS, SHARD_SECONDS)
    root = args.workdir / f"clips_{count}" / "sounds"
    started = time.perf_counter()
    files = _write_flac_clips(root, count, seconds)
    written_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in files)
    options = {"data_folder": str(root), "valid_fraction": 0.01, "test_fraction": 0.01}
    shards = args.workdir / f"clips_{count}" / "shards"
    shutil.rmtree(shards, ignore_errors=True)  # a kept --workdir: written again, timed
    start = time.perf_counter()  # the recipe's preparation (one header read per file), then the shards
    index = write_shards("AudioFolder", shards, options, audio="original", samples_per_shard=1000
                         if not args.quick else 50, workers=args.threads)
    write_s = time.perf_counter() - start
    shard_files = [shards / s["file"] for p in index["parts"].values() for s in p["shards"]]
    rows = [result("data", f"prepare and write shards: {count} clips, {size / 1e9:.2f} GB, "
                           f"{args.threads} processes",
                   [write_s], clips=count, clips_per_s=count / write_s, mb_per_s=size / 1e6 / write_s,
                   generated_s=written_s, kind="write")]
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"class{k}" for k in range(10)])
    encoder.expect_len(10)
    table = SampleTable(shards, index, index["splits"]["all"]["train"], index["class_names"],
                        Task.of("single_label"))
    processors = {"decode": Waveform(clip_samples=int(seconds * 16000), normalize=False),
                  "fbank": ASTFbank(max_frames=1024)}
    batch = 16

    def loose(processor):
        dataset = load_manifest(shards / "manifests" / "all.csv", root,
                                key_test={"split": lambda x: x == "train"})
        add_pipelines({"train": dataset}, processor, encoder)
        return torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=PaddedBatch,
                                           sampler=ReproducibleRandomSampler(dataset, seed=1))

    def sharded(processor):
        dataset = ShardDataset(table, processor, batch, train=True, seed=1, shuffle_buffer=1000,
                               n_classes=10)
        dataset.set_epoch(1)
        return dataset, dataset.make_dataloader(None, num_workers=0)

    limit = None if args.quick else 3000  # clips per timed epoch (the first 3000 of the epoch)
    cache = {}
    found = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (torch gives each one thread)
    for round_ in range(2 if not args.quick else 1):
        for kind, processor in processors.items():
            for source in ("files", "shards"):
                cache[source] = drop_page_cache(files if source == "files" else shard_files)
                if source == "files":
                    clips, took, opened = _read_epoch(loose(processor), limit)
                    peak = None
                else:
                    dataset, loader = sharded(processor)
                    clips, took, opened = _read_epoch(loader, limit)
                    peak = dataset.held_peak_bytes / 1e6
                found.setdefault((source, kind), []).append((clips, took, opened, peak))
    torch.set_num_threads(threads)
    for (source, kind), runs in found.items():
        clips, took, opened, peak = min(runs, key=lambda r: r[1] / r[0])
        rows.append(result("data", f"read {source}, {kind}: {clips} clips of {seconds:g} s", [took],
                           clips=clips, clips_per_s=clips / took, files_opened=opened,
                           opens_per_s=opened / took, opens_per_clip=opened / clips,
                           buffer_peak_mb=peak, page_cache=cache[source], kind=f"{source}/{kind}"))
    return rows


# The methods that train from cached backbone outputs (cache_backbone_outputs).
CACHED_METHODS = ("linear", "layer_sum")


def suite_cache(args):
    """Linear probing epochs without / with cached backbone outputs, on a synthetic FSC set."""
    from speechbrain.utils.epoch_loop import EpochCounter

    from petl_modules.training.cache import use_backbone_cache

    recipe = _load_recipe("FSC")
    per_class = 1 if args.quick else 2
    data, out = _fsc_run(args, per_class, "cache")
    rows = []
    for method, cached in ((m, c) for m in CACHED_METHODS for c in (False, True)):
        epochs = 3 if cached else 2  # the first is not timed; uncached epochs all cost the same
        hparams = build_hparams(args, method, data_folder=str(data), output_folder=str(out),
                                cache_backbone_outputs=cached, num_workers=2)
        recipe.prepare(hparams)
        datasets, _ = start_training(args, recipe, hparams)
        brain = make_brain(args, hparams)
        times = []
        if cached:
            start = time.perf_counter()
            use_backbone_cache(hparams, datasets, device=args.device)
            build = time.perf_counter() - start
            rows.append(result("cache", f"{method}: building the cache (once)", [build], None, None))
        for _ in range(epochs):
            start = time.perf_counter()
            brain.fit(EpochCounter(1), datasets["train"],
                      train_loader_kwargs=hparams["train_loader_options"])
            synchronize(args.device)
            times.append(time.perf_counter() - start)
        report = parameter_report(hparams["modules"])
        label = "cached" if cached else "uncached"
        rows.append(result("cache", f"{method} epoch, {label} ({len(datasets['train'])} utterances)",
                           times[1:], None, report["trainable_params"], method=method, cached=cached))
        del brain, hparams, datasets
    return rows


def suite_merge(args):
    """Inference forward: plain backbone, LoRA unmerged, LoRA merged (``merge_lora``)."""
    from petl_modules.methods.lora import merge_lora

    plain = build_hparams(args, "linear")
    lora = build_hparams(args, "lora")
    merged = build_hparams(args, "lora")
    with torch.no_grad():  # a trained-looking update, not B = 0
        for p in merged["petl_model"].parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
    names = merge_lora(merged["petl_model"])
    assert names, "merge_lora found no LoRA module"
    batch = random_batch(args, plain)
    models = {"plain backbone": plain, "LoRA unmerged": lora, "LoRA merged": merged}
    for hparams in models.values():
        hparams["petl_model"].to(args.device).eval()
        hparams["classifier"].to(args.device).eval()
    inputs = batch.inputs.data.to(args.device)
    times = {name: [] for name in models}
    for _ in range(args.warmup + args.steps * 3):  # interleaved: same machine load for each
        for name, hparams in models.items():
            with torch.no_grad(), torch.autocast(args.device_type, dtype=torch.bfloat16,
                                                 enabled=args.precision == "bf16"):
                times[name] += timed(lambda h=hparams: h["classifier"](*h["petl_model"](inputs)),
                                     1, 0, args.device)
    rows = []
    for name, hparams in models.items():
        report = parameter_report(hparams["modules"])
        rows.append(result("merge", f"forward, {name}", times[name][args.warmup:], None,
                           report["trainable_params"]))
    return rows


def suite_onnx(args):
    """Batch-1 inference: the ONNX export on onnxruntime (CPU provider, ``--threads`` threads) and
    the same model in PyTorch eager, measured in turn."""
    import onnxruntime

    from petl_modules.sharing.onnx_export import ProbabilityModel, export_graph, fixed_frames

    hparams = build_hparams(args, "adapter")
    lobe = hparams["backbone"]
    model = ProbabilityModel(hparams["petl_model"], hparams["classifier"], fixed_frames(lobe)).eval()
    path = args.workdir / "adapter.onnx"
    start = time.perf_counter()
    export_graph(model, lobe, path)
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = random_batch(args, hparams).inputs.data[:1]
    feed = {"input_values": inputs.numpy()}
    with torch.no_grad():
        difference = float((torch.from_numpy(session.run(None, feed)[0]) - model(inputs)).abs().max())
    times = {"onnxruntime": [], "eager": []}
    for _ in range(args.warmup + args.steps):
        with torch.no_grad():
            times["eager"] += timed(lambda: model(inputs), 1, 0, "cpu")
        times["onnxruntime"] += timed(lambda: session.run(None, feed), 1, 0, "cpu")
    report = parameter_report(hparams["modules"])
    return [result("onnx", f"adapter conformer Pfeiffer, batch 1: {name}", measured[args.warmup:],
                   None, report["trainable_params"], export_s=export_s, max_abs_difference=difference)
            for name, measured in times.items()]


def _write_noise_wav(path, seconds, sample_rate=16000, block_seconds=60):
    """A 16-bit mono wav of ``seconds`` of low noise, written block by block (bounded memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    total = int(seconds * sample_rate)
    with sf.SoundFile(str(path), "w", sample_rate, 1, "PCM_16") as stream:
        for start in range(0, total, block_seconds * sample_rate):
            count = min(block_seconds * sample_rate, total - start)
            stream.write((0.05 * rng.standard_normal(count)).astype("float32"))
    return path


def suite_classify(args):
    """Peak memory of classifying a long file vs a 10 s file (``PETLClassifier.classify_files``,
    the command line's path), the same linear-probe model, with each evaluation protocol: the first
    clip on a one-hour file, and sliding windows (half-clip hop, mean pooling, batches of 8
    windows) on a 5-minute file (916 windows of 64 frames with ``--quick``; an hour would be
    10,992), measured once; measured in turn."""
    from petl_modules.classify import PETLClassifier
    from petl_modules.model.windows import EvalProtocol
    from petl_modules.training.pretrained import run_spec

    hparams = build_hparams(args, "linear")
    n_classes = int(hparams["n_classes"])
    classifier = PETLClassifier(run_spec(hparams, [f"class{i}" for i in range(n_classes)]),
                                {"petl_model": hparams["petl_model"], "classifier": hparams["classifier"]},
                                device=args.device)
    classifier.to(args.device).eval()
    seconds = {"10 s": 10, "1 h": 3600, "5 min": 300}
    files = {name: _write_noise_wav(args.workdir / f"classify_{s}s.wav", s) for name, s in seconds.items()}
    cases = [("first", "10 s"), ("first", "1 h"), ("sliding", "10 s"), ("sliding", "5 min")]
    times = {case: [] for case in cases}
    peaks = {case: [] for case in cases}
    for repeat in range(args.warmup + max(2, args.steps)):
        for protocol, name in cases:
            if protocol == "sliding" and repeat != args.warmup:
                continue  # once: hundreds of windows per file
            classifier.protocol = EvalProtocol(protocol)
            with PeakMemory(args.device) as peak:
                start = time.perf_counter()
                found, errors = classifier.classify_files([files[name]], batch_size=8)
                synchronize(args.device)
                times[protocol, name].append(time.perf_counter() - start)
            assert found and not errors, f"classify failed on {files[name]}: {errors}"
            peaks[protocol, name].append(peak.peak_mb)
    rows = []
    for protocol, name in cases:
        skip = args.warmup if protocol == "first" else 0
        measured = [p for p in peaks[protocol, name][skip:] if p is not None]
        what = "first clip" if protocol == "first" else "sliding windows"
        rows.append(result("classify", f"classify one {name} file ({what}): peak memory",
                           times[protocol, name][skip:], max(measured) if measured else None,
                           None, seconds=seconds[name], protocol=protocol))
    del classifier, hparams
    return rows


INT8_BATCHES = (1, 8)


def suite_int8(args):
    """int8 inference (``--precision=int8``: the ONNX graph, linear layers quantised by
    onnxruntime's dynamic quantisation) against fp32: speed on the benchmark's backbone, agreement
    on a model trained through the demo."""
    return _int8_speed(args) + _int8_demo_agreement(args)


def _int8_speed(args):
    """Batches of 1 and 8 of the conformer adapter model, features to probabilities: PyTorch fp32
    eager, onnxruntime fp32 and onnxruntime int8 (``--threads`` threads each), in turn within each
    round; the ratios are medians over rounds of the ratio within a round."""
    import onnxruntime

    from petl_modules.sharing.onnx_export import (
        ProbabilityModel,
        export_graph,
        fixed_frames,
        quantize_int8,
    )

    hparams = build_hparams(args, "adapter")
    lobe = hparams["backbone"]
    model = ProbabilityModel(hparams["petl_model"], hparams["classifier"], fixed_frames(lobe)).eval()
    paths = {"onnxruntime fp32": args.workdir / "int8_suite_fp32.onnx",
             "onnxruntime int8": args.workdir / "int8_suite_int8.onnx"}
    export_graph(model, lobe, paths["onnxruntime fp32"])
    quantize_int8(paths["onnxruntime fp32"], paths["onnxruntime int8"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    processor = lobe.input_processor
    generator = torch.Generator().manual_seed(0)
    inputs = torch.stack([processor(0.1 * torch.randn(int(args.frames / 100 * 16000), generator=generator))
                          for _ in range(max(INT8_BATCHES))])
    runs = {"eager fp32": lambda x: model(x)}
    for name, session in sessions.items():
        runs[name] = lambda x, session=session: session.run(None, {"input_values": x.numpy()})
    times = {(batch, name): [] for batch in INT8_BATCHES for name in runs}
    with torch.no_grad():
        for _ in range(args.warmup + args.steps):
            for batch in INT8_BATCHES:
                for name, run in runs.items():
                    times[batch, name] += timed(lambda: run(inputs[:batch]), 1, 0, "cpu")
    rows = []
    for (batch, name), measured in times.items():
        rows.append(result("int8", f"adapter conformer Pfeiffer, batch {batch}: {name}",
                           measured[args.warmup:], None, None, batch=batch, kind=name,
                           round_s=measured[args.warmup:]))
    return rows


def _demo_model(args):
    """The ``petl_model/`` folder of a run of ``python -m petl_modules.demo`` (``--demo_folder``,
    or a new demo run with its default options in the work folder) and its test clips."""
    import csv
    import subprocess

    folder = Path(args.demo_folder) if args.demo_folder else args.workdir / "demo"
    if not (folder / "run" / "petl_model").is_dir():
        subprocess.run([sys.executable, "-m", "petl_modules.demo", f"--output_folder={folder}"],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    manifests = folder / "run" / "manifests"
    data_root = json.loads((manifests / "prepare_options.json").read_text())["data_folder"]
    with open(manifests / "test.csv", newline="") as stream:
        clips = [row["wav"].replace("$data_root", data_root) for row in csv.DictReader(stream)]
    return folder / "run" / "petl_model", folder / "backbone", clips


def _int8_demo_agreement(args):
    """Top-1 agreement and max |probability difference| of int8 against fp32 over every test clip
    of the demo model (``PETLClassifier.classify_files``, as ``classify`` runs)."""
    import os

    from petl_modules.classify import PETLClassifier
    from petl_modules.sharing.int8 import use_int8

    model_dir, backbone, clips = _demo_model(args)
    os.environ["PETL_AST_HOME"] = str(args.workdir / "home")  # the int8 graph's cache: exported here
    backbone = str(backbone) if backbone.is_dir() else None
    found = {}
    for precision in ("fp32", "int8"):
        classifier = PETLClassifier.from_folder(model_dir, backbone)
        classifier = use_int8(classifier) if precision == "int8" else classifier.set_speed(precision)
        start = time.perf_counter()
        results, errors = classifier.classify_files(clips, batch_size=8)
        elapsed = time.perf_counter() - start
        assert not errors, errors
        found[precision] = (torch.stack([r["probabilities"] for r in results]), elapsed)
    fp32, int8 = found["fp32"][0], found["int8"][0]
    agreement = float((fp32.argmax(-1) == int8.argmax(-1)).float().mean())
    difference = float((fp32 - int8).abs().max())
    return [result("int8", f"demo model, {len(clips)} test clips: {precision}", [seconds], None, None,
                   clips=len(clips), top1_agreement=agreement, max_abs_difference=difference,
                   kind=f"demo {precision}")
            for precision, (_, seconds) in found.items()]


def _utterance_set(count, seed=0):
    """``count`` generated utterances of 0.5-30 s (uniform): a ``DynamicItemDataset`` whose
    ``inputs`` are noise of that length (made when read) and whose ``label_index`` cycles
    through 31 classes; with each one's seconds."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    generator = torch.Generator().manual_seed(seed)
    seconds = (0.5 + 29.5 * torch.rand(count, generator=generator)).tolist()
    data = {f"u{i}": {"duration": f"{s:.3f}", "index": i} for i, s in enumerate(seconds)}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("duration", "index")
    @sb.utils.data_pipeline.provides("inputs", "label_index")
    def pipeline(duration, index):
        yield 0.1 * torch.randn(round(float(duration) * 16000))
        yield torch.tensor([int(index) % 31])

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "inputs", "label_index"])
    return dataset, seconds


def _padding_fraction(loader, brain):
    """The share of padded samples in the training batches of ``loader`` (one epoch, read without
    running the model), and the number of batches."""
    real = padded = batches = 0
    for batch in loader:
        lengths = batch.inputs.lengths * batch.inputs.data.shape[1]
        real += float(lengths.sum())
        padded += batch.inputs.data.numel()
        batches += 1
    return 1 - real / padded, batches


def suite_batching(args):
    """Training epochs on utterances of 0.5-30 s (``clip_seconds: null``, the conformer adapter on
    the wav2vec2-base shape, random weights; ``--quick``: a tiny wav2vec2): batches by duration
    (``dynamic_batching: True``, ``BATCHING_SECONDS`` per batch, ``BATCHING_BUCKETS`` buckets)
    against fixed-count batches of the same mean size, epochs taken in turn. Padding fraction of
    each, epoch times; ``dynamic_batching_padding`` and ``dynamic_vs_fixed_batches_epoch``."""
    from speechbrain.utils.epoch_loop import EpochCounter

    from petl_modules.tiny import tiny_waveform_config

    folder = args.workdir / ("tiny_wav2vec2" if args.quick else "wav2vec2_base")
    if not folder.is_dir():
        torch.manual_seed(0)
        config = tiny_waveform_config() if args.quick else transformers.Wav2Vec2Config()
        transformers.Wav2Vec2Model(config).save_pretrained(folder)
    dataset, seconds = _utterance_set(args.batching_utterances)
    options = {"backbone_source": str(folder), "clip_seconds": None, "num_workers": 0,
               "max_batch_seconds": BATCHING_SECONDS, "num_buckets": BATCHING_BUCKETS}
    extra = {"reduction_rate": 8} if args.quick else {}
    brains, padding = {}, {}
    hparams = build_hparams(args, "adapter", dict(options, dynamic_batching=True), **extra)
    brains["dynamic"] = (make_brain(args, hparams), hparams)
    loader = brains["dynamic"][0].make_dataloader(dataset, sb.Stage.TRAIN, ckpt_prefix=None,
                                                  **hparams["train_loader_options"])
    padding["dynamic"], count = _padding_fraction(loader, brains["dynamic"][0])
    mean_size = max(1, round(len(dataset) / count))
    hparams = build_hparams(args, "adapter", dict(options, batch_size=mean_size), **extra)
    brains["fixed"] = (make_brain(args, hparams), hparams)
    loader = brains["fixed"][0].make_dataloader(dataset, sb.Stage.TRAIN, ckpt_prefix=None,
                                                **hparams["train_loader_options"])
    padding["fixed"], _ = _padding_fraction(loader, brains["fixed"][0])
    times = {name: [] for name in brains}
    for _ in range(args.warmup + args.steps):
        for name, (brain, hparams) in brains.items():
            start = time.perf_counter()
            brain.fit(EpochCounter(1), dataset, train_loader_kwargs=hparams["train_loader_options"])
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, measured in times.items():
        what = (f"{BATCHING_SECONDS:g} s per batch, {BATCHING_BUCKETS} buckets" if name == "dynamic"
                else f"{mean_size} utterances per batch")
        rows.append(result("batching", f"adapter epoch, {len(dataset)} utterances of 0.5-30 s "
                           f"({sum(seconds):.0f} s), {name} batches ({what})",
                           measured[args.warmup:], None, None, kind=name, padding=padding[name],
                           round_s=measured[args.warmup:], mean_batch=mean_size))
    return rows


# One compiled start: a fresh process builds the method's model as a run does, compiles it as
# --compile does (compile_with_fallback) and times its first train step (compilation included).
COMPILED_START = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from torch._dynamo.utils import counters
from petl_modules.training.compose import compose_hparams, load_hparams
args = json.loads(sys.argv[2])
torch.set_num_threads(args["threads"])
hparams = load_hparams(compose_hparams(args["method_file"], args["dataset_yaml"], args["options"]))
from petl_modules.training.brain import ClassificationBrain
import speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
brain = ClassificationBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                            hparams=hparams, checkpointer=None,
                            run_opts={"device": "cpu", "noprogressbar": True, "compile": True})
brain._compile()
brain.init_optimizers()
brain.on_stage_start(sb.Stage.TRAIN)
processor = hparams["backbone"].input_processor
generator = torch.Generator().manual_seed(0)
batch = PaddedBatch([{"id": str(i), "inputs": processor(0.1 * torch.randn(args["samples"], generator=generator)),
                      "label_index": torch.tensor([i])} for i in range(args["batch_size"])])
start = time.perf_counter()
brain.fit_batch(batch)
print(json.dumps({"first_step_s": time.perf_counter() - start, **dict(counters["inductor"])}))
"""


def suite_compile_cache(args):
    """Compiled start-up without and with inductor's cache: two fresh processes, one after the
    other, compile the same model (``--methods``, default LoRA) with one new cache folder
    (``TORCHINDUCTOR_CACHE_DIR``, as ``compile_cache_dir`` sets it); each times its first
    compiled train step. ``compile_cache_second_vs_first_start``."""
    import subprocess

    name = (args.methods or ["lora"])[0]
    (_, method_file, overrides), = [m for m in METHODS if m[0] == name]
    options = {"data_folder": str(args.workdir / "no_data"), "output_folder": str(args.workdir / "out"),
               "backbone_source": args.backbone_source, "batch_size": args.batch_size,
               "max_frames": args.frames, "num_workers": 0, **overrides}
    if args.quick and "reduction_rate" in (REPO / "hparams" / f"{method_file}.yaml").read_text():
        options["reduction_rate"] = 64
    settings = {"method_file": str(REPO / "hparams" / f"{method_file}.yaml"),
                "dataset_yaml": str(FSC_YAML), "options": options, "threads": args.threads,
                "samples": int(args.frames / 100 * 16000), "batch_size": args.batch_size}
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(args.workdir / "inductor_cache"))
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", COMPILED_START, str(REPO), json.dumps(settings)],
                              env=env, capture_output=True, text=True, check=True)
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        found["process_s"] = time.perf_counter() - start
        runs.append(found)
    return [result("compile_cache", f"{name}: first compiled train step, {which} run", [run["first_step_s"]],
                   None, None, kind=which, process_s=run["process_s"],
                   cache_hits=run.get("fxgraph_cache_hit", 0), cache_misses=run.get("fxgraph_cache_miss", 0))
            for which, run in zip(("first", "second"), runs)]


# Four tasks of different methods on one AST-base backbone (one sequence length: prompt tuning,
# which adds tokens, would run as its own stack; see benchmarks/README.md).
MULTITASK = [("lora", "lora", {}), ("adapter conformer Pfeiffer", "adapter", {}),
             ("soft_moa N=7", "soft_moa", {}), ("prefix_tuning", "prefix_tuning", {})]
MULTITASK_BATCH = 32


def _weights_mb(module):
    """MB of the distinct parameters and buffers of ``module`` (shared tensors counted once)."""
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total / 2**20


def suite_multitask(args):
    """Several tasks on one frozen backbone (``PETLClassifier.from_folders``) against one task's
    model and four separate models, inference on a batch of 32 (``--batch_size`` with --quick),
    timed in turn: every file for every task (the tasks' copies of the batch stacked), and a mixed
    batch in which each file names one task. Memory: distinct weights, and the activation peak of
    a forward (CPU: peak RSS above the RSS before it; CUDA: peak allocated above the allocated)."""
    from speechbrain.utils.data_utils import batch_pad_right

    from petl_modules.classify import PETLClassifier
    from petl_modules.training.pretrained import save_petl_model

    batch = args.batch_size if args.quick else MULTITASK_BATCH
    folders = []
    for k, (_, method, overrides) in enumerate(MULTITASK):
        hparams = build_hparams(args, method, overrides)
        classes = [f"class{i}" for i in range(int(hparams["n_classes"]))]
        folders.append(args.workdir / "multitask" / f"task{k}")
        save_petl_model(folders[-1], hparams, classes)
        del hparams
    separate = [PETLClassifier.from_folder(f, device=args.device).set_speed(args.precision)
                for f in folders]
    several = PETLClassifier.from_folders(folders, device=args.device).set_speed(args.precision)
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(args.frames / 100 * 16000), generator=generator)
            for _ in range(batch)]
    inputs, lengths = batch_pad_right([several.input_processor(w) for w in wavs])
    mixed_tasks = torch.arange(batch) % len(MULTITASK)
    runs = {  # key: (name, run)
        "one": (f"one task (lora), a batch of {batch}",
                lambda: separate[0].classify_inputs(inputs, lengths)),
        "separate": (f"four separate models, a batch of {batch} each",
                     lambda: [c.classify_inputs(inputs, lengths) for c in separate]),
        "every": ("four tasks on one backbone, every file for every task",
                  lambda: several.classify_inputs(inputs, lengths)),
        "mixed": ("four tasks on one backbone, mixed batch (each file names one task)",
                  lambda: several.run(inputs, lengths, mixed_tasks)),
    }
    weights = {"one": _weights_mb(separate[0]), "separate": sum(_weights_mb(c) for c in separate),
               "every": _weights_mb(several), "mixed": _weights_mb(several)}
    times = {key: [] for key in runs}
    for _ in range(args.warmup + args.steps):  # in turn: the same machine load for each
        for key, (_, run) in runs.items():
            times[key] += timed(run, 1, 0, args.device)
    activations = {}
    for key, (_, run) in runs.items():  # apart: freeing memory before a block slows its start
        with PeakMemory(args.device) as peak:
            before = (torch.cuda.memory_allocated() / 2**20 if args.device == "cuda"
                      else _read_status_mb("VmRSS") - PeakMemory.baseline_mb)
            run()
        activations[key] = None if peak.peak_mb is None else max(0.0, peak.peak_mb - before)
    rows = []
    for key, (name, _) in runs.items():
        rows.append(result("multitask", name, times[key][args.warmup:], activations[key], None,
                           key=key, batch=batch, weights_mb=round(weights[key], 1),
                           round_s=times[key][args.warmup:]))
    return rows


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


def suite_compile(args):
    """Eager against ``torch.compile`` (``--compile``, inductor), per method: the reference
    pairs' models (``--methods`` picks any variants). The first compiled train step and forward
    are timed on their own (they include compilation), then eager and compiled steps are timed
    after warm-up, train steps and forwards of the two in turn."""
    from petl_modules.model.precision import EagerFallback

    names = list(args.methods) if args.methods else [ours for ours, _ in REFERENCE_PAIRS]
    if args.quick and not args.methods:
        names = names[:2]
    rows = []
    for name in names:
        (_, method_file, overrides), = [m for m in METHODS if m[0] == name]
        torch._dynamo.reset()  # a fresh compile cache per method (no cache-limit fallbacks)
        hparams = build_hparams(args, method_file, overrides)
        batch = random_batch(args, hparams)
        eager = make_brain(args, hparams)
        compiled = make_brain(args, hparams, compile=True)  # the same modules, compiled
        compiled.modules.train()
        start = time.perf_counter()
        compiled.fit_batch(batch)
        synchronize(args.device)
        first_train = time.perf_counter() - start
        compiled.modules.eval()
        start = time.perf_counter()
        with torch.no_grad(), compiled.evaluation_ctx:
            compiled.compute_forward(batch, sb.Stage.TEST)
        synchronize(args.device)
        first_forward = time.perf_counter() - start
        one = argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 0})
        for _ in range(args.warmup):
            for brain in (eager, compiled):
                time_steps(one, brain, batch)
        times = {"eager": {"train": [], "forward": []}, "compiled": {"train": [], "forward": []}}
        for _ in range(args.steps):  # a train step and a forward of each, in turn
            for kind, brain in (("eager", eager), ("compiled", compiled)):
                train, forward = time_steps(one, brain, batch)
                times[kind]["train"] += train
                times[kind]["forward"] += forward
        fell_back = sorted(key for key, module in compiled.modules.items()
                           if isinstance(module, EagerFallback) and module.failed)
        trainable = parameter_report(hparams["modules"])["trainable_params"]
        for kind in ("eager", "compiled"):
            for phase in ("train", "forward"):
                rows.append(result(
                    "compile", f"{name}: {'train step' if phase == 'train' else 'forward'} {kind}",
                    times[kind][phase], None, trainable, pair=name, kind=kind, phase=phase,
                    **({"first_call_s": first_train if phase == "train" else first_forward,
                        "fell_back": fell_back} if kind == "compiled" else {})))
        print(f"  {name}: first compiled train step {first_train:.1f} s, forward {first_forward:.1f} s;"
              f" train eager {statistics.median(times['eager']['train']):.3f} s, compiled "
              f"{statistics.median(times['compiled']['train']):.3f} s; forward eager "
              f"{statistics.median(times['eager']['forward']):.3f} s, compiled "
              f"{statistics.median(times['compiled']['forward']):.3f} s"
              + (f"; fell back to eager: {', '.join(fell_back)}" if fell_back else ""),
              file=sys.stderr, flush=True)
        del eager, compiled, hparams, batch
        gc.collect()
    torch._dynamo.reset()
    return rows


PREPARE_FILES = 20000


def suite_prepare(args):
    """Files per second of ``prepare_audiofolder`` on generated folder-per-class data."""
    import numpy as np
    import soundfile as sf

    count = 500 if args.quick else PREPARE_FILES
    root = args.workdir / f"prepare_{count}"
    signal = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype("float32")
    for k in range(count):
        path = root / f"class{k % 10}" / f"{k}.wav"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), signal, 16000, subtype="PCM_16")
    recipe = _load_recipe("AudioFolder")
    options = {"data_folder": str(root), "split_seed": 0, "valid_fraction": 0.1,
               "test_fraction": 0.1}
    times = []
    for run in range(args.warmup + max(2, args.steps)):
        start = time.perf_counter()
        recipe.prepare_audiofolder(options, args.workdir / f"prepare_manifests_{run}")
        times.append(time.perf_counter() - start)
    kept = times[args.warmup:]
    return [result("prepare", f"prepare {count} files (AudioFolder)", kept, None, None, files=count,
                   files_per_s=count / statistics.median(kept))]


# The AudioSet lists' sizes: balanced, unbalanced, eval segments.
FULL_LISTS = {"balanced_train_segments": 22160, "unbalanced_train_segments": 2041789,
              "eval_segments": 20371}
PREPARE_FULL_SCRIPT = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from petl_modules.training.prepare import peak_memory_mb
def rss():
    gc.collect()
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
import audioset_prepare as prep
from petl_modules.training.recipe import load_manifest
from petl_modules.model.task import Task
from petl_modules.training.shards import SampleTable
out = {"imports_mb": rss()}
options = {"data_folder": sys.argv[2], "subset": "full", "max_missing": 0.5, "check_headers": False}
names = prep.options_from_data(options)["class_names"]
start = time.perf_counter()
prep.prepare_audioset(options, sys.argv[3], names)
out["prepare_s"] = time.perf_counter() - start
out["prepare_peak_mb"] = peak_memory_mb()
before = rss()
start = time.perf_counter()
dataset = load_manifest(sys.argv[3] + "/train.csv", sys.argv[2])
out["dataset_s"], out["dataset_mb"], out["rows"] = time.perf_counter() - start, rss() - before, len(dataset)
del dataset
before = rss()
index = json.load(open(sys.argv[4] + "/shards.json"))
start = time.perf_counter()
table = SampleTable(sys.argv[4], index, ["train"], names, Task.of("multilabel"))
out["table_s"], out["table_mb"] = time.perf_counter() - start, rss() - before
print(json.dumps(out))
"""


def suite_prepare_full(args):
    """AudioSet's full lists (2M segments; ``--quick``: 20k) prepared as ``recipes/AudioSet`` does:
    the lists parsed, the audio folder listed once, every segment looked up, manifests and missing
    clip counts written, in a fresh process; 85% of the files present (empty files: at this size
    the headers are not read). Then the memory of the 2M-row training manifest as SpeechBrain's
    ``DynamicItemDataset`` and as a shard table (``SampleTable``, what ``--shards`` holds)."""
    import csv
    import subprocess

    import numpy as np

    scale = 0.01 if args.quick else 1.0
    root = args.workdir / "audioset_full"
    rng = np.random.default_rng(0)
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([k, f"/m/0c{k:04d}", f"Class {k}"] for k in range(527))
    shard_rows_ = []
    started = time.perf_counter()
    created = 0
    for name, count in FULL_LISTS.items():
        count = max(100, int(count * scale))
        ids = ["".join(row) for row in chars[rng.integers(0, len(chars), size=(count, 11))]]
        labels = rng.integers(0, 527, size=(count, 3))
        with open(root / f"{name}.csv", "w") as stream:
            stream.write(f"# Segments csv created (benchmark)\n# num_ytids={count}, num_segs={count}\n"
                         "# YTID, start_seconds, end_seconds, positive_labels\n")
            for k, ytid in enumerate(ids):
                mids = ",".join(f"/m/0c{c:04d}" for c in sorted(set(labels[k][: 1 + k % 3])))
                stream.write(f'{ytid}, {10 * (k % 30)}.000, {10 * (k % 30) + 10}.000, "{mids}"\n')
        present = rng.random(count) < 0.85
        for k in np.flatnonzero(present):
            folder = root / "audios" / name / f"part{k // 50000:02d}"
            if k % 50000 == 0 or not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(folder / f"Y{ids[k]}.wav", os.O_CREAT | os.O_WRONLY, 0o644))
            created += 1
        if name == "unbalanced_train_segments":
            shard_rows_ = [(ids[k], ";".join(f"Class {c}" for c in sorted(set(labels[k][: 1 + k % 3]))))
                           for k in np.flatnonzero(present)]
    generated_s = time.perf_counter() - started
    shards = args.workdir / "audioset_full_table"
    (shards / "train").mkdir(parents=True, exist_ok=True)
    with open(shards / "train" / "samples.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["shard", "key", "ID", "label", "duration", "seg_start", "seg_end"])
        writer.writerows([k // 1000, f"{k:09d}", ytid, label, "10.000", "", ""]
                         for k, (ytid, label) in enumerate(shard_rows_))
    (shards / "shards.json").write_text(json.dumps({"parts": {"train": {
        "table": "train/samples.csv",
        "shards": [{"file": f"train/train-{k:06d}.tar"} for k in range(len(shard_rows_) // 1000 + 1)]}}}))
    proc = subprocess.run([sys.executable, "-c", PREPARE_FULL_SCRIPT, str(REPO / "recipes" / "AudioSet"),
                           str(root), str(args.workdir / "audioset_full_manifests"), str(shards)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode:
        raise RuntimeError(f"prepare_full failed: {proc.stderr[-2000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    segments = sum(max(100, int(c * scale)) for c in FULL_LISTS.values())
    return [result("prepare_full", f"prepare AudioSet full: {segments} segments, {created} files",
                   [found["prepare_s"]], found["prepare_peak_mb"] - found["imports_mb"], None, segments=segments,
                   files=created, imports_mb=found["imports_mb"], generated_s=generated_s),
            result("prepare_full", f"train manifest as a DynamicItemDataset: {found['rows']} rows",
                   [found["dataset_s"]], found["dataset_mb"], None, rows=found["rows"]),
            result("prepare_full", f"the same rows as a shard table: {len(shard_rows_)} rows",
                   [found["table_s"]], found["table_mb"], None, rows=len(shard_rows_))]


SUITE_FUNCTIONS = {"methods": suite_methods, "moa": suite_moa, "data": suite_data,
                   "cache": suite_cache, "merge": suite_merge, "classify": suite_classify,
                   "onnx": suite_onnx, "prepare": suite_prepare, "reference": suite_reference,
                   "multitask": suite_multitask, "compile": suite_compile,
                   "prepare_full": suite_prepare_full, "int8": suite_int8,
                   "batching": suite_batching, "compile_cache": suite_compile_cache,
                   "vs_lora": suite_vs_lora, "backbones": suite_backbones}
SUITE_FUNCTIONS["long_audio"] = lambda args: __import__("runpy").run_path(str(Path(__file__).with_name("long_audio.py")))["suite_long_audio"](args)  # noqa: E501


# ==================================================================== ratios and report
def _median(rows, name):
    found = [r["median_s"] for r in rows if r["name"] == name]
    return found[0] if found else None


def _ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def compute_ratios(rows):
    """The issue's ratio keys (None where their suite did not run) and a few more."""
    def step(name):  # interleaved measurement when there is one
        return _median(rows, f"{name}: train step (interleaved)") or _median(rows, f"{name}: train step")

    ratios = {
        "soft_moa_n15_vs_adapter": _ratio(step("soft_moa N=15"), step("adapter bottleneck MHSA RR128")),
        "dense_moa_n15_vs_adapter": _ratio(step("dense_moa N=15"), step("adapter bottleneck MHSA RR128")),
        "lora_merged_vs_plain": _ratio(_median(rows, "forward, LoRA merged"),
                                       _median(rows, "forward, plain backbone")),
    }
    loops = {kind: _ratio(_median(rows, f"{kind}_moa N=15 loop"),
                          _median(rows, f"{kind}_moa N=15 batched")) for kind in ("dense", "soft")}
    # Dense-MoA: the reference's loop runs every expert over all tokens. (Soft-MoA's experts see
    # only the N*p slots, so its loop costs little either way: reported as the _soft key.)
    ratios["moa_loop_vs_batched_n15"] = loops["dense"]
    ratios["moa_loop_vs_batched_n15_dense"] = loops["dense"]
    ratios["moa_loop_vs_batched_n15_soft"] = loops["soft"]
    for method in CACHED_METHODS:
        epochs = {r["cached"]: r["median_s"] for r in rows if r["suite"] == "cache" and r.get("method") == method}
        ratios[f"{method}_cache_epoch_speedup"] = _ratio(epochs.get(False), epochs.get(True))
    for r in rows:
        if r["suite"] == "vs_lora" and r["method"] != "lora":
            key = r["method"].replace(",", "_").replace(" ", "_")
            ratios[f"{key}_vs_lora_train_step"] = r["ratio_median"]
        if r["suite"] == "backbones" and not r["base"]:
            key = r["backbone"].replace(" ", "_").replace(".", "").replace("-", "_")
            ratios[f"{key}_vs_ast_forward"] = r["ratio_median"]
    data = {r.get("scale"): r["median_s"] for r in rows if r["suite"] == "data" and "scale" in r}
    reads = {r["kind"]: r for r in rows if r["suite"] == "data" and r.get("kind")}
    if "files/decode" in reads and "shards/decode" in reads:
        ratios["shards_vs_files_opens_per_clip"] = _ratio(reads["files/decode"]["opens_per_clip"],
                                                          reads["shards/decode"]["opens_per_clip"])
    for kind in ("shards/decode", "shards/fbank", "files/decode", "files/fbank"):
        if kind in reads:
            ratios[f"{kind.replace('/', '_')}_clips_per_s"] = reads[kind]["clips_per_s"]
    if "write" in reads:
        ratios["shard_write_clips_per_s"] = reads["write"]["clips_per_s"]
    if "shards/decode" in reads:
        ratios["shuffle_buffer_peak_mb"] = reads["shards/decode"]["buffer_peak_mb"]
    ratios["first_batch_10x_data"] = _ratio(data.get(10), data.get(1))
    memory = {(r.get("protocol"), r.get("seconds")): r["peak_mem_mb"] for r in rows
              if r["suite"] == "classify"}
    ratios["classify_memory_1h_vs_10s"] = _ratio(memory.get(("first", 3600)), memory.get(("first", 10)))
    ratios["classify_memory_5min_vs_10s_sliding"] = _ratio(memory.get(("sliding", 300)),
                                                           memory.get(("sliding", 10)))
    full = [r for r in rows if r["suite"] == "prepare_full"]
    if full:
        ratios["prepare_full_s"] = full[0]["median_s"]
        ratios["prepare_full_peak_mb"] = full[0]["peak_mem_mb"]
        ratios["manifest_rows_dataset_mb"] = full[1]["peak_mem_mb"]
        ratios["manifest_rows_shard_table_mb"] = full[2]["peak_mem_mb"]
    prepared = [r["files_per_s"] for r in rows if r["suite"] == "prepare"]
    ratios["prepare_files_per_s"] = prepared[0] if prepared else None
    ratios["onnxruntime_vs_eager_batch1"] = _ratio(
        _median(rows, "adapter conformer Pfeiffer, batch 1: onnxruntime"),
        _median(rows, "adapter conformer Pfeiffer, batch 1: eager"))
    ratios["eager_vs_sdpa_full_ft_train_step"] = _ratio(
        _median(rows, "full_ft [eager attention]: train step"), _median(rows, "full_ft: train step"))
    peaks = {r["name"]: r["peak_mem_mb"] for r in rows if r["suite"] == "methods"}
    for method, base in (("full_ft", "full_ft"), ("adapter", "adapter conformer Pfeiffer"),
                         ("lora", "lora")):
        ratios[f"gradient_checkpointing_peak_mem_{method}"] = _ratio(
            peaks.get(f"{base} [gradient checkpointing]: train step"), peaks.get(f"{base}: train step"))
    multitask = {r["key"]: r for r in rows if r["suite"] == "multitask"}
    if multitask:
        one, four, every, mixed = (multitask[k] for k in ("one", "separate", "every", "mixed"))

        def paired(num, den):  # the median over rounds of the ratio within each round
            return statistics.median(a / b for a, b in zip(num["round_s"], den["round_s"]))

        ratios["multitask_every_task_vs_one_task"] = paired(every, one)
        ratios["multitask_every_task_vs_separate_models"] = paired(every, four)
        ratios["multitask_mixed_batch_vs_one_task"] = paired(mixed, one)
        ratios["separate_models_vs_one_task"] = paired(four, one)
        ratios["multitask_weights_vs_one_model"] = _ratio(every["weights_mb"], one["weights_mb"])
        ratios["separate_models_weights_vs_one_model"] = _ratio(four["weights_mb"], one["weights_mb"])
        for key, r in (("every_task", every), ("mixed_batch", mixed)):
            if r["peak_mem_mb"] is not None and one["peak_mem_mb"] is not None:
                ratios[f"multitask_{key}_memory_vs_one_model"] = _ratio(
                    r["weights_mb"] + r["peak_mem_mb"], one["weights_mb"] + one["peak_mem_mb"])
    int8 = {(r.get("batch"), r["kind"]): r for r in rows if r["suite"] == "int8"}
    for batch in INT8_BATCHES:
        eager = int8.get((batch, "eager fp32"))
        for kind, key in (("onnxruntime int8", "int8"), ("onnxruntime fp32", "onnx_fp32")):
            if eager and (batch, kind) in int8:  # throughput / fp32 eager's, paired per round
                ratios[f"{key}_throughput_vs_fp32_eager_batch{batch}"] = statistics.median(
                    e / q for e, q in zip(eager["round_s"], int8[batch, kind]["round_s"]))
    starts = {r["kind"]: r for r in rows if r["suite"] == "compile_cache"}
    if starts:
        ratios["compile_cache_second_vs_first_start"] = _ratio(starts["second"]["median_s"],
                                                               starts["first"]["median_s"])
    batching = {r["kind"]: r for r in rows if r["suite"] == "batching"}
    if batching:
        ratios["dynamic_batching_padding"] = batching["dynamic"]["padding"]
        ratios["fixed_batches_padding"] = batching["fixed"]["padding"]
        ratios["dynamic_vs_fixed_batches_epoch"] = statistics.median(
            d / f for d, f in zip(batching["dynamic"]["round_s"], batching["fixed"]["round_s"]))
    demo = int8.get((None, "demo int8"))
    if demo:
        ratios["int8_top1_agreement_demo"] = demo["top1_agreement"]
        ratios["int8_max_prob_difference_demo"] = demo["max_abs_difference"]
    compiled = {(r["pair"], r["phase"], r["kind"]): r["median_s"] for r in rows if r["suite"] == "compile"}
    for (pair, phase, kind), seconds in compiled.items():
        if kind == "compiled":
            key = "compile_vs_eager_{}_{}".format(pair.replace(" ", "_").replace("=", ""),
                                                  "train_step" if phase == "train" else phase)
            ratios[key] = _ratio(seconds, compiled.get((pair, phase, "eager")))
    for r in rows:
        if r["suite"] == "reference":
            key = "reference_{}_{}_{}".format(
                r["pair"].replace(" ", "_").replace("=", ""), r["phase"].replace(" ", "_"), r["precision"])
            ratios[key] = r["ratio_median"]
    return ratios


def target_of(key):
    """The target of a ratio key, or ''."""
    if key.startswith("reference_"):
        for (phase, precision), target in REFERENCE_TARGETS.items():
            if key.endswith(f"_{phase}_{precision}"):
                return target
    return TARGETS.get(key, "")


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def render(machine, rows, ratios):
    """The report in Markdown: machine, one table per suite, ratios."""
    parts = ["## Machine", "", markdown_table(["key", "value"], sorted(machine.items())), ""]
    methods = [r for r in rows if r["suite"] == "methods"]
    if methods:
        full = _median(rows, "full_ft: train step")
        lines = []
        for r in methods:
            if not r["name"].endswith(": train step"):
                continue  # (interleaved rows: in the table below)
            name = r["name"][: -len(": train step")]
            fwd = _median(rows, f"{name}: forward")
            lines.append([name, r["trainable_params"], f"{r['trainable_percent']:.2f}",
                          r["median_s"], r["min_s"], _ratio(r["median_s"], full), fwd,
                          r["peak_mem_mb"], round(r["samples_per_s"], 2),
                          None if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"])
        parts += ["## methods", "", markdown_table(
            ["method", "trainable", "trainable %", "train step median (s)", "min (s)",
             "vs full FT", "forward median (s)", "peak mem (MB)", "train samples/s", "MFU"],
            lines), ""]
    interleaved = [r for r in methods if r["name"].endswith("(interleaved)")]
    if interleaved:
        parts += ["## methods: MoA ratio models, train steps taken in turn", "", markdown_table(
            ["name", "median (s)", "min (s)", "params"],
            [[r["name"], r["median_s"], r["min_s"], r["trainable_params"]] for r in interleaved]), ""]
    reference = [r for r in rows if r["suite"] == "reference"]
    if reference:
        def cell(pair, phase, precision):
            found = [r for r in reference if r["pair"] == pair and r["phase"] == phase
                     and r["precision"] == precision]
            if not found:
                return "-"
            r = found[0]
            return f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"

        pairs = list(dict.fromkeys(r["pair"] for r in reference))
        lines = []
        for pair in pairs:
            first = next(r for r in reference if r["pair"] == pair and r["phase"] == "train step")
            lines.append([pair, first["reference"], first["trainable_params"],
                          statistics.median(first["reference_s"]),
                          cell(pair, "train step", "fp32"), cell(pair, "forward", "fp32"),
                          cell(pair, "train step", "bf16"), cell(pair, "forward", "bf16")])
        rounds = len(reference[0]["ratios"])
        parts += [f"## reference: ours / the original PETL_AST (median over {rounds} rounds, "
                  "min-max in brackets)", "", markdown_table(
                      ["ours", "reference", "trainable", "reference train step (s)",
                       "train fp32", "forward fp32", "train bf16 / ref fp32",
                       "forward bf16 / ref fp32"], lines), ""]
    compiled = [r for r in rows if r["suite"] == "compile" and r["kind"] == "compiled"]
    if compiled:
        def eager_of(r):
            return next(e["median_s"] for e in rows if e["suite"] == "compile" and e["kind"] == "eager"
                        and e["pair"] == r["pair"] and e["phase"] == r["phase"])

        parts += ["## compile: torch.compile / eager (medians; first call includes compilation)", "",
                  markdown_table(["method", "phase", "eager (s)", "compiled (s)", "compiled / eager",
                                  "first compiled call (s)", "fell back to eager"],
                                 [[r["pair"], r["phase"], eager_of(r), r["median_s"],
                                   _ratio(r["median_s"], eager_of(r)), r["first_call_s"],
                                   ", ".join(r["fell_back"]) or "no"] for r in compiled]), ""]
    for suite, title in (("vs_lora", "vs_lora: train steps, interleaved rounds"),
                         ("backbones", "backbones: forward, interleaved rounds")):
        found = [r for r in rows if r["suite"] == suite]
        if found:
            parts += [f"## {title} (ratio: median over {len(found[0]['round_s'])} rounds of the ratio "
                      "within a round to the first row, min-max in brackets)", "", markdown_table(
                          ["name", "median (s)", "min (s)", "params", "ratio"],
                          [[r["name"], r["median_s"], r["min_s"],
                            r["trainable_params"] if suite == "vs_lora" else r["parameters"],
                            f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})"]
                           for r in found]), ""]
    starts = [r for r in rows if r["suite"] == "compile_cache"]
    if starts:
        parts += ["## compile_cache: compiled start-up, a fresh cache then the same cache", "",
                  markdown_table(["name", "first step (s)", "process (s)", "FX graph cache hits",
                                  "misses"],
                                 [[r["name"], r["median_s"], r["process_s"], r["cache_hits"],
                                   r["cache_misses"]] for r in starts]), ""]
    batching = [r for r in rows if r["suite"] == "batching"]
    if batching:
        parts += ["## batching: batches by duration against fixed-count batches", "", markdown_table(
            ["name", "median epoch (s)", "min (s)", "padding fraction"],
            [[r["name"], r["median_s"], r["min_s"], r["padding"]] for r in batching]), ""]
    int8 = [r for r in rows if r["suite"] == "int8"]
    if int8:
        parts += ["## int8 (onnxruntime dynamic quantisation) against fp32", "", markdown_table(
            ["name", "median (s)", "min (s)", "top-1 agreement with fp32", "max |prob diff|"],
            [[r["name"], r["median_s"], r["min_s"], r.get("top1_agreement", ""),
              r.get("max_abs_difference", "")] for r in int8]), ""]
    multitask = [r for r in rows if r["suite"] == "multitask"]
    if multitask:
        parts += [f"## multitask (batch of {multitask[0]['batch']}, inference)", "", markdown_table(
            ["name", "median (s)", "min (s)", "weights (MB)", "activation peak (MB)"],
            [[r["name"], r["median_s"], r["min_s"], r["weights_mb"], r["peak_mem_mb"]]
             for r in multitask]), ""]
    reads = [r for r in rows if r["suite"] == "data" and r.get("kind")]
    if reads:
        parts += ["## data: tar shards and loose files", "", markdown_table(
            ["what", "clips", "seconds", "clips/s", "files opened", "opens/s", "buffer peak (MB)",
             "page cache"],
            [[r["name"], r.get("clips"), r["median_s"], r.get("clips_per_s"), r.get("files_opened"),
              r.get("opens_per_s"), r.get("buffer_peak_mb"), r.get("page_cache")] for r in reads]), ""]
    for suite in SUITES[1:] + ("prepare_full",):
        found = [r for r in rows if r["suite"] == suite and not r.get("kind")]
        if found:
            parts += [f"## {suite}", "", markdown_table(
                ["name", "median (s)", "min (s)", "peak mem (MB)", "params"],
                [[r["name"], r["median_s"], r["min_s"], r["peak_mem_mb"], r["trainable_params"]]
                 for r in found]), ""]
    parts += ["## ratios", "", markdown_table(
        ["ratio", "value", "target"],
        [[k, v, target_of(k)] for k, v in ratios.items()]), ""]
    return "\n".join(parts)


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
                        help="reference, vs_lora and backbones suites: interleaved rounds (3)")
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
    _trim_memory()
    PeakMemory.baseline_mb = _read_status_mb("VmRSS") or 0.0
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
