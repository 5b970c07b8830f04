"""The ESC-50, UrbanSound8K, Speech Commands v2 and IEMOCAP recipes end to end, through their
real command lines, on synthetic copies written in the official release layouts."""

import csv
import math

import pytest

from petl_modules.synthetic import make_dataset, official_class_names

from conftest import read_results, run_train

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes

CLIP = 0.5  # seconds per synthetic clip: enough for the tests' 64 input frames


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """One small synthetic copy of each release, in its official layout (written once)."""
    root = tmp_path_factory.mktemp("releases")
    return {name: make_dataset(name, root, per_class=1, seconds=CLIP)
            for name in ("ESC50", "UrbanSound8K", "SpeechCommands", "IEMOCAP")}


def read_manifest(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def check_fold_results(results, dataset, folds):
    assert results["dataset"] == dataset
    assert [f["fold"] for f in results["folds"]] == folds
    tests = [f["test_accuracy"] for f in results["folds"]]
    for fold in results["folds"]:
        assert 0.0 <= fold["valid_accuracy"] <= 1.0 and 0.0 <= fold["test_accuracy"] <= 1.0
    mean = sum(tests) / len(tests)
    assert results["test_accuracy_mean"] == pytest.approx(mean)
    assert results["test_accuracy_std"] == pytest.approx(
        math.sqrt(sum((t - mean) ** 2 for t in tests) / len(tests)))


def test_esc50_recipe_runs_one_fold_with_rotating_split_and_specaugment(releases, tiny_ast, tmp_path):
    out = tmp_path / "esc50"
    # --data_folder is the parent of ESC-50-master: accepted too.
    run_train("ESC50", "linear", releases["ESC50"].parent, tiny_ast, out, "--fold=2")

    results = read_results(out)
    check_fold_results(results, "ESC50", [2])
    assert results["folds"][0]["class_names"] == official_class_names("ESC50")
    rows = read_manifest(out / "manifests" / "all.csv")
    assert len(rows) == 50 * 5 and {r["fold"] for r in rows} == {"1", "2", "3", "4", "5"}
    assert all(r["wav"].startswith("$data_root/audio/") for r in rows)
    # Label index = the release's target: the encoder keeps the official order.
    encoder = (out / "fold_2" / "label_encoder.txt").read_text()
    assert "'dog' => 0" in encoder and "'hand_saw' => 49" in encoder
    composed = (out / "fold_2" / "hyperparams.yaml").read_text()
    assert "petl_modules.training.augment.SpecAugment" in composed and "freq_mask: 24" in composed
    assert not (out / "fold_1").exists()


def test_urbansound8k_runs_all_folds_and_aggregates_mean_std(releases, tiny_ast, tmp_path):
    out = tmp_path / "us8k"
    # All 10 folds (the default), one training clip per class to stay fast.
    run_train("UrbanSound8K", "linear", releases["UrbanSound8K"], tiny_ast, out,
              "--few_shot_samples=1")

    results = read_results(out)
    check_fold_results(results, "UrbanSound8K", list(range(1, 11)))
    for k in range(1, 11):
        assert (out / f"fold_{k}" / "fold_result.json").is_file()
    # Every format of the release (8-96 kHz, stereo, u8/16/24/32-bit, float) was read whole.
    rows = read_manifest(out / "manifests" / "all.csv")
    assert len(rows) == 10 * 10
    assert {float(r["duration"]) for r in rows} == {CLIP}


def test_speechcommands_recipe_uses_official_lists(releases, tiny_ast, tmp_path):
    out = tmp_path / "gsc"
    run_train("SpeechCommands", "linear", releases["SpeechCommands"], tiny_ast, out)

    results = read_results(out)
    check_fold_results(results, "SpeechCommands", [None])
    manifests = {s: read_manifest(out / "manifests" / f"{s}.csv") for s in ("train", "valid", "test")}
    assert {s: len(rows) for s, rows in manifests.items()} == {"train": 35, "valid": 35, "test": 35}
    listed = (releases["SpeechCommands"] / "validation_list.txt").read_text().split()
    assert sorted(r["wav"].replace("$data_root/", "") for r in manifests["valid"]) == sorted(listed)
    ids = [r["ID"] for rows in manifests.values() for r in rows]
    assert len(ids) == len(set(ids))  # train/valid/test disjoint
    assert {r["label"] for r in manifests["train"]} == set(official_class_names("SpeechCommands"))
    assert not any("_background_noise_" in r["wav"] for rows in manifests.values() for r in rows)


def test_iemocap_recipe_fold_holds_out_one_session_split_by_speaker(releases, tiny_ast, tmp_path):
    out = tmp_path / "iemocap"
    # Fold 4: session 2 held out, its male speaker validates, its female speaker tests.
    run_train("IEMOCAP", "linear", releases["IEMOCAP"], tiny_ast, out, "--fold=4")

    results = read_results(out)
    check_fold_results(results, "IEMOCAP", [4])
    rows = read_manifest(out / "manifests" / "all.csv")
    # Per session and speaker: neu, hap, exc (-> hap), sad, ang kept; fru and xxx left out.
    assert len(rows) == 5 * 2 * 5
    assert {r["label"] for r in rows} == {"neu", "hap", "sad", "ang"}
    assert any("_script01_1_" in r["ID"] for r in rows) and any("_impro01_" in r["ID"] for r in rows)
    script = next(r for r in rows if "_script01_1_" in r["ID"])
    assert script["wav"] == (f"$data_root/Session{script['session']}/sentences/wav/"
                             f"{script['ID'].rsplit('_', 1)[0]}/{script['ID']}.wav")
    log = (out / "log.txt").read_text()
    assert "Left out 20 utterances" in log
