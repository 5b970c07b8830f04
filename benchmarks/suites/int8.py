"""The ``int8`` suite: int8 inference (the ONNX graph quantised by onnxruntime) against fp32, speed
and agreement on a model the demo trained."""

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import result, timed
from benchmarks.models import REPO, build_hparams

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
        INT8_OPSET,
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
    export_graph(model, lobe, paths["onnxruntime fp32"])  # the fp32 export's default opset
    traced = args.workdir / "int8_suite_traced.onnx"
    export_graph(model, lobe, traced, INT8_OPSET)  # as the int8 export traces it
    quantize_int8(traced, paths["onnxruntime int8"])
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


def demo_model(args):
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

    model_dir, backbone, clips = demo_model(args)
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
