#!/usr/bin/env python3
"""Long recordings: real-time factor of classifying a long file with sliding windows.

Usage (from the repository root)::

    python benchmarks/bench.py --suite=long_audio --threads=2          # a one-hour file
    python benchmarks/suites/long_audio.py --seconds=120 --threads=2          # this suite alone, shorter

The AST-base shape (``transformers.ASTConfig`` with 1000 frames: 10 s windows), random weights,
LoRA, ``eval_windows: sliding`` at a 5 s hop, mean pooling, batches of 8 windows: one generated
file of ``seconds`` (16 kHz, noise and tones) through ``PETLClassifier.classify_files`` (the
command line's path) in fp32, bf16 (autocast) and int8 (the ONNX graph quantised by onnxruntime),
each after a warm-up run, with the windows' features computed once per chunk
(``petl_modules.model.long_audio``, ``shared``) and window by window (``per window``), in turn;
int8 also at batch 1. Real-time factor (RTF) = audio seconds / wall seconds; peak RSS above the
process's RSS before the run. Then the windows' inputs alone (read + fbank, no model) over a
one-hour file (``--quick``: a minute), both ways, with their peak RSS; and the hop trade-off:
bf16 at hops of 2.5, 5 and 10 s over ``HOP_FILES`` files of ``HOP_FILE_SECONDS`` (other tones):
time, and top-1 agreement and max |probability difference| with the 5 s hop.
"""

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import transformers

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from petl_modules.methods import method_config  # noqa: E402
from petl_modules.model.long_audio import file_windows  # noqa: E402
from petl_modules.model.petl_model import PETLClassifier  # noqa: E402
from petl_modules.model.windows import EvalProtocol  # noqa: E402

FRAMES = 1000  # 10 s windows
HOP_SECONDS = 5.0
HOPS = (2.5, 5.0, 10.0)
HOP_FILES = 4
HOP_FILE_SECONDS = 40.0  # 7 windows at a 5 s hop
PRECISIONS = ("fp32", "bf16", "int8")
BATCH = 8


def rss_mb(field="VmRSS"):
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def peak_rss(found):
    """Peak RSS of the block above the RSS before it (``VmHWM`` reset by ``clear_refs``), in
    ``found["peak_mb"]``; wall seconds in ``found["seconds"]``."""
    gc.collect()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    before = rss_mb()
    start = time.perf_counter()
    yield found
    found["seconds"] = time.perf_counter() - start
    found["peak_mb"] = round(rss_mb("VmHWM") - before, 1)


def write_recording(path, seconds, seed=0, block_seconds=60):
    """A 16 kHz 16-bit wav of noise with a tone changing every 7 s, written block by block."""
    rng = np.random.default_rng(seed)
    rate, total = 16000, int(seconds * 16000)
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as stream:
        for start in range(0, total, block_seconds * rate):
            t = np.arange(start, min(total, start + block_seconds * rate)) / rate
            tone = 0.2 * np.sin(2 * np.pi * (200 + 100 * (t // 7 % 17) + 37 * seed) * t)
            stream.write((tone + 0.05 * rng.standard_normal(t.shape[0])).astype("float32"))
    return path


def ast_base_model(workdir, quick=False):
    """LoRA on the AST-base shape (random weights, 1000 frames), sliding windows at a 5 s hop."""
    folder = workdir / ("long_audio_ast_tiny" if quick else "long_audio_ast_base")
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = transformers.ASTConfig(max_length=FRAMES)
        if quick:
            from petl_modules.tiny import tiny_ast_config
            config = tiny_ast_config(max_length=FRAMES)
        transformers.ASTModel(config).save_pretrained(folder)
    torch.manual_seed(0)
    method = method_config("lora", {"reduction_rate": 16} if quick else {})
    return PETLClassifier.create(folder, method, [f"class{i}" for i in range(10)],
                                 evaluation=EvalProtocol("sliding", HOP_SECONDS), max_frames=FRAMES)


def classify_run(model, files, shared, batch_size=BATCH):
    model.share_window_features = shared
    found = {}
    with peak_rss(found):
        results, errors = model.classify_files(files, batch_size=batch_size)
    assert not errors, errors
    found["probabilities"] = torch.stack([r["probabilities"] for r in results])
    return found


ALL_CASES = [(p, shared, BATCH) for p in PRECISIONS for shared in (False, True)] + [("int8", True, 1)]


def parse_cases(text, option="--cases"):
    """``--cases``: comma-separated ``precision:features:batch`` (features ``shared`` or
    ``window``), e.g. ``fp32:shared:8,int8:shared:8``; empty: every case."""
    if not text:
        return ALL_CASES
    cases = []
    for item in text.split(","):
        parts = item.split(":")
        batch = parts[2] if len(parts) == 3 else ""
        if (len(parts) != 3 or parts[0] not in PRECISIONS or parts[1] not in ("shared", "window")
                or not batch.isdigit() or int(batch) < 1):
            raise SystemExit(f"{option}: '{item}' is not precision:features:batch with precision one "
                             f"of {', '.join(PRECISIONS)}, features shared or window and a batch of 1 or more.")
        cases.append((parts[0], parts[1] == "shared", int(batch)))
    cases = list(dict.fromkeys(cases))  # a case named twice runs once per round
    if cases[0][0] != "fp32":
        raise SystemExit(f"{option}: put an fp32 case first (the other rows are compared with it).")
    return cases


def rtf_rows(model, path, seconds, workdir, warmup_file, rounds=1, cases=None):
    """Per precision a warm-up run on ``warmup_file`` (kernels, onnxruntime's arena); then
    ``rounds`` rounds, each running the file once per case in turn: every precision with per-window
    and shared features (batches of 8), int8 also at batch 1. Rows: median and min wall time,
    the RTF of the median, each round's time (``round_s``, for the ratios within a round).
    ``cases``: a subset of ``ALL_CASES``, fp32 first (the reference of the agreement columns)."""
    os.environ.setdefault("PETL_AST_HOME", str(workdir / "home"))  # the int8 graph's cache
    cases = cases or ALL_CASES
    graphs = {}
    for precision in dict.fromkeys(case[0] for case in cases):
        _use_precision(model, precision, graphs)
        classify_run(model, [warmup_file], True)
    found = {case: [] for case in cases}
    for _ in range(rounds):
        for case in cases:
            _use_precision(model, case[0], graphs)
            found[case].append(classify_run(model, [path], case[1], case[2]))
            found[case][-1]["precision"] = model.precision  # bf16 where the machine has it
    reference = found[cases[0]][0]["probabilities"]  # fp32 (per window by default)
    rows = []
    for (precision, shared, batch_size), runs in found.items():
        walls = [r["seconds"] for r in runs]
        wall = statistics.median(walls)
        rows.append({"suite": "long_audio", "precision": precision, "precision_run": runs[0]["precision"],
                     "features": "shared" if shared else "per window",
                     "batch": batch_size, "audio_s": seconds, "wall_s": round(wall, 2),
                     "min_s": round(min(walls), 2), "round_s": [round(w, 3) for w in walls],
                     "rtf": round(seconds / wall, 3), "peak_rss_mb": max(r["peak_mb"] for r in runs),
                     "max_prob_diff_vs_fp32": max(float((r["probabilities"] - reference).abs().max())
                                                  for r in runs),
                     "top1_same_as_fp32": all(torch.equal(r["probabilities"].argmax(-1), reference.argmax(-1))
                                              for r in runs)})
        print(json.dumps(rows[-1]), flush=True)
    model.set_speed("fp32")
    return rows


def _use_precision(model, precision, graphs):
    """fp32 or bf16 (``set_speed``), or int8: the model's onnxruntime graph, loaded once (a new
    session would grow its arena again in the timed run)."""
    from petl_modules.sharing.int8 import use_int8

    if precision != "int8":
        model.set_speed(precision)
    elif "int8" not in graphs:
        graphs["int8"] = use_int8(model).int8
    else:
        model.int8, model.precision = graphs["int8"], "int8"


def inputs_rows(model, path, seconds, rounds=2):
    """The windows' inputs alone (read + features) over ``path``, both ways, in turn for
    ``rounds`` rounds (median and min wall time, the largest peak RSS)."""
    found = {shared: [] for shared in (False, True)}
    for _ in range(rounds):
        for shared in found:
            run = {}
            with peak_rss(run):
                run["windows"] = sum(1 for _ in file_windows(path, model.input_processor, model.protocol,
                                                             BATCH, shared))
            found[shared].append(run)
    rows = []
    for shared, runs in found.items():
        wall = statistics.median(r["seconds"] for r in runs)
        rows.append({"suite": "long_audio", "what": "windows' inputs only (read + fbank)",
                     "features": "shared" if shared else "per window", "audio_s": seconds,
                     "windows": runs[0]["windows"], "wall_s": round(wall, 2),
                     "min_s": round(min(r["seconds"] for r in runs), 2), "rtf": round(seconds / wall, 1),
                     "peak_rss_mb": max(r["peak_mb"] for r in runs), "rounds": rounds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def hop_rows(model, files, seconds, precision="bf16"):
    model.set_speed(precision)
    runs = {}
    for hop in HOPS:
        model.protocol = EvalProtocol("sliding", hop)
        runs[hop] = classify_run(model, files, True)
    model.protocol = EvalProtocol("sliding", HOP_SECONDS)
    model.set_speed("fp32")
    base = runs[HOP_SECONDS]["probabilities"]
    rows = []
    for hop, run in runs.items():
        rows.append({"suite": "long_audio", "what": f"hop trade-off ({precision})", "hop_s": hop,
                     "files": len(files), "audio_s": seconds, "wall_s": round(run["seconds"], 2),
                     "rtf": round(seconds / run["seconds"], 3),
                     "top1_agreement_vs_5s": float((run["probabilities"].argmax(-1)
                                                    == base.argmax(-1)).float().mean()),
                     "max_prob_diff_vs_5s": float((run["probabilities"] - base).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def suite_long_audio(args):
    """The ``long_audio`` suite of ``benchmarks/bench.py`` (see the module doc); ``args``: ``threads``,
    ``workdir``, ``quick``, and ``long_audio_seconds`` if present (default: one hour)."""
    torch.set_num_threads(args.threads)
    seconds = float(getattr(args, "long_audio_seconds", None) or (60 if args.quick else 3600))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    model = ast_base_model(workdir, args.quick)
    path = write_recording(workdir / f"long_audio_{int(seconds)}s.wav", seconds)
    hour_seconds = 60.0 if args.quick else 3600.0
    hour = write_recording(workdir / f"long_audio_{int(hour_seconds)}s_inputs.wav", hour_seconds)
    rows = inputs_rows(model, hour, hour_seconds)
    each = 12.0 if args.quick else HOP_FILE_SECONDS
    files = [write_recording(workdir / f"long_audio_hop_{k}.wav", each, seed=k + 1) for k in range(HOP_FILES)]
    rows += rtf_rows(model, path, seconds, workdir, files[0], int(getattr(args, "rounds", None) or 1),
                     parse_cases(getattr(args, "long_audio_cases", None)))
    rows += hop_rows(model, files, each * HOP_FILES)
    for row in rows:
        row["name"] = " ".join(str(row.get(k)) for k in ("what", "precision", "features", "hop_s") if k in row)
        row["load_average_at_start"] = load
        row["load_average_at_end"] = os.getloadavg()
        row.setdefault("median_s", row["wall_s"])
        row.setdefault("min_s", row["wall_s"])
        row.update(peak_mem_mb=row.get("peak_rss_mb"), trainable_params=None)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="length of the classified file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="runs of the file per case, in turn")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--cases", default=None,
                        help="precision:features:batch,... (features shared or window; fp32 first), e.g. "
                             "fp32:shared:8,int8:shared:8 (default: every case)")
    parser.add_argument("--quick", action="store_true", help="a tiny AST (a smoke test)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    parse_cases(args.cases)  # a bad list is refused before the recordings are written
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = Path(args.workdir or tmp)
        args.long_audio_seconds = args.seconds
        args.long_audio_cases = args.cases
        rows = suite_long_audio(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
