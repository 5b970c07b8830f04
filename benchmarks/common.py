"""Measuring, shared by the suites: timed calls, peak memory, one result row, rounds taken in
turn, and the machine a run was on."""

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import speechbrain as sb
import torch
import transformers

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


def read_status_mb(field):
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MB, or None."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    return None


def trim_memory():
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
        trim_memory()  # what earlier blocks freed goes back to the system first
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
            self.peak_mb = read_status_mb("VmHWM") - self.baseline_mb
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
