"""AudioSet: manifests from Google's segment lists and the audio you downloaded (Gemmeke et al., 2017).

The data folder (``--data_folder``) holds the files as Google publishes them
(research.google.com/audioset/download.html), unchanged::

    class_labels_indices.csv         index,mid,display_name   (527 classes)
    balanced_train_segments.csv      22,160 segments  \\
    unbalanced_train_segments.csv    2,041,789         } three comment lines (#), then
    eval_segments.csv                20,371            /  YTID, start_seconds, end_seconds, "mid,mid,..."

and the audio, one file per segment, anywhere below ``--audio_folder`` (default: the data folder;
any depth, e.g. ``audios/unbalanced_train_segments/part07/``), named by a pattern
(``--audio_pattern``): a preset below, or a Python format string over ``ytid``, ``start``,
``end`` (as written in the CSV, ``30.000``), ``start_int``, ``end_int`` (whole seconds),
``start_ms``, ``end_ms`` (milliseconds); any of the extensions ``AUDIO_EXTENSIONS``. ``auto``
(default) tries every preset on the files found and takes the one that finds most segments.

Protocol: ``--subset=balanced`` trains on the balanced set, ``--subset=full`` on the balanced and
unbalanced sets; both test on the eval set. The release has no validation split: a seeded
``valid_fraction`` of the balanced set (chosen by a hash of the split seed and the YTID, so the
same segments whatever the order or the subset) validates and is kept out of training.

Clips that YouTube no longer serves are missing from every copy. Preparation counts them per
split and per class (``missing_clips.csv``; their ids in ``missing_clips.txt``) and goes on
when no split misses more than ``--max_missing`` (default 0.25) of its segments; the counts go to
``data_report.json``, which the recipe copies into results.json. Files are found by listing the
audio folder once (no per-file system call); with ``--check_headers`` (``auto``: up to 100,000
files) every found file's header is read too (unreadable ones are problems, and durations come
from the headers; without it a segment is its CSV's end - start).
"""

import csv
import hashlib
import json
import logging
import os
import string
import time
from pathlib import Path

from petl_modules.training.metrics import LABEL_SEPARATOR
from petl_modules.training.prepare import (
    DATA_REPORT_FILE,
    MAX_LISTED,
    SKIPPED_FILE,
    DataError,
    check_files,
    manifests_up_to_date,
    peak_memory_mb,
    resolve_data_folder,
)

logger = logging.getLogger(__name__)

RELEASE = "audioset"
LABELS_FILE = "class_labels_indices.csv"
LABELS_HEADER = "index,mid,display_name"
SEGMENT_FILES = {"balanced": "balanced_train_segments.csv",
                 "unbalanced": "unbalanced_train_segments.csv",
                 "eval": "eval_segments.csv"}
SUBSETS = {"balanced": ("balanced",), "full": ("balanced", "unbalanced")}
SPLITS = ("train", "valid", "test")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
# The file names of common download tools (the extension is any of AUDIO_EXTENSIONS).
AUDIO_PATTERNS = {
    "ytid": "{ytid}",                                   # --PJHxphWEs.wav
    "y_ytid": "Y{ytid}",                                # Y--PJHxphWEs.wav (PANNs' downloader)
    "ytid_start": "{ytid}_{start_int}",                 # --PJHxphWEs_30.wav
    "ytid_start6": "{ytid}_{start_int:06d}",            # --PJHxphWEs_000030.wav
    "y_ytid_start_end": "Y{ytid}_{start}_{end}",        # Y--PJHxphWEs_30.000_40.000.wav (DCASE)
    "ytid_start_end": "{ytid}_{start}_{end}",           # --PJHxphWEs_30.000_40.000.wav
    "ytid_start_end_ms": "{ytid}_{start_ms}_{end_ms}",  # --PJHxphWEs_30000_40000.flac
}
PATTERN_FIELDS = {"ytid", "start", "end", "start_int", "end_int", "start_ms", "end_ms"}
HEADER_CHECK_LIMIT = 100_000  # check_headers: auto reads the headers of at most this many files
MISSING_CLIPS = "missing_clips.csv"
MISSING_IDS = "missing_clips.txt"


# ==================================================================== the label list
def read_classes(data_folder):
    """``[(mid, display name)]`` of ``class_labels_indices.csv`` in index order; display names
    that repeat get their mid added (``name (mid)``), so every class name is unique.

    Raises
    ------
    DataError
        Missing file or column, indices that are not 0..C-1, a name holding the manifest's
        separator.
    """
    folder = resolve_data_folder(data_folder, RELEASE, LABELS_FILE)
    path = folder / LABELS_FILE
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in LABELS_HEADER.split(",") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}; expected the header "
                            f"'{LABELS_HEADER}' (restore the file from the AudioSet download page).")
        entries = {}
        for line, record in enumerate(reader, start=2):
            try:
                entries[int(record["index"])] = (record["mid"].strip(), record["display_name"].strip())
            except (TypeError, ValueError):
                raise DataError(f"{path} line {line}: index '{record['index']}' is not a "
                                "whole number.") from None
    if sorted(entries) != list(range(len(entries))) or len(entries) < 2:
        raise DataError(f"{path}: the indices must run from 0 to the number of classes - 1.")
    classes = [entries[k] for k in range(len(entries))]
    names = [name for _, name in classes]
    classes = [(mid, f"{name} ({mid})" if names.count(name) > 1 else name) for mid, name in classes]
    bad = [name for _, name in classes if LABEL_SEPARATOR in name]
    if bad:
        raise DataError(f"{path}: class names may not hold '{LABEL_SEPARATOR}': {', '.join(bad)}.")
    return classes


def check_subset(subset):
    if subset not in SUBSETS:
        raise DataError(f"--subset={subset}: use balanced (the balanced training set, ~20k "
                        "segments) or full (balanced + unbalanced, ~2M).")


def options_from_data(options):
    """The classes of ``class_labels_indices.csv`` (``recipe.load_run``): ``class_names`` in
    index order and ``n_classes``; checks ``--subset`` first. No audio is read."""
    check_subset(options.get("subset", "balanced"))
    names = [name for _, name in read_classes(options["data_folder"])]
    return {"class_names": names, "n_classes": len(names)}


# ==================================================================== segment lists
def read_segments(path):
    """Yields ``(line, ytid, start, end, mids)`` of one of Google's segment CSVs (comment lines
    skipped; ``start`` and ``end`` as written, e.g. ``30.000``).

    Raises
    ------
    DataError
        A line that is not ``YTID, start_seconds, end_seconds, "mid,..."``, naming it.
    """
    if not Path(path).is_file():
        raise DataError(f"Missing {path}: download it from the AudioSet download page "
                        "(research.google.com/audioset/download.html) into the data folder.")
    with open(path, newline="", encoding="utf-8") as stream:
        for line, record in enumerate(csv.reader(stream, skipinitialspace=True), start=1):
            if not record or record[0].startswith("#"):
                continue
            if len(record) != 4 or not record[0]:
                raise DataError(f"{path} line {line} is not 'YTID, start_seconds, end_seconds, "
                                f"\"mid,...\"': {','.join(record)[:100]}")
            yield line, record[0], record[1], record[2], record[3].split(",")


def _seconds(text, path, line):
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path} line {line}: '{text}' is not a number of seconds.") from None


def file_stem(pattern, ytid, start, end, path="", line=0):
    """The file name (without extension) of a segment under ``pattern`` (a format string)."""
    first, last = _seconds(start, path, line), _seconds(end, path, line)
    return pattern.format(ytid=ytid, start=start, end=end, start_int=int(first), end_int=int(last),
                          start_ms=int(round(first * 1000)), end_ms=int(round(last * 1000)))


def check_pattern(pattern):
    """The format string of ``--audio_pattern`` (a preset name or a format string; ``auto``
    returns None), checked to name only ``PATTERN_FIELDS`` and ``ytid``."""
    if pattern in (None, "auto"):
        return None
    pattern = AUDIO_PATTERNS.get(pattern, pattern)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as err:
        raise DataError(f"--audio_pattern={pattern}: not a format string ({err}).") from None
    if "ytid" not in fields or not fields <= PATTERN_FIELDS:
        raise DataError(f"--audio_pattern={pattern}: a file name pattern names {{ytid}} and only "
                        f"{', '.join(sorted(PATTERN_FIELDS))}; or use a preset: "
                        f"{', '.join(AUDIO_PATTERNS)}, or auto.")
    return pattern


# ==================================================================== finding the audio
class AudioIndex:
    """Every audio file below a folder, listed once: file name without extension -> where it is.

    ``folders`` holds each sub-folder once (relative to the data root); an entry is the folder's
    position and the extension's, so two million files cost two million short keys.
    """

    def __init__(self, audio_folder, data_root):
        self.root = Path(data_root)
        self.folders, self.stems, self.repeated = [], {}, 0
        top = Path(audio_folder)
        extensions = {ext: k for k, ext in enumerate(AUDIO_EXTENSIONS)}
        pending = [top]
        while pending:
            folder = pending.pop()
            with os.scandir(folder) as entries:
                index = None
                for entry in entries:
                    if entry.is_dir(follow_symlinks=True):
                        pending.append(Path(entry.path))
                        continue
                    stem, dot, ext = entry.name.rpartition(".")
                    kind = extensions.get(f"{dot}{ext}".lower())
                    if kind is None or not stem:
                        continue
                    if index is None:
                        index = len(self.folders)
                        self.folders.append(os.path.relpath(folder, self.root))
                    if stem in self.stems:
                        self.repeated += 1
                        continue
                    self.stems[stem] = index * len(AUDIO_EXTENSIONS) + kind

    def __len__(self):
        return len(self.stems)

    def find(self, stem):
        """The path (relative to the data root) of the file named ``stem``, or None."""
        code = self.stems.get(stem)
        if code is None:
            return None
        folder, kind = divmod(code, len(AUDIO_EXTENSIONS))
        name = stem + AUDIO_EXTENSIONS[kind]
        return name if self.folders[folder] == "." else f"{self.folders[folder]}/{name}"

    def examples(self, count=3):
        return [f"{self.find(stem)}" for stem in list(self.stems)[:count]]


def nothing_found(index, pattern):
    """The error of a pattern that finds no file."""
    found = ", ".join(index.examples()) or "none"
    return DataError(
        f"No audio file named after a segment was found with {pattern} ({len(index)} audio files "
        f"found; e.g. {found}). The files must be named by a pattern of the segment lists: pass "
        f"--audio_pattern=<one of {', '.join(AUDIO_PATTERNS)}> or a format string such as "
        "'{ytid}_{start_int}', and --audio_folder=<the folder holding them> if they are not "
        "below the data folder.")


def detect_pattern(index, segment_paths, sample=2000):
    """The preset of ``AUDIO_PATTERNS`` that finds most of the first ``sample`` segments of each
    list; raises ``DataError`` (with examples) when none finds any."""
    hits = dict.fromkeys(AUDIO_PATTERNS, 0)
    for path in segment_paths:
        for k, (line, ytid, start, end, _) in enumerate(read_segments(path)):
            if k >= sample:
                break
            for name, pattern in AUDIO_PATTERNS.items():
                hits[name] += file_stem(pattern, ytid, start, end, path, line) in index.stems
    best = max(hits, key=hits.get)
    if hits[best] == 0:
        raise nothing_found(index, "any preset")
    logger.info(f"Audio files named as {best} ('{AUDIO_PATTERNS[best]}.<ext>'): it finds "
                f"{hits[best]} of the first segments listed (other patterns: "
                + ", ".join(f"{n} {h}" for n, h in hits.items() if n != best) + ").")
    return AUDIO_PATTERNS[best]


# ==================================================================== preparation
def in_validation(ytid, fraction, seed):
    """Whether the balanced segment ``ytid`` is in the validation split: a hash of (seed, YTID)
    below ``fraction`` (the same segments whatever the order of the list)."""
    digest = hashlib.blake2b(f"{seed}/{ytid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


class _Counts:
    """Segments and missing segments per split and per class."""

    def __init__(self, n_classes):
        self.total = {s: [0] * n_classes for s in SPLITS}
        self.missing = {s: [0] * n_classes for s in SPLITS}
        self.clips = dict.fromkeys(SPLITS, 0)
        self.lost = dict.fromkeys(SPLITS, 0)

    def report(self, threshold):
        return {split: {"segments": self.clips[split], "missing": self.lost[split],
                        "fraction": self.lost[split] / self.clips[split] if self.clips[split] else 0.0}
                for split in SPLITS} | {"max_missing": threshold}


def prepare_audioset(options, save_folder, class_names):
    """Writes ``train.csv``, ``valid.csv``, ``test.csv`` (ID, duration, wav, label), the missing
    clips (``missing_clips.csv``, ``missing_clips.txt``) and ``data_report.json``.

    Arguments
    ---------
    options : dict
        The run's plain options: ``data_folder``, ``subset``, ``audio_folder``, ``audio_pattern``,
        ``max_missing``, ``valid_fraction``, ``split_seed``, ``check_headers``,
        ``skip_bad_files``.
    save_folder : str
        Where the manifests go; skipped when they exist for the same options.
    class_names : list of str
        The classes (``options_from_data``).

    Raises
    ------
    DataError
        Missing lists, malformed lines, unknown mids, no audio found, a split missing more than
        ``max_missing`` of its segments, unreadable files (without ``skip_bad_files``).

    Example
    -------
    >>> import tempfile
    >>> from petl_modules.synthetic import make_dataset
    >>> root = make_dataset("AudioSet", tempfile.mkdtemp(), per_class=2, seconds=0.2)
    >>> save = tempfile.mkdtemp()
    >>> options = {"data_folder": root, "subset": "balanced", "valid_fraction": 0.2}
    >>> prepare_audioset(options, save, options_from_data(options)["class_names"])
    >>> sorted(p.name for p in Path(save).iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['data_report.json', 'missing_clips.csv', 'missing_clips.txt', 'prepare_options.json',
     'test.csv', 'train.csv', 'valid.csv']
    """
    started = time.perf_counter()
    subset = options.get("subset", "balanced")
    check_subset(subset)
    root = resolve_data_folder(options["data_folder"], RELEASE, LABELS_FILE)
    audio_folder = Path(options.get("audio_folder") or root)
    pattern = check_pattern(options.get("audio_pattern", "auto"))
    threshold = float(options.get("max_missing", 0.25))
    fraction, seed = float(options.get("valid_fraction", 0.1)), int(options.get("split_seed", 0))
    skip = bool(options.get("skip_bad_files"))
    prepare_options = {"data_folder": str(root.resolve()), "audio_folder": str(audio_folder.resolve()),
                       "subset": subset, "audio_pattern": options.get("audio_pattern", "auto"),
                       "max_missing": threshold, "valid_fraction": fraction, "split_seed": seed,
                       "check_headers": options.get("check_headers", "auto"),
                       "skip_bad_files": skip, "class_names": list(class_names)}
    if manifests_up_to_date(save_folder, SPLITS, prepare_options):
        return
    if not audio_folder.is_dir():
        raise DataError(f"--audio_folder={audio_folder} is not a folder: pass the folder holding "
                        "the downloaded audio (any depth below it).")
    classes = read_classes(root)
    index_of = {mid: k for k, (mid, _) in enumerate(classes)}
    names = list(class_names)
    lists = {part: root / SEGMENT_FILES[part] for part in (*SUBSETS[subset], "eval")}
    index = AudioIndex(audio_folder, root)
    logger.info(f"{len(index)} audio files found below {audio_folder}"
                + (f" ({index.repeated} more share a name with one of them and are ignored)"
                   if index.repeated else ""))
    if pattern is None:
        pattern = detect_pattern(index, lists.values())

    save_folder = Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    counts, problems, seen = _Counts(len(classes)), [], set()
    found = {split: [] for split in SPLITS}  # (ID, relative path, nominal duration, label)
    with open(save_folder / MISSING_IDS, "w", encoding="utf-8") as missing_ids:
        missing_ids.write("split,ytid,expected_file\n")
        for part, path in lists.items():
            for line, ytid, start, end, mids in read_segments(path):
                split = "test" if part == "eval" else (
                    "valid" if part == "balanced" and in_validation(ytid, fraction, seed) else "train")
                if ytid in seen:
                    problems.append(f"{path} line {line}: segment {ytid} is listed twice (kept once)")
                    continue
                seen.add(ytid)
                try:
                    classes_of = [index_of[mid] for mid in mids]
                except KeyError as err:
                    problems.append(f"{path} line {line} ({ytid}): mid {err.args[0]} is not in "
                                    f"{LABELS_FILE}")
                    continue
                stem = file_stem(pattern, ytid, start, end, path, line)
                where = index.find(stem)
                counts.clips[split] += 1
                for k in classes_of:
                    counts.total[split][k] += 1
                if where is None:
                    counts.lost[split] += 1
                    for k in classes_of:
                        counts.missing[split][k] += 1
                    missing_ids.write(f"{split},{ytid},{stem}\n")
                    continue
                found[split].append((ytid, where, float(end) - float(start),
                                     LABEL_SEPARATOR.join(names[k] for k in classes_of)))
    _write_missing_table(save_folder / MISSING_CLIPS, counts, classes, names)
    if not any(found.values()):
        raise nothing_found(index, f"--audio_pattern='{pattern}'")
    report = counts.report(threshold)
    over = [s for s in SPLITS if report[s]["fraction"] > threshold]
    if over:
        details = "; ".join(f"{s}: {report[s]['missing']} of {report[s]['segments']} "
                            f"({100 * report[s]['fraction']:.1f}%)" for s in over)
        raise DataError(
            f"Too many missing clips ({details}), above --max_missing={threshold:g}. They were "
            f"looked for below {audio_folder} as '{pattern}.<{'|'.join(e[1:] for e in AUDIO_EXTENSIONS)}>' "
            f"({len(index)} audio files there; e.g. {', '.join(index.examples()) or 'none'}). "
            "Check --audio_folder and --audio_pattern, or raise --max_missing to go on with what "
            f"you have; the missing ids are in {save_folder / MISSING_IDS}, per class in "
            f"{save_folder / MISSING_CLIPS}.")
    for split in SPLITS:
        if report[split]["missing"]:
            logger.info(f"{split}: {report[split]['missing']} of {report[split]['segments']} "
                        f"segments missing ({100 * report[split]['fraction']:.1f}%, at most "
                        f"{100 * threshold:g}% allowed)")
    found, bad = _check_headers(found, root, options.get("check_headers", "auto"))
    problems += bad
    _report_problems(problems, skip, save_folder, root)
    for split in SPLITS:
        if not found[split]:
            raise DataError(f"The {split} split has no usable clip: check the data folder {root}.")
        _write_manifest(save_folder / f"{split}.csv", found[split])
    report["problems"] = len(problems)
    report["missing_clips_file"] = str(save_folder / MISSING_CLIPS)
    with open(save_folder / DATA_REPORT_FILE, "w") as stream:
        json.dump({"missing_clips": report}, stream, indent=2)
    with open(save_folder / "prepare_options.json", "w") as stream:
        json.dump(prepare_options, stream, indent=2)
    logger.info(f"Wrote manifests to {save_folder}: "
                + ", ".join(f"{s} {len(found[s])}" for s in SPLITS)
                + f" clips in {time.perf_counter() - started:.1f} s (the process's peak memory so "
                  f"far: {peak_memory_mb():.0f} MB)")


def _check_headers(found, root, check):
    """With ``check_headers`` (``auto``: at most ``HEADER_CHECK_LIMIT`` files), every found file's
    header is read: durations from it, unreadable files are problems (and left out)."""
    total = sum(len(rows) for rows in found.values())
    if check in (False, "False", "false") or (check == "auto" and total > HEADER_CHECK_LIMIT):
        return found, []
    checked = check_files([root / where for rows in found.values() for _, where, _, _ in rows],
                          samples=False)
    problems, kept = [], {}
    for split, rows in found.items():
        kept[split] = []
        for ytid, where, nominal, label in rows:
            duration, problem = checked[str(root / where)]
            if problem:
                problems.append(f"{root / where}: {problem} ({split} split, ID {ytid})")
                continue
            kept[split].append((ytid, where, duration, label))
    return kept, problems


def _report_problems(problems, skip, save_folder, root):
    if problems and not skip:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in the data at {root}:\n  {listed}{more}\n"
                        "Fix or replace these files, or rerun with --skip_bad_files=True to leave "
                        f"them out (listed in {save_folder / SKIPPED_FILE}).")
    if problems:
        (Path(save_folder) / SKIPPED_FILE).write_text("\n".join(problems) + "\n")
        logger.warning(f"Skipped {len(problems)} problem(s) (--skip_bad_files=True), listed in "
                       f"{Path(save_folder) / SKIPPED_FILE}:\n  " + "\n  ".join(problems[:MAX_LISTED]))


def _write_manifest(path, rows):
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ID", "duration", "wav", "label"])
        writer.writerows((ytid, f"{duration:.3f}", f"$data_root/{where}", label)
                         for ytid, where, duration, label in rows)
    os.replace(tmp, path)


def _write_missing_table(path, counts, classes, names):
    """Per class: its segments and missing segments in each split."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "mid", "class", *(f"{s}_{kind}" for s in SPLITS
                                                    for kind in ("segments", "missing"))])
        for k, (mid, _) in enumerate(classes):
            writer.writerow([k, mid, names[k], *(value for s in SPLITS for value in
                                                 (counts.total[s][k], counts.missing[s][k]))])

