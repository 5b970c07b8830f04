"""FSD50K and AudioSet preparation on their release layouts (generated), the multi-label scores
(d-prime, per-class CSV), class-balanced sampling and mixup."""

import csv
import json
import sys

import numpy as np
import pytest
import torch

from petl_modules.synthetic import generator_module, make_dataset
from petl_modules.training import metrics
from petl_modules.training.mixup import BatchMixup, WaveformMixup, mix_waveforms
from petl_modules.training.prepare import DataError
from petl_modules.training.sampling import class_balanced_weights

from recipe_helpers import recipe_module


def prepare_module(recipe):
    """The recipe's ``<name>_prepare`` module (imported by its train.py)."""
    recipe_module(recipe)
    return sys.modules[f"{recipe.lower()}_prepare"]


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# ==================================================================== FSD50K
@pytest.fixture(scope="module")
def fsd50k(tmp_path_factory):
    return make_dataset("FSD50K", tmp_path_factory.mktemp("fsd50k"), per_class=1, seconds=0.2)


def test_fsd50k_manifests_follow_the_release_splits_with_vocabulary_classes(fsd50k, tmp_path):
    prepare = prepare_module("FSD50K")
    names = prepare.options_from_data({"data_folder": str(fsd50k)})["class_names"]
    assert names[0] == "Accelerating_and_revving_and_vroom" and len(names) == 12
    prepare.prepare_fsd50k(str(fsd50k.parent), tmp_path, names)  # the parent folder works too
    dev = read_csv(fsd50k / "FSD50K.ground_truth" / "dev.csv")
    rows = {split: read_csv(tmp_path / f"{split}.csv") for split in ("train", "valid", "test")}
    assert len(rows["train"]) == sum(r["split"] == "train" for r in dev)
    assert len(rows["valid"]) == sum(r["split"] == "val" for r in dev)
    assert all(r["wav"].startswith("$data_root/FSD50K.eval_audio/") for r in rows["test"])
    several = next(r for r in dev if "," in r["labels"])
    written = next(r for r in rows["train"] + rows["valid"] if r["ID"] == several["fname"])
    assert written["label"] == several["labels"].replace(",", ";")


def test_fsd50k_names_a_missing_clip_and_an_unknown_label(fsd50k, tmp_path):
    import shutil

    copy = tmp_path / "FSD50K"
    shutil.copytree(fsd50k, copy)
    prepare = prepare_module("FSD50K")
    names = prepare.options_from_data({"data_folder": str(copy)})["class_names"]
    first = read_csv(copy / "FSD50K.ground_truth" / "eval.csv")[0]["fname"]
    (copy / "FSD50K.eval_audio" / f"{first}.wav").unlink()
    with pytest.raises(DataError, match=f"FSD50K.eval_audio/{first}.wav: missing file"):
        prepare.prepare_fsd50k(str(copy), tmp_path / "m1", names)
    with pytest.raises(DataError, match="label 'Bark' is not in"):
        prepare.prepare_fsd50k(str(copy), tmp_path / "m2", [n for n in names if n != "Bark"],
                               skip_bad_files=False)
    prepare.prepare_fsd50k(str(copy), tmp_path / "m3", names, skip_bad_files=True)
    assert f"{first}.wav: missing file" in (tmp_path / "m3" / "skipped_files.txt").read_text()


# ==================================================================== AudioSet
def audioset(tmp_path, **options):
    return make_dataset("AudioSet", tmp_path, per_class=2, seconds=0.1, **options)


def prepare_audioset(data, save, **options):
    prepare = prepare_module("AudioSet")
    # Few clips per split: the share missing varies a lot; the threshold has its own test.
    options = {"data_folder": str(data), "valid_fraction": 0.2, "max_missing": 0.6, **options}
    names = prepare.options_from_data(options)["class_names"]
    prepare.prepare_audioset(options, save, names)
    return names


def test_audioset_segment_lists_are_read_as_google_writes_them(tmp_path):
    prepare = prepare_module("AudioSet")
    path = tmp_path / "eval_segments.csv"
    path.write_text("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                    "# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n"
                    "# YTID, start_seconds, end_seconds, positive_labels\n"
                    '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
                    '-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"\n')
    rows = list(prepare.read_segments(path))
    assert [r[1:] for r in rows] == [("--PJHxphWEs", "30.000", "40.000", ["/m/09x0r", "/t/dd00088"]),
                                     ("-0RWZT-miFs", "420.000", "430.000", ["/m/03v3yw"])]
    assert prepare.file_stem(prepare.AUDIO_PATTERNS["y_ytid_start_end"], *rows[0][1:4]) == \
        "Y--PJHxphWEs_30.000_40.000"
    assert prepare.file_stem("{ytid}_{start_int:06d}", *rows[1][1:4]) == "-0RWZT-miFs_000420"


@pytest.mark.parametrize("pattern,extension", [("Y{ytid}", ".wav"), ("{ytid}_{start_int}", ".flac"),
                                               ("{ytid}_{start_ms}_{end_ms}", ".flac")])
def test_audioset_finds_the_files_whatever_their_naming_and_counts_the_missing(pattern, extension,
                                                                               tmp_path):
    data = audioset(tmp_path / "data", pattern=pattern, extension=extension)
    names = prepare_audioset(data, tmp_path / "m")
    report = json.loads((tmp_path / "m" / "data_report.json").read_text())["missing_clips"]
    missing = read_csv(tmp_path / "m" / "missing_clips.txt")
    assert sum(report[s]["missing"] for s in ("train", "valid", "test")) == len(missing) > 0
    found = sum(len(read_csv(tmp_path / "m" / f"{s}.csv")) for s in ("train", "valid", "test"))
    written = [f for f in data.rglob(f"*{extension}") if "unbalanced" not in str(f)]
    assert found == len(written)  # every balanced and eval file found
    per_class = read_csv(tmp_path / "m" / "missing_clips.csv")
    assert [r["class"] for r in per_class] == names and names[1] == "Male speech, man speaking"
    assert sum(int(r["test_segments"]) for r in per_class) >= report["test"]["segments"]


def test_audioset_stops_when_too_many_clips_are_missing_and_names_where_it_looked(tmp_path):
    data = audioset(tmp_path / "data", missing=0.5)
    with pytest.raises(DataError, match=r"Too many missing clips \(train: .*above --max_missing=0.25"):
        prepare_audioset(data, tmp_path / "m", max_missing=0.25)
    prepare_audioset(data, tmp_path / "m2", max_missing=0.9)
    assert (tmp_path / "m2" / "train.csv").is_file()


def test_audioset_full_subset_adds_the_unbalanced_list_and_keeps_the_validation_segments(tmp_path):
    data = audioset(tmp_path / "data")
    prepare_audioset(data, tmp_path / "balanced")
    prepare_audioset(data, tmp_path / "full", subset="full")
    ids = {name: {s: {r["ID"] for r in read_csv(tmp_path / name / f"{s}.csv")}
                  for s in ("train", "valid")} for name in ("balanced", "full")}
    assert ids["full"]["valid"] == ids["balanced"]["valid"]
    assert ids["balanced"]["train"] < ids["full"]["train"]


def test_audioset_refuses_an_unknown_subset_pattern_or_mid(tmp_path):
    data = audioset(tmp_path / "data")
    with pytest.raises(DataError, match="--subset=half"):
        prepare_audioset(data, tmp_path / "m", subset="half")
    with pytest.raises(DataError, match="No audio file named after a segment"):
        prepare_audioset(data, tmp_path / "m", audio_pattern="ytid")
    with pytest.raises(DataError, match=r"names \{ytid\}"):
        prepare_audioset(data, tmp_path / "m", audio_pattern="{id}")
    lines = (data / "eval_segments.csv").read_text().splitlines()
    lines[3] = lines[3].replace("/m/0syn", "/m/0other")
    (data / "eval_segments.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="mid /m/0other.* is not in class_labels_indices.csv"):
        prepare_audioset(data, tmp_path / "m")


def test_generators_write_long_tailed_multilabel_data():
    module = generator_module("AudioSet")
    assert module.DEMO["release"] == "audioset"
    counts = [2 * 8 // (1 + k) for k in range(4)]
    assert counts == sorted(counts, reverse=True)


# ==================================================================== scores
def test_d_prime_and_per_class_scores_follow_the_audioset_convention(tmp_path):
    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 1, 1]])
    scores = np.array([[0.9, 0.2, 0.5], [0.3, 0.8, 0.5], [0.6, 0.4, 0.5], [0.1, 0.7, 0.5]])
    found = metrics.multilabel_scores(targets, scores, [0.5, 0.5, 0.5])
    assert found["auc"][:2] == [1.0, 1.0] and np.isnan(found["auc"][2])  # class 2: no negative
    assert found["mauc"] == 1.0 and found["d_prime"] == pytest.approx(
        np.sqrt(2) * __import__("scipy").stats.norm.ppf(1.0))
    assert metrics.d_prime(0.5) == 0.0
    path = metrics.write_per_class_scores(tmp_path / "c.csv", found, ["a", "b", "c"], [0.5, 0.4, 0.3])
    rows = read_csv(path)
    assert [r["class"] for r in rows] == ["a", "b", "c"] and rows[2]["auc"] == ""
    assert rows[0]["positives"] == "2" and float(rows[1]["threshold"]) == 0.4


# ==================================================================== sampling and mixup
def test_class_balanced_weights_are_asts_label_frequency_weights():
    labels = [[0], [0], [0], [1], [0, 1]]
    weights = class_balanced_weights(labels, 2)
    w0, w1 = 1000 / 4.01, 1000 / 2.01
    assert weights.tolist() == pytest.approx([w0, w0, w0, w1, w0 + w1])


def test_batch_mixup_mixes_inputs_and_targets_with_the_same_weights():
    torch.manual_seed(0)
    mixup = BatchMixup(alpha=10.0, prob=1.0)
    x = torch.arange(8.0).view(4, 2)
    lam, partner = mixing = mixup.draw(4)
    mixed, lengths = mixup.mix_inputs(x, torch.ones(4), mixing)
    assert torch.allclose(mixed, lam[:, None] * x + (1 - lam[:, None]) * x[partner])
    targets = torch.eye(4)
    soft = BatchMixup.mix(targets, mixing)
    assert torch.allclose(soft.sum(dim=1), torch.ones(4)) and (0.2 < lam).all() and (lam < 0.8).all()
    none = BatchMixup(alpha=10.0, prob=0.0)
    assert torch.equal(none.draw(4)[0], torch.ones(4))


def test_waveform_mixup_partners_depend_on_seed_epoch_and_clip_alone():
    mixup = WaveformMixup([f"c{k}" for k in range(10)], seed=3, alpha=10.0, prob=1.0)
    first = [mixup(f"c{k}") for k in range(10)]
    assert first == [WaveformMixup([f"c{k}" for k in range(10)], 3, 10.0, 1.0)(f"c{k}")
                     for k in range(10)]
    mixup.set_epoch(2)
    assert [mixup(f"c{k}") for k in range(10)] != first
    mixed = mix_waveforms(torch.ones(3), torch.zeros(5), 0.25)
    assert mixed.tolist() == [0.25, 0.25, 0.25, 0.0, 0.0]
