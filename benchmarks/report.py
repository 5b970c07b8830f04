"""The report of a run in Markdown: the machine, one table per suite, the ratios."""

import statistics

from benchmarks.ratios import median_of, ratio_of, target_of

# The suites whose rows (those without a "kind") are shown in the plain table of name, times,
# peak memory and parameters: the default set but methods, and prepare_full.
PLAIN_TABLES = ("moa", "data", "cache", "merge", "classify", "onnx", "prepare", "prepare_full")


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, bool):  # before int: f"{True:,}" is "1"
        return "yes" if value else "no"
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
    for section in (_methods_tables, _reference_table, _compile_tables, _other_tables):
        parts += section(rows)
    parts += ["## ratios", "", markdown_table(
        ["ratio", "value", "target"],
        [[k, v, target_of(k)] for k, v in ratios.items()]), ""]
    return "\n".join(parts)


def _methods_tables(rows):
    """The methods suite: every variant, then the MoA ratio's models taken in turn."""
    parts = []
    methods = [r for r in rows if r["suite"] == "methods"]
    if methods:
        full = median_of(rows, "full_ft: train step")
        lines = []
        for r in methods:
            if not r["name"].endswith(": train step"):
                continue  # (interleaved rows: in the table below)
            name = r["name"][: -len(": train step")]
            fwd = median_of(rows, f"{name}: forward")
            lines.append([name, r["trainable_params"], f"{r['trainable_percent']:.2f}",
                          r["median_s"], r["min_s"], ratio_of(r["median_s"], full), fwd,
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
    return parts


def _reference_table(rows):
    """The reference pairs: our times over the reference's, median and spread over rounds."""
    parts = []
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
    return parts


def _compile_tables(rows):
    """torch.compile against eager, the interleaved rounds (vs_lora, backbones), the compile
    cache."""
    parts = []
    compiled = [r for r in rows if r["suite"] == "compile" and r["kind"] == "compiled"]
    if compiled:
        def eager_of(r):
            return next(e["median_s"] for e in rows if e["suite"] == "compile" and e["kind"] == "eager"
                        and e["pair"] == r["pair"] and e["phase"] == r["phase"])

        parts += ["## compile: torch.compile / eager (medians; first call includes compilation)", "",
                  markdown_table(["method", "phase", "eager (s)", "compiled (s)", "compiled / eager",
                                  "first compiled call (s)", "fell back to eager"],
                                 [[r["pair"], r["phase"], eager_of(r), r["median_s"],
                                   ratio_of(r["median_s"], eager_of(r)), r["first_call_s"],
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
    return parts


def _other_tables(rows):
    """batching, int8, long_audio, multitask, the data suite's reads, then the plain tables."""
    parts = []
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
    long_audio = [r for r in rows if r["suite"] == "long_audio"]
    if long_audio:
        parts += ["## long_audio: real-time factor (audio seconds / wall seconds)", "", markdown_table(
            ["name", "batch", "audio (s)", "wall (s)", "RTF", "peak RSS (MB)",
             "top-1 same as fp32 / 5 s hop", "max |prob diff|"],
            [[r["name"], r.get("batch"), r["audio_s"], r["wall_s"], r["rtf"], r.get("peak_rss_mb"),
              r.get("top1_same_as_fp32", r.get("top1_agreement_vs_5s")),
              r.get("max_prob_diff_vs_fp32", r.get("max_prob_diff_vs_5s"))] for r in long_audio]), ""]
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
    for suite in PLAIN_TABLES:
        found = [r for r in rows if r["suite"] == suite and not r.get("kind")]
        if found:
            parts += [f"## {suite}", "", markdown_table(
                ["name", "median (s)", "min (s)", "peak mem (MB)", "params"],
                [[r["name"], r["median_s"], r["min_s"], r["peak_mem_mb"], r["trainable_params"]]
                 for r in found]), ""]
    return parts
