"""A shard folder's index (``shards.json``) and tables (``samples.csv``): read and checked
against the run, and the clips of a run's parts as one table (``SampleTable``). What a shard folder
is: ``petl_modules.training.shards``."""

import csv
import json
import math
from pathlib import Path

import numpy as np

from petl_modules.training.prepare import DataError

INDEX_FILE = "shards.json"
INDEX_FORMAT = "petl-ast-shards"
INDEX_VERSION = 1
TABLE_FILE = "samples.csv"
TABLE_COLUMNS = ("shard", "key", "ID", "label", "duration", "seg_start", "seg_end")
MAX_INDEX_BYTES = 64 << 20  # a bigger shards.json is not one we wrote
# Options that name where the data is, not what it is: not compared between shards and runs
# (nor are options ending in _folder).
PATH_OPTIONS = {"manifest"}


class ShardError(DataError):
    """A shard folder that is not what ``python -m petl_modules.shard`` writes, or that does not
    fit the run."""


# ==================================================================== the index
def read_index(folder):
    """The index (``shards.json``) of a shard folder, read as JSON data and checked.

    Raises
    ------
    ShardError
        No index, or one of another format or version, or paths leaving the folder.
    """
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise ShardError(f"--shards={folder}: no {INDEX_FILE} in it. Write the shards with "
                         f"python -m petl_modules.shard <recipe> --data_folder=... {folder}.")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ShardError(f"{path} is larger than any index this code writes.")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ShardError(f"{path} is not valid JSON ({err}): write the shards again.") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ShardError(f"{path} is not a shard index of python -m petl_modules.shard.")
    if index.get("version") != INDEX_VERSION:
        raise ShardError(f"{path} has version {index.get('version')}; this code reads version "
                         f"{INDEX_VERSION}: write the shards again.")
    for name, part in index["parts"].items():
        for entry in [part["table"], *(s["file"] for s in part["shards"])]:
            if Path(entry).is_absolute() or ".." in Path(entry).parts:
                raise ShardError(f"{path}: part '{name}' names '{entry}', outside the folder.")
    return index


def split_parts(index, fold):
    """``{split: [part names]}`` of ``fold`` (None: a dataset with official splits)."""
    key = "all" if fold is None else str(int(fold))
    if key not in index["splits"]:
        raise ShardError(f"The shards hold no fold {key} (they hold {', '.join(index['splits'])}).")
    return index["splits"][key]


def run_options_from_index(index):
    """The options a run from these shards takes from the index: class names, their number,
    the folds (``recipe.load_run``)."""
    return {"class_names": list(index["class_names"]), "n_classes": len(index["class_names"]),
            "folds": index.get("folds")}


def check_run_against_index(index, options, folder):
    """Raises ``ShardError`` naming every data option of ``options`` (those given on the command
    line) that the index records (``data_options``: those that decided the clips and labels of the
    shards) with another value, or another dataset."""
    problems = []
    if options.get("dataset") != index["dataset"]:
        problems.append(f"they hold {index['dataset']}, not {options.get('dataset')}")
    for key, written in index.get("data_options", {}).items():
        if key in options and options[key] != written:
            problems.append(f"--{key}={options[key]!r}, but they were written with {written!r}")
    if problems:
        raise ShardError(f"The shards in {folder} do not fit this run: {'; '.join(problems)}. "
                         "Run with the shards' values, or write shards for these options (python "
                         "-m petl_modules.shard ... with them) into another folder.")


# ==================================================================== the clips of a split
class SampleTable:
    """The clips of some parts of a shard folder, as arrays (two million clips cost a few hundred
    MB, not the GBs of one dict per row): ``shard`` index into ``shard_files``, member ``keys``,
    ``ids``, labels as class indices (``label_ptr``/``label_idx``, CSR), ``duration`` (s),
    ``seg_start``/``seg_end`` (s, NaN: whole file)."""

    def __init__(self, folder, index, parts, class_names, task):
        self.folder, self.task = Path(folder), task
        lookup = {name: k for k, name in enumerate(class_names)}
        self.shard_files, shard, keys, ids, durations, starts, ends = [], [], [], [], [], [], []
        label_idx, label_len = [], []
        for name in parts:
            part = index["parts"][name]
            offset = len(self.shard_files)
            self.shard_files += [self.folder / s["file"] for s in part["shards"]]
            with open(self.folder / part["table"], newline="", encoding="utf-8") as stream:
                reader = csv.reader(stream)
                header = next(reader)
                if tuple(header) != TABLE_COLUMNS:
                    raise ShardError(f"{self.folder / part['table']}: columns {header}, expected "
                                     f"{list(TABLE_COLUMNS)}.")
                for row in reader:
                    shard.append(offset + int(row[0]))
                    keys.append(row[1])
                    ids.append(row[2])
                    try:
                        found = [lookup[x] for x in task.labels_of(row[3])]
                    except KeyError as err:
                        raise ShardError(f"{self.folder / part['table']}: clip {row[2]} has label "
                                         f"{err.args[0]!r}, not one of the index's classes.") from None
                    label_idx += found
                    label_len.append(len(found))
                    durations.append(float(row[4]))
                    starts.append(float(row[5]) if row[5] else math.nan)
                    ends.append(float(row[6]) if row[6] else math.nan)
        self.shard = np.asarray(shard, dtype=np.int64)
        self.keys = np.asarray(keys, dtype=object)
        self.ids = np.asarray(ids, dtype=object)
        self.label_idx = np.asarray(label_idx, dtype=np.int64)
        self.label_ptr = np.concatenate([[0], np.cumsum(label_len)]).astype(np.int64)
        self.duration = np.asarray(durations, dtype=np.float64)
        self.seg_start = np.asarray(starts, dtype=np.float64)
        self.seg_end = np.asarray(ends, dtype=np.float64)
        if np.any(np.diff(self.shard) < 0):
            raise ShardError(f"{self.folder}: the clips of a table are not in shard order.")

    def __len__(self):
        return len(self.ids)

    def labels(self, i):
        """The class indices of clip ``i``."""
        return self.label_idx[self.label_ptr[i]:self.label_ptr[i + 1]]

    def label_lists(self):
        return [self.labels(i).tolist() for i in range(len(self))]

    def shard_bounds(self):
        """``(first clip, end clip)`` of every shard file (the clips are in shard order)."""
        first = np.searchsorted(self.shard, np.arange(len(self.shard_files)), side="left")
        end = np.searchsorted(self.shard, np.arange(len(self.shard_files)), side="right")
        return first, end
