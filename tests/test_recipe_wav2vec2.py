"""The recipes end to end on tiny wav2vec2-family checkpoints, through their real command lines:
switching backbone is one --backbone_source override, with no yaml per backbone."""

import json

import pytest

from petl_modules.classify import PETLClassifier
from petl_modules.synthetic import make_dataset

from conftest import read_results, run_train

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes

D = 32  # tiny waveform models: hidden 32, 2 layers
CONFORMER_R4 = 2 * D + (D * 8 + 8) + (4 * 31 + 4) + 2 * 4 + (4 * D + D)  # LN, pw 2r, dw k31, BN, pw


@pytest.mark.parametrize("model_type,layout,method,extra,expected", [
    ("wav2vec2", "post_ln", "adapter", ["--reduction_rate=8"], 2 * CONFORMER_R4),  # no LN: post-LN
    ("hubert", "post_ln", "lora", ["--reduction_rate=8"], 2 * 2 * 2 * D * 4),
    ("wavlm", "pre_ln", "prompt_tuning", [], 2 * 25 * D + 2 * D),  # + the final LayerNorm
])
def test_fsc_recipe_runs_on_every_wav2vec2_family(model_type, layout, method, extra, expected,
                                                  waveform_checkpoints, fsc_data, tmp_path):
    out = tmp_path / model_type
    run_train("FSC", method, fsc_data, waveform_checkpoints[model_type, layout], out, *extra)
    results = read_results(out)
    assert results["backbone"] == "wav2vec2" and results["method"] == method
    assert results["trainable_params_without_head"] == expected
    (fold,) = results["folds"]
    assert 0.0 <= fold["test_accuracy"] <= 1.0
    assert fold["hparams"]["clip_seconds"] == pytest.approx(0.64)  # --max_frames=64 / 100

    # The PETL model folder rebuilds the same lobe (clip, normalisation) on its base checkpoint.
    classifier = PETLClassifier.from_folder(out / "petl_model")
    assert classifier.input_processor.config() == {
        "type": "waveform", "clip_samples": 10240, "normalize": True, "sample_rate": 16000}
    wavs = sorted((fsc_data / "wavs").rglob("*.wav"))[:2]
    predictions, unreadable = classifier.classify_files(wavs)
    assert not unreadable and all(p["label"] in fold["class_names"] for p in predictions)


def test_iemocap_recipe_cuts_and_pads_to_8_seconds_on_wav2vec2(tiny_wav2vec2, tmp_path_factory, tmp_path):
    release = make_dataset("IEMOCAP", tmp_path_factory.mktemp("iemocap"), per_class=1)
    out = tmp_path / "iemocap"
    run_train("IEMOCAP", "linear", release, tiny_wav2vec2, out, "--fold=1")
    results = read_results(out)
    assert results["backbone"] == "wav2vec2" and results["trainable_params_without_head"] == 0
    (fold,) = results["folds"]
    assert fold["hparams"]["clip_seconds"] == 8.0
    composed = (out / "fold_1" / "hyperparams.yaml").read_text()
    assert "clip_seconds: 8.0" in composed
    assert json.loads((out / "fold_1" / "fold_result.json").read_text())["fold"] == 1
