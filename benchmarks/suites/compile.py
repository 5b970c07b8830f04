"""The ``compile`` suite (eager against ``torch.compile``) and ``compile_cache`` (compiled start-up
with a fresh and a warm inductor cache)."""

import argparse
import gc
import json
import os
import statistics
import sys
import time

import speechbrain as sb
import torch

from benchmarks.common import result, synchronize
from benchmarks.models import FSC_YAML, METHODS, REPO, build_hparams, make_brain, random_batch, time_steps
from benchmarks.suites.reference import REFERENCE_PAIRS
from petl_modules.training.recipe import parameter_report

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
