"""Every PETL method file runs the FSC recipe for one epoch on the tiny AST (hidden 64, 2 layers)."""

import pytest

from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO, read_results, run_train

pytestmark = pytest.mark.slow  # end-to-end runs of the recipes

d, L, LN = 64, 2, 2 * 64  # tiny AST
BOTTLENECK_R4 = d * 4 + 4 + 4 * d + d  # one bottleneck expert, r = 64 / 16


@pytest.mark.parametrize("method,extra,expected", [
    # conformer, Pfeiffer at FFN, RR 96 -> r = 1, kernel 31 (fsc.yaml): block + LN2 per layer
    ("adapter", [], L * (LN + d * 2 + 2 + 31 + 1 + 2 + d + d + LN) + LN),
    ("lora", ["--reduction_rate=16"], L * 2 * 2 * d * 4 + LN),
    ("prefix_tuning", [], L * 24 * d + LN),
    ("prompt_tuning", ["--pooling=prompts+speech"], L * 25 * d + LN),
    ("dense_moa", ["--reduction_rate=16"], L * (7 * BOTTLENECK_R4 + d * 7 + 7 + LN) + LN),
    ("soft_moa", ["--reduction_rate=16", "--normalize=True"],
     L * (7 * BOTTLENECK_R4 + d * 7 + 1 + LN) + LN),
])
def test_fsc_recipe_runs_each_method_file(method, extra, expected, fsc_data, tiny_ast, tmp_path):
    out = tmp_path / method
    run_train("FSC", method, fsc_data, tiny_ast, out, *extra)
    results = read_results(out)
    assert results["method"] == method
    assert results["trainable_params_without_head"] == expected
    (fold,) = results["folds"]
    assert 0.0 <= fold["test_accuracy"] <= 1.0


def test_wrong_method_option_stops_the_recipe_before_reading_data(fsc_data, tiny_ast, tmp_path):
    proc = run_train("FSC", "prefix_tuning", fsc_data, tiny_ast, tmp_path / "odd", "--prompt_len=25",
                     check=False)
    assert proc.returncode != 0
    assert "prompt_len=25 is odd" in proc.stdout and "--prompt_len=26" in proc.stdout
    assert not (tmp_path / "odd" / "manifests").exists()


@pytest.mark.parametrize("method,paper", [("adapter", 270_720), ("lora", 221_184),
                                          ("prefix_tuning", 221_184), ("prompt_tuning", 230_400)])
def test_method_file_defaults_are_the_papers_settings(method, paper, ast_base_folder, tmp_path):
    """The method files' defaults give the first paper's counts on AST-base (final LN excluded)."""
    text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
                           {"data_folder": "unused", "backbone_source": str(ast_base_folder),
                            "output_folder": str(tmp_path)})
    model = load_hparams(text)["petl_model"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) - 2 * 768 == paper
