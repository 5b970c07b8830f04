"""bf16 autocast on CPU (detected, else fp32 with a warning), fp32 softmax statistics in the MoA
routers, torch.compile with an eager fallback, and the benchmark's reference suite skip path."""

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from petl_modules.methods.moa import DenseMoA, SoftMoA
from petl_modules.model import precision as precision_module
from petl_modules.model.precision import EagerFallback, compile_with_fallback, resolve_precision

from conftest import METHOD_FILES, REPO, TINY_BACKBONES, read_results, tiny_method_options


def test_bf16_kept_where_supported_and_fp32_with_a_warning_elsewhere(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": True)
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision(None, "cpu") == "fp32"
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": False)
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "no native bf16 support" in caplog.text and "running in fp32 instead" in caplog.text


def test_bf16_detection_returns_a_bool():
    assert isinstance(precision_module.bf16_supported("cpu"), bool)


@pytest.mark.parametrize("cls", [SoftMoA, DenseMoA])
def test_moa_softmax_statistics_are_fp32_under_bf16_autocast(cls, monkeypatch):
    seen = []
    softmax = torch.softmax

    def recording(x, *args, **kwargs):
        seen.append(x.dtype)
        return softmax(x, *args, **kwargs)

    torch.manual_seed(0)
    moa = cls(32, num_adapters=3, reduction_rate=4)
    x = torch.randn(2, 10, 32)
    expected = moa(x)
    monkeypatch.setattr(torch, "softmax", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moa(x)
    assert seen and all(dtype == torch.float32 for dtype in seen)
    assert torch.allclose(out.float(), expected, atol=0.05, rtol=0.05)


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x)


def test_eager_fallback_warns_once_and_runs_eagerly(caplog):
    eager = Small()

    def broken(*args, **kwargs):
        raise RuntimeError("backend compiler failed")

    wrapper = EagerFallback(broken, eager, "petl_model")
    x = torch.randn(3, 4)
    with caplog.at_level(logging.WARNING):
        out = wrapper(x)
    assert torch.equal(out, eager(x)) and wrapper.failed
    assert "torch.compile failed for module 'petl_model'" in caplog.text
    assert wrapper.linear is eager.linear  # attributes of the original module
    with pytest.raises(RuntimeError):  # an error of the input propagates
        EagerFallback(broken, eager, "x")(torch.randn(3, 5))


# Every method file and every backbone family at least once (pairs taken in turn, the shorter
# list cycled): compiling each on every family would cost minutes of inductor time.
COMPILE_CASES = [(TINY_BACKBONES[k % len(TINY_BACKBONES)], METHOD_FILES[k % len(METHOD_FILES)])
                 for k in range(max(len(TINY_BACKBONES), len(METHOD_FILES)))]


@pytest.mark.slow
@pytest.mark.parametrize("backbone,method", COMPILE_CASES)
def test_compiled_model_gives_the_eager_logits_without_falling_back(backbone, method, tiny_backbones,
                                                                     tmp_path):
    """torch.compile (inductor) of the model a recipe builds, on a padded batch of two lengths:
    no fallback to eager mode, and the eager logits."""
    from petl_modules.training.compose import compose_hparams, load_hparams
    from speechbrain.dataio.batch import PaddedBatch

    method_file = REPO / "hparams" / f"{method}.yaml"
    options = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
               "backbone_source": tiny_backbones[backbone], "max_frames": 64, "clip_seconds": 0.64}
    options.update(tiny_method_options(method_file, backbone))
    hparams = load_hparams(compose_hparams(method_file, REPO / "recipes" / "FSC" / "fsc.yaml", options))
    model, head = hparams["petl_model"].eval(), hparams["classifier"].eval()
    generator = torch.Generator().manual_seed(0)
    process = hparams["backbone"].input_processor
    inputs, lengths = PaddedBatch([{"x": process(0.1 * torch.randn(n, generator=generator))}
                                   for n in (10240, 7000)]).x
    torch._dynamo.reset()
    with torch.no_grad():
        expected = head(*model(inputs, lengths))
        compiled = compile_with_fallback(model, "petl_model")
        got = head(*compiled(inputs, lengths))
    assert isinstance(compiled, EagerFallback) and not compiled.failed
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_precision", REPO / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_reference_suite_skips_with_a_clear_message_without_the_reference_environment(tmp_path, capsys):
    bench = load_bench()
    threads = torch.get_num_threads()
    script = tmp_path / "bench_ref.py"  # wherever the checkout is, a script exists: python is missing
    script.write_text("")
    try:
        out = bench.main(["--suite=reference", "--quick", f"--json={tmp_path / 'out.json'}",
                          f"--reference_python={tmp_path / 'no_python'}", "--reference_git=/nowhere",
                          f"--reference_script={script}"])
    finally:
        torch.set_num_threads(threads)
    assert out["results"] == []
    assert "is not an executable" in out["machine"]["reference_skipped"]
    assert "[reference] skipped:" in capsys.readouterr().err
    saved = json.loads((tmp_path / "out.json").read_text())
    assert set(saved) == {"machine", "results", "ratios"}
    args = bench.parse_args(["--suite=reference"])
    assert bench.reference_environment(args)[0] is None  # no --reference_python: skipped
    assert args.reference_script.endswith(os.path.join("shared", "reference-bench", "bench_ref.py"))


def _run_demo(tmp_path):
    """The demo (FSC, soft_moa, tiny AST) in fp32: what it printed and its output folder."""
    out = tmp_path / "fp32"
    command = [sys.executable, "-m", "petl_modules.demo", f"--output_folder={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout, out


@pytest.mark.slow
@pytest.mark.skipif(not precision_module.bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_demo_in_bf16_reaches_its_fp32_test_accuracy(tmp_path):
    printed, out = _run_demo(tmp_path)
    fp32 = read_results(out / "run")["test_accuracy_mean"]
    ran = re.search(r"\[demo\] Ran: (.*)", printed).group(1)
    import shlex

    command = shlex.split(ran)
    bf16_out = tmp_path / "bf16_run"
    command = [c if not c.startswith("--output_folder=") else f"--output_folder={bf16_out}"
               for c in command] + ["--precision=bf16"]
    proc = subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    bf16 = read_results(bf16_out)["test_accuracy_mean"]
    assert abs(bf16 - fp32) <= 0.02 + 1e-9, (fp32, bf16)


def test_reference_and_compile_ratios_carry_the_issue_targets():
    """compute_ratios names one key per pair, phase and precision (reference) and per method and
    phase (compile, compiled / eager); the reference keys carry their targets."""
    bench = load_bench()
    rows = [bench.result("reference", "lora: train step bf16 / reference fp32", [2.0], None, 1,
                         pair="lora", phase="train step", precision="bf16", ratios=[0.5],
                         ratio_median=0.5, ratio_min=0.5, ratio_max=0.5)]
    for kind, seconds in (("eager", [4.0, 4.2, 3.8]), ("compiled", [3.0, 3.3, 2.7])):
        rows.append(bench.result("compile", f"soft_moa N=15: forward {kind}", seconds, None, 1,
                                 pair="soft_moa N=15", kind=kind, phase="forward"))
    ratios = bench.compute_ratios(rows)
    assert ratios["reference_lora_train_step_bf16"] == 0.5
    assert ratios["compile_vs_eager_soft_moa_N15_forward"] == pytest.approx(3.0 / 4.0)
    assert bench.target_of("reference_lora_train_step_bf16") == "<= 0.6"
    assert bench.target_of("reference_lora_train_step_fp32") == "<= 1.0"
    assert bench.target_of("reference_dense_moa_N15_forward_fp32") == "<= 0.8"
    assert bench.target_of("soft_moa_n15_vs_adapter") == bench.TARGETS["soft_moa_n15_vs_adapter"]


@pytest.mark.slow
def test_compile_suite_times_eager_and_compiled_without_falling_back(tmp_path):
    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--suite=compile", "--quick", "--methods=linear", "--steps=1",
                          "--warmup=0", "--threads=2", f"--markdown={tmp_path / 'out.md'}"])
    finally:
        torch.set_num_threads(threads)
    rows = {(r["kind"], r["phase"]): r for r in out["results"]}
    assert set(rows) == {(k, p) for k in ("eager", "compiled") for p in ("train", "forward")}
    assert rows[("compiled", "train")]["fell_back"] == []  # inductor compiled the model
    assert rows[("compiled", "train")]["first_call_s"] > 0
    assert {"compile_vs_eager_linear_train_step", "compile_vs_eager_linear_forward"} <= set(out["ratios"])
    assert "## compile" in (tmp_path / "out.md").read_text()


def test_compiled_graphs_are_cached_in_the_petl_home_unless_torch_is_told(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "home"))
    compile_with_fallback(torch.nn.Linear(2, 2), "linear")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_with_fallback(torch.nn.Linear(2, 2), "linear")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


COMPILED_RUN = """
import json, torch
from torch._dynamo.utils import counters
from petl_modules.model.precision import compile_with_fallback
torch.manual_seed(0)
model = compile_with_fallback(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()), "m")
model(torch.randn(2, 8))
print(json.dumps(dict(counters["inductor"])))
"""


@pytest.mark.slow
def test_a_second_compiled_run_takes_its_graphs_from_the_cache(tmp_path):
    """Two processes compile the same module: the first compiles (FX graph cache miss) into
    $PETL_AST_HOME/inductor, the second finds it there (a hit, no miss)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PETL_AST_HOME"] = str(tmp_path / "home")
    runs = [json.loads(subprocess.run([sys.executable, "-c", COMPILED_RUN], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0].get("fxgraph_cache_miss", 0) >= 1 and runs[0].get("fxgraph_cache_hit", 0) == 0
    assert runs[1].get("fxgraph_cache_hit", 0) >= 1 and runs[1].get("fxgraph_cache_miss", 0) == 0
    assert any((tmp_path / "home" / "inductor").iterdir())
