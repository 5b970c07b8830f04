"""Preparation suites: ``prepare`` (your own data, ``recipes/AudioFolder``) and ``prepare_full``
(AudioSet's full lists)."""

import json
import os
import statistics
import sys
import time

from benchmarks.common import result
from benchmarks.models import REPO, load_recipe

PREPARE_FILES = 20000


def suite_prepare(args):
    """Files per second of ``prepare_audiofolder`` on generated folder-per-class data."""
    import numpy as np
    import soundfile as sf

    count = 500 if args.quick else PREPARE_FILES
    root = args.workdir / f"prepare_{count}"
    signal = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype("float32")
    for k in range(count):
        path = root / f"class{k % 10}" / f"{k}.wav"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), signal, 16000, subtype="PCM_16")
    recipe = load_recipe("AudioFolder")
    options = {"data_folder": str(root), "split_seed": 0, "valid_fraction": 0.1,
               "test_fraction": 0.1}
    times = []
    for run in range(args.warmup + max(2, args.steps)):
        start = time.perf_counter()
        recipe.prepare_audiofolder(options, args.workdir / f"prepare_manifests_{run}")
        times.append(time.perf_counter() - start)
    kept = times[args.warmup:]
    return [result("prepare", f"prepare {count} files (AudioFolder)", kept, None, None, files=count,
                   files_per_s=count / statistics.median(kept))]


# The AudioSet lists' sizes: balanced, unbalanced, eval segments.
FULL_LISTS = {"balanced_train_segments": 22160, "unbalanced_train_segments": 2041789,
              "eval_segments": 20371}
PREPARE_FULL_SCRIPT = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from petl_modules.training.prepare import peak_memory_mb
def rss():
    gc.collect()
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
import audioset_prepare as prep
from petl_modules.training.recipe import load_manifest
from petl_modules.model.task import Task
from petl_modules.training.shards import SampleTable
out = {"imports_mb": rss()}
options = {"data_folder": sys.argv[2], "subset": "full", "max_missing": 0.5, "check_headers": False}
names = prep.options_from_data(options)["class_names"]
start = time.perf_counter()
prep.prepare_audioset(options, sys.argv[3], names)
out["prepare_s"] = time.perf_counter() - start
out["prepare_peak_mb"] = peak_memory_mb()
before = rss()
start = time.perf_counter()
dataset = load_manifest(sys.argv[3] + "/train.csv", sys.argv[2])
out["dataset_s"], out["dataset_mb"], out["rows"] = time.perf_counter() - start, rss() - before, len(dataset)
del dataset
before = rss()
index = json.load(open(sys.argv[4] + "/shards.json"))
start = time.perf_counter()
table = SampleTable(sys.argv[4], index, ["train"], names, Task.of("multilabel"))
out["table_s"], out["table_mb"] = time.perf_counter() - start, rss() - before
print(json.dumps(out))
"""


def suite_prepare_full(args):
    """AudioSet's full lists (2M segments; ``--quick``: 20k) prepared as ``recipes/AudioSet`` does:
    the lists parsed, the audio folder listed once, every segment looked up, manifests and missing
    clip counts written, in a fresh process; 85% of the files present (empty files: at this size
    the headers are not read). Then the memory of the 2M-row training manifest as SpeechBrain's
    ``DynamicItemDataset`` and as a shard table (``SampleTable``, what ``--shards`` holds)."""
    import csv
    import subprocess

    import numpy as np

    scale = 0.01 if args.quick else 1.0
    root = args.workdir / "audioset_full"
    rng = np.random.default_rng(0)
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([k, f"/m/0c{k:04d}", f"Class {k}"] for k in range(527))
    shard_rows_ = []
    started = time.perf_counter()
    created = 0
    for name, count in FULL_LISTS.items():
        count = max(100, int(count * scale))
        ids = ["".join(row) for row in chars[rng.integers(0, len(chars), size=(count, 11))]]
        labels = rng.integers(0, 527, size=(count, 3))
        with open(root / f"{name}.csv", "w") as stream:
            stream.write(f"# Segments csv created (benchmark)\n# num_ytids={count}, num_segs={count}\n"
                         "# YTID, start_seconds, end_seconds, positive_labels\n")
            for k, ytid in enumerate(ids):
                mids = ",".join(f"/m/0c{c:04d}" for c in sorted(set(labels[k][: 1 + k % 3])))
                stream.write(f'{ytid}, {10 * (k % 30)}.000, {10 * (k % 30) + 10}.000, "{mids}"\n')
        present = rng.random(count) < 0.85
        for k in np.flatnonzero(present):
            folder = root / "audios" / name / f"part{k // 50000:02d}"
            if k % 50000 == 0 or not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(folder / f"Y{ids[k]}.wav", os.O_CREAT | os.O_WRONLY, 0o644))
            created += 1
        if name == "unbalanced_train_segments":
            shard_rows_ = [(ids[k], ";".join(f"Class {c}" for c in sorted(set(labels[k][: 1 + k % 3]))))
                           for k in np.flatnonzero(present)]
    generated_s = time.perf_counter() - started
    shards = args.workdir / "audioset_full_table"
    (shards / "train").mkdir(parents=True, exist_ok=True)
    with open(shards / "train" / "samples.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["shard", "key", "ID", "label", "duration", "seg_start", "seg_end"])
        writer.writerows([k // 1000, f"{k:09d}", ytid, label, "10.000", "", ""]
                         for k, (ytid, label) in enumerate(shard_rows_))
    (shards / "shards.json").write_text(json.dumps({"parts": {"train": {
        "table": "train/samples.csv",
        "shards": [{"file": f"train/train-{k:06d}.tar"} for k in range(len(shard_rows_) // 1000 + 1)]}}}))
    proc = subprocess.run([sys.executable, "-c", PREPARE_FULL_SCRIPT, str(REPO / "recipes" / "AudioSet"),
                           str(root), str(args.workdir / "audioset_full_manifests"), str(shards)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode:
        raise RuntimeError(f"prepare_full failed: {proc.stderr[-2000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    segments = sum(max(100, int(c * scale)) for c in FULL_LISTS.values())
    return [result("prepare_full", f"prepare AudioSet full: {segments} segments, {created} files",
                   [found["prepare_s"]], found["prepare_peak_mb"] - found["imports_mb"], None, segments=segments,
                   files=created, imports_mb=found["imports_mb"], generated_s=generated_s),
            result("prepare_full", f"train manifest as a DynamicItemDataset: {found['rows']} rows",
                   [found["dataset_s"]], found["dataset_mb"], None, rows=found["rows"]),
            result("prepare_full", f"the same rows as a shard table: {len(shard_rows_)} rows",
                   [found["table_s"]], found["table_mb"], None, rows=len(shard_rows_))]
