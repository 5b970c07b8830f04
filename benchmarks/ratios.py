"""The ratios a run reports, computed from its result rows, and their targets."""

import statistics

from benchmarks.suites.cache import CACHED_METHODS
from benchmarks.suites.int8 import INT8_BATCHES

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
    "long_audio_fastest_vs_fp32_rtf": ">= 2.5",
    "dynamic_batching_padding": "<= 0.10",
    "dynamic_vs_fixed_batches_epoch": "<= 0.7",
    "multitask_every_task_vs_one_task": "<= 1.5 (out of reach: 4x the tokens, see README)",
    "multitask_weights_vs_one_model": "<= 1.2",
}
# The reference suite's targets, per phase and precision of ours (against the reference's fp32).
REFERENCE_TARGETS = {("train_step", "fp32"): "<= 1.0", ("train_step", "bf16"): "<= 0.6",
                     ("forward", "fp32"): "<= 0.8", ("forward", "bf16"): "<= 0.8"}


def median_of(rows, name):
    found = [r["median_s"] for r in rows if r["name"] == name]
    return found[0] if found else None


def ratio_of(num, den):
    return None if num is None or den is None or den == 0 else num / den


def compute_ratios(rows):
    """The issue's ratio keys (None where their suite did not run) and a few more, in the order
    of the report: training steps, data, inference, several tasks, the rest."""
    ratios = {}
    for part in (_step_ratios, _data_ratios, _inference_ratios, _multitask_ratios, _other_ratios):
        ratios.update(part(rows))
    return ratios


def _step_ratios(rows):
    """MoA against the adapter, the merged LoRA, the MoA loop, the cached epochs, the methods
    against LoRA and the backbones against AST."""
    def step(name):  # interleaved measurement when there is one
        return median_of(rows, f"{name}: train step (interleaved)") or median_of(rows, f"{name}: train step")

    ratios = {
        "soft_moa_n15_vs_adapter": ratio_of(step("soft_moa N=15"), step("adapter bottleneck MHSA RR128")),
        "dense_moa_n15_vs_adapter": ratio_of(step("dense_moa N=15"), step("adapter bottleneck MHSA RR128")),
        "lora_merged_vs_plain": ratio_of(median_of(rows, "forward, LoRA merged"),
                                         median_of(rows, "forward, plain backbone")),
    }
    loops = {kind: ratio_of(median_of(rows, f"{kind}_moa N=15 loop"),
                            median_of(rows, f"{kind}_moa N=15 batched")) for kind in ("dense", "soft")}
    # Dense-MoA: the reference's loop runs every expert over all tokens. (Soft-MoA's experts see
    # only the N*p slots, so its loop costs little either way: reported as the _soft key.)
    ratios["moa_loop_vs_batched_n15"] = loops["dense"]
    ratios["moa_loop_vs_batched_n15_dense"] = loops["dense"]
    ratios["moa_loop_vs_batched_n15_soft"] = loops["soft"]
    for method in CACHED_METHODS:
        epochs = {r["cached"]: r["median_s"] for r in rows if r["suite"] == "cache" and r.get("method") == method}
        ratios[f"{method}_cache_epoch_speedup"] = ratio_of(epochs.get(False), epochs.get(True))
    for r in rows:
        if r["suite"] == "vs_lora" and r["method"] != "lora":
            key = r["method"].replace(",", "_").replace(" ", "_")
            ratios[f"{key}_vs_lora_train_step"] = r["ratio_median"]
        if r["suite"] == "backbones" and not r["base"]:
            key = r["backbone"].replace(" ", "_").replace(".", "").replace("-", "_")
            ratios[f"{key}_vs_ast_forward"] = r["ratio_median"]
    return ratios


def _data_ratios(rows):
    """Shards against files, the first batch, classify's memory, preparation."""
    ratios = {}
    data = {r.get("scale"): r["median_s"] for r in rows if r["suite"] == "data" and "scale" in r}
    reads = {r["kind"]: r for r in rows if r["suite"] == "data" and r.get("kind")}
    if "files/decode" in reads and "shards/decode" in reads:
        ratios["shards_vs_files_opens_per_clip"] = ratio_of(reads["files/decode"]["opens_per_clip"],
                                                            reads["shards/decode"]["opens_per_clip"])
    for kind in ("shards/decode", "shards/fbank", "files/decode", "files/fbank"):
        if kind in reads:
            ratios[f"{kind.replace('/', '_')}_clips_per_s"] = reads[kind]["clips_per_s"]
    if "write" in reads:
        ratios["shard_write_clips_per_s"] = reads["write"]["clips_per_s"]
    if "shards/decode" in reads:
        ratios["shuffle_buffer_peak_mb"] = reads["shards/decode"]["buffer_peak_mb"]
    ratios["first_batch_10x_data"] = ratio_of(data.get(10), data.get(1))
    memory = {(r.get("protocol"), r.get("seconds")): r["peak_mem_mb"] for r in rows
              if r["suite"] == "classify"}
    ratios["classify_memory_1h_vs_10s"] = ratio_of(memory.get(("first", 3600)), memory.get(("first", 10)))
    ratios["classify_memory_5min_vs_10s_sliding"] = ratio_of(memory.get(("sliding", 300)),
                                                             memory.get(("sliding", 10)))
    full = [r for r in rows if r["suite"] == "prepare_full"]
    if full:
        ratios["prepare_full_s"] = full[0]["median_s"]
        ratios["prepare_full_peak_mb"] = full[0]["peak_mem_mb"]
        ratios["manifest_rows_dataset_mb"] = full[1]["peak_mem_mb"]
        ratios["manifest_rows_shard_table_mb"] = full[2]["peak_mem_mb"]
    prepared = [r["files_per_s"] for r in rows if r["suite"] == "prepare"]
    ratios["prepare_files_per_s"] = prepared[0] if prepared else None
    return ratios


def _inference_ratios(rows):
    """onnxruntime against eager, eager attention against SDPA, gradient checkpointing's memory."""
    ratios = {}
    ratios["onnxruntime_vs_eager_batch1"] = ratio_of(
        median_of(rows, "adapter conformer Pfeiffer, batch 1: onnxruntime"),
        median_of(rows, "adapter conformer Pfeiffer, batch 1: eager"))
    ratios["eager_vs_sdpa_full_ft_train_step"] = ratio_of(
        median_of(rows, "full_ft [eager attention]: train step"), median_of(rows, "full_ft: train step"))
    peaks = {r["name"]: r["peak_mem_mb"] for r in rows if r["suite"] == "methods"}
    for method, base in (("full_ft", "full_ft"), ("adapter", "adapter conformer Pfeiffer"),
                         ("lora", "lora")):
        ratios[f"gradient_checkpointing_peak_mem_{method}"] = ratio_of(
            peaks.get(f"{base} [gradient checkpointing]: train step"), peaks.get(f"{base}: train step"))
    return ratios


def _multitask_ratios(rows):
    """Several tasks on one backbone against one task's model and separate models."""
    ratios = {}
    multitask = {r["key"]: r for r in rows if r["suite"] == "multitask"}
    if multitask:
        one, four, every, mixed = (multitask[k] for k in ("one", "separate", "every", "mixed"))

        def paired(num, den):  # the median over rounds of the ratio within each round
            return statistics.median(a / b for a, b in zip(num["round_s"], den["round_s"]))

        ratios["multitask_every_task_vs_one_task"] = paired(every, one)
        ratios["multitask_every_task_vs_separate_models"] = paired(every, four)
        ratios["multitask_mixed_batch_vs_one_task"] = paired(mixed, one)
        ratios["separate_models_vs_one_task"] = paired(four, one)
        ratios["multitask_weights_vs_one_model"] = ratio_of(every["weights_mb"], one["weights_mb"])
        ratios["separate_models_weights_vs_one_model"] = ratio_of(four["weights_mb"], one["weights_mb"])
        for key, r in (("every_task", every), ("mixed_batch", mixed)):
            if r["peak_mem_mb"] is not None and one["peak_mem_mb"] is not None:
                ratios[f"multitask_{key}_memory_vs_one_model"] = ratio_of(
                    r["weights_mb"] + r["peak_mem_mb"], one["weights_mb"] + one["peak_mem_mb"])
    return ratios


def _other_ratios(rows):
    """int8, the compile cache, batching, compile and the reference pairs."""
    ratios = {}
    int8 = {(r.get("batch"), r["kind"]): r for r in rows if r["suite"] == "int8"}
    for batch in INT8_BATCHES:
        eager = int8.get((batch, "eager fp32"))
        for kind, key in (("onnxruntime int8", "int8"), ("onnxruntime fp32", "onnx_fp32")):
            if eager and (batch, kind) in int8:  # throughput / fp32 eager's, paired per round
                ratios[f"{key}_throughput_vs_fp32_eager_batch{batch}"] = statistics.median(
                    e / q for e, q in zip(eager["round_s"], int8[batch, kind]["round_s"]))
    starts = {r["kind"]: r for r in rows if r["suite"] == "compile_cache"}
    if starts:
        ratios["compile_cache_second_vs_first_start"] = ratio_of(starts["second"]["median_s"],
                                                                 starts["first"]["median_s"])
    batching = {r["kind"]: r for r in rows if r["suite"] == "batching"}
    if batching:
        ratios["dynamic_batching_padding"] = batching["dynamic"]["padding"]
        ratios["fixed_batches_padding"] = batching["fixed"]["padding"]
        ratios["dynamic_vs_fixed_batches_epoch"] = statistics.median(
            d / f for d, f in zip(batching["dynamic"]["round_s"], batching["fixed"]["round_s"]))
    ratios.update(_long_audio_ratios(rows))
    demo = int8.get((None, "demo int8"))
    if demo:
        ratios["int8_top1_agreement_demo"] = demo["top1_agreement"]
        ratios["int8_max_prob_difference_demo"] = demo["max_abs_difference"]
    compiled = {(r["pair"], r["phase"], r["kind"]): r["median_s"] for r in rows if r["suite"] == "compile"}
    for (pair, phase, kind), seconds in compiled.items():
        if kind == "compiled":
            key = "compile_vs_eager_{}_{}".format(pair.replace(" ", "_").replace("=", ""),
                                                  "train_step" if phase == "train" else phase)
            ratios[key] = ratio_of(seconds, compiled.get((pair, phase, "eager")))
    for r in rows:
        if r["suite"] == "reference":
            key = "reference_{}_{}_{}".format(
                r["pair"].replace(" ", "_").replace("=", ""), r["phase"].replace(" ", "_"), r["precision"])
            ratios[key] = r["ratio_median"]
    return ratios


def _long_audio_ratios(rows):
    """RTF of bf16 and int8 over fp32's (shared features, batches of 8), paired per round, and the
    fastest of the two."""
    runs = {(r["precision"], r["features"], r["batch"]): r for r in rows
            if r["suite"] == "long_audio" and "precision" in r}
    base = runs.get(("fp32", "shared", 8))
    ratios = {}
    for precision in ("bf16", "int8"):
        other = runs.get((precision, "shared", 8))
        if base and other:  # RTF ratio = fp32's time / its time
            ratios[f"long_audio_{precision}_vs_fp32_rtf"] = statistics.median(
                b / o for b, o in zip(base["round_s"], other["round_s"]))
    if ratios:
        ratios["long_audio_fastest_vs_fp32_rtf"] = max(ratios.values())
    return ratios


def target_of(key):
    """The target of a ratio key, or ''."""
    if key.startswith("reference_"):
        for (phase, precision), target in REFERENCE_TARGETS.items():
            if key.endswith(f"_{phase}_{precision}"):
                return target
    return TARGETS.get(key, "")
