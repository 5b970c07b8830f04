"""Write a recipe's prepared data as tar shards (WebDataset format), once, for every method's runs.

Usage (from the repository root)::

    python -m petl_modules.shard RECIPE --data_folder=/data/... OUT [--key=value ...]
        [--audio=original|flac] [--samples_per_shard=1000] [--workers=N]

``RECIPE`` is a folder of ``recipes/`` (``AudioSet``, ``ESC50``, ...); ``--key=value`` are options
of that recipe that decide its data (``--subset=full``, ``--task=multilabel``,
``--skip_bad_files=True``, ...), as on its training command line. The recipe's own preparation
runs first (manifests in ``OUT/manifests``), then every clip of every split (or fold) is written
once: ``OUT/<part>/<part>-000000.tar`` ... (``samples_per_shard`` clips each, in the manifests'
order), ``OUT/<part>/samples.csv`` and the index ``OUT/shards.json``
(``petl_modules.training.shards``). ``--audio=original`` (default) stores each file's bytes as they
came; ``--audio=flac`` stores the part of the file the manifest names, as 16 kHz mono 16-bit FLAC
(what the models read; smaller and faster to read than 44.1 kHz wav). Shards are written by
``--workers`` processes (default: every core), each to a temporary file renamed when complete: an
interrupted command, rerun, keeps the shards it finished.

Then any recipe command takes ``--shards=OUT`` (its data options must be those the shards were
written with; ``--data_folder`` may be left out)::

    python recipes/AudioSet/train.py hparams/lora.yaml --subset=full --shards=OUT
"""

import argparse
import hashlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ruamel.yaml

from petl_modules.paths import hparams_folder, recipes_folder

logger = logging.getLogger("petl_modules.shard")

AUDIO_MODES = ("original", "flac")
PLAN_FILE = ".shard_plan.json"
OBJECT_TAGS = ("!new:", "!name:", "!module:", "!include", "!copy")


class ShardWriteError(RuntimeError):
    """A shard command that cannot run as asked (wrong recipe, option or output folder)."""


# ==================================================================== the recipe's data
def recipe_module(recipe):
    """The module of ``recipes/<recipe>/train.py`` (its ``DATASET_YAML``, ``prepare``,
    ``make_datasets`` and, if the classes come from the data, ``options_from_data``)."""
    folder = recipes_folder() / recipe
    if not (folder / "train.py").is_file():
        known = sorted(p.parent.name for p in recipes_folder().glob("*/train.py"))
        raise ShardWriteError(f"No recipe '{recipe}' (no {folder}/train.py). Recipes: "
                              f"{', '.join(known)}.")
    name = re.sub(r"\W", "_", f"petl_recipe_{recipe}_train_for_shards")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _references(node):
    """The keys a yaml node refers to (``<key>``, ``<key.attribute>``)."""
    text = io.StringIO()
    ruamel.yaml.YAML().dump({"node": node}, text)
    return set(re.findall(r"<([A-Za-z_][\w]*)", text.getvalue()))


def _is_object(node):
    tag = getattr(getattr(node, "tag", None), "value", None) or ""
    if tag.startswith(OBJECT_TAGS):
        return True
    if isinstance(node, dict):
        return any(_is_object(v) for v in node.values())
    if isinstance(node, list):
        return any(_is_object(v) for v in node)
    return False


def data_hparams(yaml_text):
    """The composed options of a recipe run without its objects (no backbone, model or
    optimiser is built): every key that is not an object, nor refers to one, loaded by
    HyperPyYAML (``!ref`` and computed values resolved)."""
    from hyperpyyaml import load_hyperpyyaml

    tree = ruamel.yaml.YAML().load(yaml_text)
    dropped = {key for key in tree if str(key).startswith("__") or _is_object(tree[key])}
    while True:
        more = {key for key in tree if key not in dropped and _references(tree[key]) & dropped}
        if not more:
            break
        dropped |= more
    for key in dropped:
        del tree[key]
    text = io.StringIO()
    ruamel.yaml.YAML().dump(tree, text)
    return load_hyperpyyaml(text.getvalue())


def recipe_hparams(module, overrides, out):
    """The recipe's data options for ``overrides`` (``--key=value`` as a dict), manifests in
    ``out/manifests`` unless ``manifest_folder`` is given: composed as a training run composes
    them (recipe.yaml < a method file < the dataset yaml < the options, the classes from the data
    where the recipe reads them there)."""
    from petl_modules.training.compose import compose_hparams

    overrides = dict(overrides)
    overrides.setdefault("manifest_folder", str(Path(out) / "manifests"))
    method = hparams_folder() / "linear.yaml"  # any method: the data does not depend on it
    text = compose_hparams(method, module.DATASET_YAML, overrides, family="ast")
    found = getattr(module, "options_from_data", None)
    if found is not None:
        text = compose_hparams(method, module.DATASET_YAML,
                               dict(overrides, **found(ruamel.yaml.YAML().load(text))), family="ast")
    return data_hparams(text)


# ==================================================================== parts of the data
def data_parts(module, hparams):
    """``(parts, splits)``: ``parts`` ``{name: DynamicItemDataset}`` holding every clip once,
    ``splits`` ``{"all" | fold: {split: [part names]}}`` (a fold recipe's folds are parts: each
    split of each fold is a union of them where it can be; otherwise the split is a part of its own)."""
    from petl_modules.training.recipe import checked_class_names, fold_list

    folds = fold_list(hparams)
    parts, splits = {}, {}
    for fold in folds:
        datasets = module.make_datasets(hparams, fold)
        checked_class_names(datasets, hparams)
        if fold is None:
            parts.update(datasets)
            splits["all"] = {split: [split] for split in datasets}
            continue
        parts.setdefault(f"fold{int(fold)}", datasets["test"])
        splits[str(int(fold))] = datasets
    ids = {name: set(d.data_ids) for name, d in parts.items()}
    for fold, datasets in list(splits.items()):
        if fold == "all":
            continue
        made = {}
        for split, dataset in datasets.items():
            wanted = set(dataset.data_ids)
            union = [name for name, have in ids.items() if have <= wanted]
            if set().union(*(ids[n] for n in union)) == wanted:
                made[split] = union
            else:  # not a union of folds: written on its own
                name = f"fold{fold}_{split}"
                parts[name], ids[name] = dataset, wanted
                made[split] = [name]
        splits[fold] = made
    return parts, splits


def part_rows(dataset):
    """The clips of a part in manifest order: ``(id, path, label, duration, seg_start, seg_end)``."""
    rows = []
    for uid in dataset.data_ids:
        row = dataset.data[uid]
        rows.append((uid, str(row["wav"]), str(row["label"]), float(row.get("duration") or 0.0),
                     row.get("seg_start") or "", row.get("seg_end") or ""))
    return rows


# ==================================================================== writing
def _written_shard(path):
    """The table rows and size of a shard an earlier run finished (read from its json members)."""
    import tarfile

    table = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.name.endswith(".json"):
                meta = json.loads(tar.extractfile(member).read())
                table.append([member.name.split(".", 1)[0], meta["id"], meta["label"],
                              f"{meta['duration']:.3f}", meta["seg_start"], meta["seg_end"]])
    return table, Path(path).stat().st_size


def _write_shard(task):
    """Writes one tar shard (a worker process's job; kept if an earlier run finished it);
    returns its table rows and size."""
    import numpy as np
    import soundfile as sf
    import webdataset as wds

    from petl_modules.model.audio import load_audio

    path, first_key, rows, audio = task
    path = Path(path)
    if path.is_file():
        return _written_shard(path)
    table = []
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0.0) as writer:
        for n, (uid, source, label, duration, seg_start, seg_end) in enumerate(rows):
            key = f"{first_key + n:09d}"
            if audio == "flac":
                rate = 16000
                start = round(float(seg_start or 0) * rate)
                length = round(duration * rate) if (seg_start or seg_end) else None
                wav = load_audio(source, rate, max_samples=length, start=start).numpy()
                data = io.BytesIO()
                sf.write(data, np.clip(wav, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
                payload, extension = data.getvalue(), "flac"
                duration, seg_start, seg_end = len(wav) / rate, "", ""
            else:
                payload = Path(source).read_bytes()
                extension = Path(source).suffix.lstrip(".").lower() or "audio"
            meta = {"id": uid, "label": label, "duration": duration, "seg_start": seg_start,
                    "seg_end": seg_end}
            writer.write({"__key__": key, extension: payload, "json": json.dumps(meta).encode()})
            table.append([key, uid, label, f"{duration:.3f}", seg_start, seg_end])
    os.replace(tmp, path)
    return table, path.stat().st_size


def write_shards(recipe, out, overrides, audio="original", samples_per_shard=1000, workers=None):
    """Prepares ``recipe``'s data with ``overrides`` and writes it as shards into ``out``;
    returns the index (``shards.json``). Shards already written by an interrupted run of the same
    command are kept."""
    from petl_modules.training.prepare import DATA_REPORT_FILE, OPTIONS_FILE
    from petl_modules.training.run_folder import PLUMBING, write_json_atomic
    from petl_modules.training.shards import INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, PATH_OPTIONS

    if audio not in AUDIO_MODES:
        raise ShardWriteError(f"--audio={audio}: use one of {', '.join(AUDIO_MODES)}.")
    if samples_per_shard < 1:
        raise ShardWriteError("--samples_per_shard must be at least 1.")
    started = time.perf_counter()
    out = Path(out)
    module = recipe_module(recipe)
    hparams = recipe_hparams(module, overrides, out)
    module.prepare(hparams)
    parts, splits = data_parts(module, hparams)
    manifests = Path(hparams["manifest_folder"])
    prepared = json.loads((manifests / OPTIONS_FILE).read_text())
    data_options = {key: hparams[key] for key in [*prepared, "task"]
                    if key in hparams and key not in PLUMBING and key not in PATH_OPTIONS
                    and not key.endswith("_folder")}
    rows = {name: part_rows(dataset) for name, dataset in parts.items()}
    plan = {"recipe": recipe, "audio": audio, "samples_per_shard": samples_per_shard,
            "rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / PLAN_FILE
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        raise ShardWriteError(f"{out} holds shards written for other data or options "
                              f"({json.loads(plan_file.read_text())}); write into another folder, "
                              "or delete this one first.")
    write_json_atomic(plan_file, plan)
    done = _write_parts(out, rows, samples_per_shard, audio, workers)
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "recipe": recipe,
             "dataset": hparams["dataset"], "task": hparams.get("task", "single_label"),
             "class_names": [str(n) for n in (hparams.get("class_names") or
                                              _class_names(parts, hparams))],
             "folds": [int(f) for f in hparams["folds"]] if hparams.get("folds") else None,
             "data_folder": str(Path(hparams["data_folder"]).resolve()), "audio": audio,
             "samples_per_shard": samples_per_shard, "data_options": data_options,
             "parts": None, "splits": splits}
    report = manifests / DATA_REPORT_FILE
    index["data_report"] = json.loads(report.read_text()) if report.is_file() else {}
    index["parts"] = _write_tables(out, rows, done)
    write_json_atomic(out / INDEX_FILE, index)
    size = sum(s["bytes"] for p in index["parts"].values() for s in p["shards"])
    seconds = time.perf_counter() - started
    logger.info(f"Wrote {out / INDEX_FILE}: " + ", ".join(
        f"{name} {p['samples']} clips in {len(p['shards'])} shards" for name, p in index["parts"].items())
        + f"; {size / 1e6:.1f} MB in {seconds:.1f} s")
    return index


def _write_parts(out, rows, samples_per_shard, audio, workers):
    """Writes every part's clips (``rows``: ``{part: clips}``) as tar shards of
    ``samples_per_shard`` clips in ``workers`` processes; returns ``{(part, k): (table rows,
    bytes)}`` of shard ``k`` of each part."""
    tasks, places = [], []
    for name, clips in rows.items():
        (out / name).mkdir(exist_ok=True)
        for k, first in enumerate(range(0, len(clips), samples_per_shard)):
            path = out / name / f"{name}-{k:06d}.tar"
            tasks.append((str(path), first, clips[first:first + samples_per_shard], audio))
            places.append((name, k))
    done = {}
    todo = [(task, place) for task, place in zip(tasks, places)]
    workers = workers or os.cpu_count() or 1
    logger.info(f"Writing {sum(len(c) for c in rows.values())} clips into {len(tasks)} shards "
                f"in {out} ({workers} processes, audio {audio})")
    if workers == 1:
        results = map(_write_shard, [t for t, _ in todo])
    else:  # fresh processes: a forked one would inherit torch's thread pools (and can hang in them)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_write_shard, [t for t, _ in todo])
    for (task, place), (table, size) in zip(todo, results):
        done[place] = (table, size)
    if workers != 1:
        pool.shutdown()
    return done


def _write_tables(out, rows, done):
    """Writes each part's table (one row per clip, the shard it is in first) next to its shards;
    returns the index's ``parts`` entry."""
    import csv

    from petl_modules.training.shards import TABLE_COLUMNS, TABLE_FILE

    parts = {}
    for name, clips in rows.items():
        shards = sorted(k for part, k in done if part == name)
        with open(out / name / TABLE_FILE, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(TABLE_COLUMNS)
            for k in shards:
                writer.writerows([k, *row] for row in done[(name, k)][0])
        parts[name] = {
            "samples": len(clips), "table": f"{name}/{TABLE_FILE}",
            "shards": [{"file": f"{name}/{name}-{k:06d}.tar", "samples": len(done[(name, k)][0]),
                        "bytes": done[(name, k)][1]} for k in shards]}
    return parts


def _class_names(parts, hparams):
    from petl_modules.model.task import Task
    from petl_modules.training.recipe import class_names_of

    return class_names_of([parts[name] for name in parts], Task.of_options(hparams))


# ==================================================================== command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.shard",
        description="Write a recipe's prepared data as tar shards (WebDataset format) for "
                    "--shards=OUT. Other --key=value options are the recipe's (its data options).")
    recipes = sorted(p.parent.name for p in recipes_folder().glob("*/train.py"))
    parser.add_argument("recipe", help=f"a folder of recipes/: {', '.join(recipes)}")
    parser.add_argument("out", help="the folder to write the shards and their index into")
    parser.add_argument("--audio", default="original", choices=AUDIO_MODES,
                        help="original: each file's bytes as they came (default); flac: the "
                             "clip as 16 kHz mono 16-bit FLAC")
    parser.add_argument("--samples_per_shard", type=int, default=1000, help="clips per tar file (1000)")
    parser.add_argument("--workers", type=int, default=None, help="writing processes (every core)")
    from petl_modules.training.arguments import read_value

    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}: recipe options are --key=value")
        key, value = item[2:].split("=", 1)
        if key in overrides:
            parser.error(f"--{key} is given twice")
        overrides[key] = read_value(value)
    if "data_folder" not in overrides:
        parser.error("--data_folder=<the dataset's folder> is required")
    args.overrides = overrides
    return args


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    args = parse_args(argv)
    from petl_modules.training.compose import ConfigError
    from petl_modules.training.prepare import DataError

    try:
        write_shards(args.recipe, args.out, args.overrides, args.audio, args.samples_per_shard,
                     args.workers)
    except ShardWriteError as err:
        sys.exit(f"Error: {err}")
    except DataError as err:
        sys.exit(f"Error in the data: {err}")
    except ConfigError as err:
        sys.exit(f"Error in the options: {err}")


if __name__ == "__main__":
    main()
