"""Inference suites: ``merge`` (LoRA merged into the backbone), ``onnx`` (onnxruntime against
eager) and ``classify`` (peak memory on long files)."""

import time

import torch

from benchmarks.common import PeakMemory, result, synchronize, timed
from benchmarks.models import build_hparams, random_batch
from petl_modules.training.recipe import parameter_report

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
