"""A synthetic AudioSet as users hold it after downloading (tests, demo, benchmark): Google's segment
CSVs and label list, one audio file per segment, multi-label, long-tailed, some clips missing.

Found and imported by ``petl_modules.synthetic.make_dataset("AudioSet", ...)`` (see that module).
"""

from pathlib import Path

import numpy as np

from petl_modules.synthetic import long_tail_counts, tag_sets, tagged_signal, write_csv, write_wav

RELEASE = "audioset"
RATE = 16000
# Display names as class_labels_indices.csv writes them (some hold commas); more classes than
# listed get numbered names.
NAMES = ["Speech", "Male speech, man speaking", "Music", "Guitar", "Dog", "Bark", "Vehicle",
         "Car", "Rain", "Siren", "Bird", "Engine"]
# Where PANNs' downloader puts the files (audios/<list>/Y<YTID>.wav); the unbalanced list in parts.
FOLDERS = {"balanced_train_segments": "audios/balanced_train_segments",
           "unbalanced_train_segments": "audios/unbalanced_train_segments/unbalanced_train_segments_part00",
           "eval_segments": "audios/eval_segments"}
YTID_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

# python -m petl_modules.demo: the balanced subset, 4 clips per class and list, 15% missing (with
# so few clips per split the share missing varies: --max_missing lets the demo go on).
DEMO = {"per_class": 4, "release": RELEASE, "options": ["--time_mask=20", "--freq_mask=24",
                                                        "--valid_fraction=0.25", "--max_missing=0.75"]}


def classes(n_classes):
    """``[(mid, display name)]`` of ``n_classes`` synthetic classes."""
    names = NAMES[:n_classes] + [f"Sound {k}" for k in range(len(NAMES), n_classes)]
    return [(f"/m/0syn{k:03d}", name) for k, name in enumerate(names)]


def segment_lines(rows):
    """Google's segment CSV: three comment lines, then ``YTID, start, end, "mid,mid"``."""
    labels = sum(len(mids) for _, _, mids in rows)
    head = ["# Segments csv created by petl_modules.synthetic (a synthetic copy)",
            f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels="
            f"{len({m for _, _, mids in rows for m in mids})}, num_positive_labels={labels}",
            "# YTID, start_seconds, end_seconds, positive_labels"]
    return head + [f'{ytid}, {start:.3f}, {start + 10:.3f}, "{",".join(mids)}"'
                   for ytid, start, mids in rows]


def file_name(pattern, ytid, start, extension):
    """The file name of a segment under ``pattern`` (the fields of ``--audio_pattern``)."""
    end = start + 10
    return pattern.format(ytid=ytid, start=f"{start:.3f}", end=f"{end:.3f}", start_int=int(start),
                          end_int=int(end), start_ms=int(start * 1000),
                          end_ms=int(end * 1000)) + extension


def generate(root, per_class=1, seed=0, seconds=1.0, n_classes=len(NAMES), missing=0.15,
             pattern="Y{ytid}", extension=".wav", unbalanced=3):
    """Writes the lists and the audio under ``root/audioset``; returns that folder.

    - ``class_labels_indices.csv`` of ``n_classes`` classes;
    - ``balanced_train_segments.csv`` and ``eval_segments.csv``: 2 x ``per_class`` and
      ``per_class`` segments per class (by their first class; a third have a second class);
    - ``unbalanced_train_segments.csv``: ``unbalanced`` x a long tail (8 x ``per_class`` for the
      first class, falling as 1 / rank);
    - one ``seconds`` long 16 kHz file per segment, named by ``pattern`` + ``extension``, in
      PANNs' folders (``audios/...``), except a share ``missing`` of the segments of each list,
      whose file is not written (YouTube no longer serves them).
    """
    folder = Path(root) / RELEASE
    rng = np.random.default_rng(seed)
    labels = classes(n_classes)
    write_csv(folder / "class_labels_indices.csv", ["index", "mid", "display_name"],
              [[k, mid, name] for k, (mid, name) in enumerate(labels)])
    counts = {"balanced_train_segments": [2 * per_class] * n_classes,
              "unbalanced_train_segments": [unbalanced * c for c in
                                            long_tail_counts(n_classes, per_class, head=8)],
              "eval_segments": [per_class] * n_classes}
    for name, per_class_counts in counts.items():
        rows = []
        for tags in tag_sets(per_class_counts, rng):
            ytid = "".join(rng.choice(list(YTID_CHARACTERS), 11))
            start = 10.0 * int(rng.integers(0, 30))
            rows.append((ytid, start, [labels[k][0] for k in tags]))
            if rng.random() < missing:
                continue
            write_wav(folder / FOLDERS[name] / file_name(pattern, ytid, start, extension),
                      tagged_signal(tags, n_classes, seconds, RATE, rng), RATE)
        (folder / f"{name}.csv").write_text("\n".join(segment_lines(rows)) + "\n")
    return folder
