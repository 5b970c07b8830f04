"""Long recordings: the clip each dataset row stands for (its file, a segment of it, or one of its
sliding windows), random training crops and evaluation windows, in one place.

A backbone sees a clip of fixed length: ``max_frames`` fbank frames (AST) or ``clip_seconds``
(waveform and Whisper lobes), i.e. the input processor's ``samples_needed`` samples. The papers'
protocol, the default of their five recipes, keeps the first clip of every file for training and
testing. Options of every recipe (``petl_modules/training/recipe.yaml``):

- ``train_crop: random``: at every epoch each training example is a clip at a random place in its
  file, drawn from (seed, epoch, utterance id) alone (``crop_start``), so that a run resumed after
  an interruption, or run on any number of processes, reads exactly the same crops;
- ``eval_windows: sliding``: validation, test and ``classify`` cover the whole file with clips
  every ``window_hop_seconds`` (null: half a clip), the last one ending where the file ends
  (``window_starts``); the windows' class probabilities are pooled into the file's
  (``window_pooling``: mean, or max for events);
- ``window_results: True``: the test's per-window probabilities go to
  ``<experiment_folder>/test_windows.csv``.

A file no longer than a clip is one window, padded as in the first-clip protocol. A row of a
manifest may be a segment of a long file (``SEGMENT_FIELDS``): it is read, cropped and windowed
within the segment. All of them are one thing, a ``petl_modules.model.clip.Clip`` of a recording
(``row_clip``), read on its own (``Clip.read``): memory does not grow with the file.
"""

import csv
import functools
import hashlib
import logging
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from petl_modules.files import csv_cell
from petl_modules.model.clip import Clip
# The evaluation protocol is the model's (petl_modules/model/windows.py); the names are used from here too.
from petl_modules.model.windows import (  # noqa: F401
    EVAL_WINDOWS,
    WINDOW_POOLINGS,
    EvalProtocol,
    clip_samples,
    pool_windows,
    window_starts,
)

TRAIN_CROPS = ("first", "random")
WINDOW_RESULTS_FILE = "test_windows.csv"
# The fields of a row of ``window_dataset`` besides the file's: its file's id, its samples.
WINDOW_KEYS = ("utterance", "window_start", "window_end")
# Manifest columns of a row that is a segment of a long file: its first second (empty: 0), its end
# (empty: the file's end) and its length in seconds (the manifest's duration).
SEGMENT_FIELDS = ("seg_start", "seg_end", "duration")

logger = logging.getLogger(__name__)


# ==================================================================== where clips start
def crop_start(seed, epoch, utterance, clip, total):
    """The first sample of the random training crop of ``utterance`` at ``epoch``: uniform over the
    ``total - clip + 1`` places a clip fits, drawn from a hash of (seed, epoch, utterance) alone
    (the same in every process, DataLoader worker and resumed run); 0 when the file is no longer
    than a clip.

    Example
    -------
    >>> crop_start(10, 1, "utt1", 100, 1000) == crop_start(10, 1, "utt1", 100, 1000)
    True
    >>> crop_start(10, 1, "utt1", 100, 50)
    0
    """
    if clip is None or total <= clip:
        return 0
    digest = hashlib.sha256(f"{int(seed)}/{int(epoch)}/{utterance}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (int(total) - int(clip) + 1)


class TrainCrop:
    """The random training crops of a run: ``crop(utterance)`` draws the offset of the utterance's
    crop from the length of its clip (``Clip.crop``: a whole file, or a segment of one). The Brain
    sets the epoch before each training epoch starts (``set_epoch``), before the DataLoader workers
    copy this object.

    Arguments
    ---------
    seed : int
        The run's seed.
    clip : int or None
        Samples of one clip (``clip_samples(processor)``).
    """

    def __init__(self, seed, clip):
        self.seed, self.clip, self.epoch = int(seed), clip, 1

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __call__(self, utterance):
        return functools.partial(crop_start, self.seed, self.epoch, utterance, self.clip)


# ==================================================================== the clip of a row
def row_clip(fields, rate=16000):
    """The clip a dataset row stands for, at ``rate``: its window (``window_start`` and
    ``window_end``, a row of ``window_dataset``), its segment (``SEGMENT_FIELDS``), or its whole
    file (``wav``)."""
    if "window_start" in fields:
        return Clip(fields["wav"], int(fields["window_start"]), int(fields["window_end"]))
    return Clip.of_segment(fields["wav"], fields.get("seg_start"), fields.get("seg_end"),
                           fields.get("duration"), rate)


def segment_span(fields, rate=16000):
    """``(first sample, end sample)`` at ``rate`` of a row that is a segment of its file, or None
    for a whole file (``seg_start`` and ``seg_end`` empty)."""
    clip = row_clip(fields, rate)
    return None if clip.stop is None else (clip.start, clip.stop)


def has_segments(dataset):
    """Whether some rows of ``dataset`` are segments of their files (``SEGMENT_FIELDS``)."""
    first = next(iter(dataset.data.values()), {})
    return all(field in first for field in SEGMENT_FIELDS) and any(
        segment_span(fields) is not None for fields in dataset.data.values())


def window_dataset(dataset, processor, protocol):
    """The sliding windows of ``dataset``'s rows as a dataset: one row per window with the
    utterance's fields, its id in ``utterance`` and where the window starts and ends (samples, end
    excluded) in ``window_start`` and ``window_end`` (rows ``<id>@<k>``). The windows of a row
    cover its clip (``row_clip``: the file, or its segment); each header is read once."""
    rows = {}
    clip = clip_samples(processor)
    rate = getattr(processor, "sample_rate", 16000)
    hop = protocol.hop(processor)
    if clip is not None and hop > clip:
        logger.warning(f"window_hop_seconds={protocol.hop_seconds} is longer than a clip "
                       f"({clip / rate:.3f} s): the windows leave gaps in every long file.")
    for uid in dataset.data_ids:
        # (SpeechBrain's filtered_sorted leaves an "id" key in the data: a reserved key.)
        fields = {key: value for key, value in dataset.data[uid].items() if key != "id"}
        for k, window in enumerate(row_clip(fields, rate).windows(clip, hop, rate)):
            rows[f"{uid}@{k}"] = dict(fields, utterance=uid, window_start=window.start,
                                      window_end=window.stop)
    return DynamicItemDataset(rows)


def is_window_dataset(dataset):
    """Whether ``dataset`` holds sliding windows (``window_dataset``) rather than files."""
    first = next(iter(dataset.data.values()), {})
    return all(key in first for key in WINDOW_KEYS)


# ==================================================================== scores of windows
class WindowScores:
    """The class probabilities of evaluated windows, pooled per utterance at the end of a stage."""

    def __init__(self):
        self.utterances, self.starts, self.ends, self.probabilities, self.labels = [], [], [], [], []

    def add(self, utterances, starts, ends, probabilities, labels):
        """One batch of windows: their utterance ids, start/end samples, ``[B, C]`` probabilities,
        ``[B]`` label indices."""
        self.utterances += list(utterances)
        self.starts += [int(s) for s in starts]
        self.ends += [int(e) for e in ends]
        self.probabilities.append(probabilities.detach().float().cpu())
        self.labels.append(labels.detach().cpu())

    def __len__(self):
        return len(self.utterances)

    def pooled(self, pooling="mean"):
        """``(utterance ids, pooled probabilities [U, C], label indices [U])``, utterances in the
        order they first came."""
        probabilities = torch.cat(self.probabilities)
        labels = torch.cat(self.labels)
        rows = {}
        for k, utterance in enumerate(self.utterances):
            rows.setdefault(utterance, []).append(k)
        ids = list(rows)
        pooled = torch.stack([pool_windows(probabilities[rows[u]], pooling) for u in ids])
        return ids, pooled, labels[[rows[u][0] for u in ids]]

    def write_csv(self, path, class_names, sample_rate=16000):
        """One row per window: ``utterance, window, start_s, end_s, label, prediction, score``
        and the probability of every class (multi-label: ``label`` lists the file's classes,
        ``;``-separated, and ``prediction`` is the most probable class)."""
        probabilities = torch.cat(self.probabilities)
        labels = torch.cat(self.labels)
        if labels.dim() > 1:  # multi-hot targets [N, C]
            names = [";".join(class_names[i] for i in row.nonzero().view(-1).tolist()) for row in labels]
        else:
            names = [class_names[i] for i in labels.tolist()]
        windows = {}
        with open(Path(path), "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["utterance", "window", "start_s", "end_s", "label", "prediction",
                             "score", *map(csv_cell, class_names)])
            for k, utterance in enumerate(self.utterances):
                index = windows[utterance] = windows.get(utterance, -1) + 1
                prob = probabilities[k]
                best = int(prob.argmax())
                writer.writerow([csv_cell(utterance), index, f"{self.starts[k] / sample_rate:.3f}",
                                 f"{self.ends[k] / sample_rate:.3f}", csv_cell(names[k]),
                                 csv_cell(class_names[best]), f"{float(prob[best]):.6f}",
                                 *(f"{float(p):.6f}" for p in prob)])
