"""The ``multitask`` suite: several tasks on one frozen backbone against one task's model and
separate models."""

import torch

from benchmarks.common import PeakMemory, read_status_mb, result, timed
from benchmarks.models import build_hparams

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
                      else read_status_mb("VmRSS") - PeakMemory.baseline_mb)
            run()
        activations[key] = None if peak.peak_mb is None else max(0.0, peak.peak_mb - before)
    rows = []
    for key, (name, _) in runs.items():
        rows.append(result("multitask", name, times[key][args.warmup:], activations[key], None,
                           key=key, batch=batch, weights_mb=round(weights[key], 1),
                           round_s=times[key][args.warmup:]))
    return rows
