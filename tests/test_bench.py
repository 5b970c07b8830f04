"""benchmarks/bench.py --quick on a tiny AST: it runs every suite and reports every ratio.

Timings are never asserted (they belong to the benchmark, on a named machine)."""

import argparse
import importlib.util
import json
import math

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow  # the quick benchmark: every suite end to end

RESULT_KEYS = {"suite", "name", "median_s", "min_s", "peak_mem_mb", "trainable_params"}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_quick_benchmark_reports_every_suite_and_ratio(tmp_path):
    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--threads=1", f"--json={tmp_path / 'out.json'}",
                    f"--markdown={tmp_path / 'out.md'}"])
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "out.json").read_text())

    assert set(out) == {"machine", "results", "ratios"}
    for key in ("cpu", "threads", "torch", "transformers", "gpu", "command"):
        assert key in out["machine"]
    assert {row["suite"] for row in out["results"]} == set(bench.SUITES)
    for row in out["results"]:
        assert RESULT_KEYS <= set(row)
        assert 0 <= row["min_s"] <= row["median_s"]
    methods = {row["name"] for row in out["results"] if row["suite"] == "methods"}
    for name in ("full_ft", "linear", "bitfit", "lora", "prefix_tuning", "dense_moa N=15",
                 "soft_moa N=15", "adapter bottleneck MHSA RR128"):
        assert f"{name}: train step" in methods and f"{name}: forward" in methods
    for key in bench.RATIO_KEYS:
        assert key in out["ratios"] and math.isfinite(out["ratios"][key]) and out["ratios"][key] > 0
    report = (tmp_path / "out.md").read_text()
    assert "## methods" in report and "linear_cache_epoch_speedup" in report


def test_quick_vs_lora_and_backbones_suites_give_a_ratio_per_method_and_backbone(tmp_path):
    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--quick", "--threads=1", "--suite=vs_lora,backbones", "--steps=1",
                          "--rounds=2", f"--markdown={tmp_path / 'out.md'}"])
    finally:
        torch.set_num_threads(threads)
    rows = {row["suite"]: [] for row in out["results"]}
    for row in out["results"]:
        rows[row["suite"]].append(row)
        assert len(row["round_s"]) == 2 and row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
    assert sorted(row["method"] for row in rows["vs_lora"]) == sorted(bench.LORA_RATIO_GROUP)
    assert [row["base"] for row in rows["backbones"]] == [True, False, False]
    ratios = out["ratios"]
    vs_lora = [key for key in ratios if key.endswith("_vs_lora_train_step")]
    vs_ast = [key for key in ratios if key.endswith("_vs_ast_forward")]
    assert len(vs_lora) == len(bench.LORA_RATIO_GROUP) - 1 and len(vs_ast) == 2
    assert all(math.isfinite(ratios[key]) and ratios[key] > 0 for key in vs_lora + vs_ast)
    assert "## vs_lora" in (tmp_path / "out.md").read_text()


def test_int8_suite_reports_speed_and_agreement(tiny_ast, tmp_path, monkeypatch):
    """The int8 suite on the quick tiny AST; the demo model replaced by a tiny model folder and
    three generated clips (a real demo run takes minutes)."""
    import numpy as np
    import soundfile

    from test_interop import petl_folder

    bench = load_bench()
    folder = petl_folder("adapter", tiny_ast, tmp_path)
    clips = []
    for k in range(3):
        clips.append(str(tmp_path / f"clip{k}.wav"))
        soundfile.write(clips[-1], (0.1 * np.random.default_rng(k).standard_normal(12000)).astype("float32"), 16000)
    from benchmarks.suites import int8  # where the suite looks the demo model up

    monkeypatch.setattr(int8, "demo_model", lambda args: (folder, tiny_ast, clips))
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--quick", "--suite=int8", "--threads=1"])
    finally:
        torch.set_num_threads(threads)
    kinds = [(row.get("batch"), row["kind"]) for row in out["results"]]
    assert kinds == [(b, k) for b in (1, 8) for k in ("eager fp32", "onnxruntime fp32", "onnxruntime int8")] \
        + [(None, "demo fp32"), (None, "demo int8")]
    for batch in (1, 8):
        assert out["ratios"][f"int8_throughput_vs_fp32_eager_batch{batch}"] > 0
    assert 0 <= out["ratios"]["int8_top1_agreement_demo"] <= 1
    assert 0 < out["ratios"]["int8_max_prob_difference_demo"] < 0.05
    assert out["results"][-1]["clips"] == 3


def test_batching_suite_reports_padding_and_epoch_ratio():
    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--quick", "--suite=batching", "--threads=1", "--steps=1", "--warmup=0",
                          "--batching_utterances=16"])
    finally:
        torch.set_num_threads(threads)
    rows = {row["kind"]: row for row in out["results"]}
    assert set(rows) == {"dynamic", "fixed"} and rows["dynamic"]["mean_batch"] >= 1
    assert 0 <= out["ratios"]["dynamic_batching_padding"] < out["ratios"]["fixed_batches_padding"]
    assert out["ratios"]["dynamic_vs_fixed_batches_epoch"] > 0


@pytest.mark.slow
def test_long_audio_suite_reports_real_time_factors_and_hops(tmp_path):
    bench = load_bench()
    threads = torch.get_num_threads()
    args = argparse.Namespace(threads=1, workdir=tmp_path, quick=True, long_audio_seconds=30, rounds=2)
    try:
        rows = bench.SUITE_FUNCTIONS["long_audio"](args)
    finally:
        torch.set_num_threads(threads)
    assert all(RESULT_KEYS <= set(row) for row in rows)
    runs = [r for r in rows if "precision" in r]
    assert [(r["precision"], r["features"]) for r in runs] == [
        (p, f) for p in ("fp32", "bf16", "int8") for f in ("per window", "shared")] + [("int8", "shared")]
    assert [r["batch"] for r in runs] == [8] * 6 + [1]  # int8 also at batch 1
    assert all(len(r["round_s"]) == 2 and r["min_s"] <= r["wall_s"] for r in runs)
    ratios = bench.compute_ratios(rows)
    by_round = [[r["round_s"][i] for r in runs] for i in range(2)]
    expected = sorted(times[1] / times[5] for times in by_round)  # fp32 / int8, shared, batch 8
    assert ratios["long_audio_int8_vs_fp32_rtf"] == pytest.approx(sum(expected) / 2)
    assert ratios["long_audio_fastest_vs_fp32_rtf"] == max(ratios["long_audio_bf16_vs_fp32_rtf"],
                                                           ratios["long_audio_int8_vs_fp32_rtf"])
    assert all(r["rtf"] > 0 and r["top1_same_as_fp32"] for r in runs)
    assert [r["max_prob_diff_vs_fp32"] for r in runs[:2]] == [0.0, 0.0]  # shared features: exact
    hops = [r for r in rows if "hop_s" in r]
    assert [r["hop_s"] for r in hops] == [2.5, 5.0, 10.0] and hops[1]["top1_agreement_vs_5s"] == 1.0
    report = bench.render({}, rows, {})  # the Markdown report has their table
    assert "## long_audio" in report and all(f"| {r['name']} |" in report for r in rows)
