"""The trainable counts of every method file on AST-base, as docs/methods.md prints them: the
table's AST-base column is what the method files build (random AST-base weights, FSC recipe)."""

import re

from petl_modules.methods import METHODS
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO

LN = 2 * 768  # the final LayerNorm, which every method but BitFit and the layer sum trains
# Closed forms (AST-base: D 768, 12 layers, FFN 3072), the final LayerNorm included.
AST_BASE_COUNTS = {
    "linear": LN,
    "full_ft": 85_615_872,
    "bitfit": 12 * 8448 + 768,
    "lora": 12 * 2 * 2 * 768 * 6 + LN,
    "dora": 12 * 2 * (2 * 768 * 6 + 768) + LN,
    "ia3": 12 * (768 + 768 + 3072) + LN,
    "vera": 12 * 2 * (256 + 768) + LN,
    "layer_sum": 13,  # one weight per layer and the embedding; the final LayerNorm stays frozen
    "prefix_tuning": 12 * 24 * 768 + LN,
    "prompt_tuning": 12 * 25 * 768 + LN,
    "adapter": 12 * (21_024 + LN) + LN,
    "dense_moa": 12 * (7 * 9_990 + 768 * 7 + 7 + LN) + LN,
    "soft_moa": 12 * (7 * 9_990 + 768 * 7 + LN) + LN,
}


def docs_ast_base_column():
    """``{method: count}`` of docs/methods.md's per-backbone table (its AST-base column)."""
    text = (REPO / "docs" / "methods.md").read_text()
    rows = re.findall(r"^\| `(\w+)\.yaml` \| ([\d,]+)[^|]*\| [\d,]+", text, re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_ast_base_counts_of_every_method_file_are_the_docs(ast_base_folder, tmp_path):
    assert set(AST_BASE_COUNTS) == set(METHODS), "a method file without a pinned count"
    counts = {}
    for method in METHODS:
        text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
                               {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                                "backbone_source": str(ast_base_folder)})
        model = load_hparams(text)["petl_model"]
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == AST_BASE_COUNTS
    assert docs_ast_base_column() == AST_BASE_COUNTS
