"""Warnings a run gives about what it cannot learn or choose well: a backbone too narrow to be a
pretrained one (the plumbing check), and a validation split too small to choose the best epoch on.
(A bottleneck / rank under 4: tests/test_start_warnings.py.)"""

import pytest
from recipe_helpers import run_in_process
from test_audiofolder import recipe_argv

from petl_modules.backbones import Backbone
from petl_modules.backbones.base import MIN_PRETRAINED_HIDDEN
from petl_modules.synthetic import make_dataset
from petl_modules.training.recipe import MIN_VALIDATION_CLIPS, small_validation_warning


def test_a_backbone_narrower_than_any_released_one_checks_plumbing_only(tiny_ast, ast_base_folder):
    """The tiny random AST (64 wide) is flagged; one of AST-base's shape (768) is not (its weights
    are random too: a random backbone of a released shape is not detected, see plumbing_only)."""
    message = Backbone(tiny_ast, max_frames=64).plumbing_only()
    assert "64 wide" in message and "plumbing only" in message and "--backbone_source" in message
    assert Backbone(ast_base_folder, max_frames=64).plumbing_only() is None
    assert 64 < MIN_PRETRAINED_HIDDEN <= 384  # whisper-tiny, the narrowest released encoder


@pytest.mark.parametrize("clips, files, options, expected", [
    (22, 216, {"number_of_epochs": 10, "valid_fraction": 0.1}, "--valid_fraction=0.24 (now 0.1)"),
    (22, 60, {"number_of_epochs": 10, "valid_fraction": 0.3}, "add files (60 in all"),
    (30, 900, {"number_of_epochs": 10}, "more files in the validation split"),  # a release's split
    (MIN_VALIDATION_CLIPS, 500, {"number_of_epochs": 10, "valid_fraction": 0.1}, None),
    (22, 216, {"number_of_epochs": 1, "valid_fraction": 0.1}, None),  # one epoch: nothing to choose
])
def test_a_small_validation_split_warns_how_to_enlarge_it(clips, files, options, expected):
    message = small_validation_warning(clips, options, files)
    if expected is None:
        assert message is None
    else:
        assert f"has {clips} clips" in message and "noisy" in message and expected in message


@pytest.mark.slow
def test_an_own_data_run_on_the_tiny_backbone_gives_both_warnings(tiny_ast, tmp_path, capfd):
    """Both printed once, where the run's log (SpeechBrain's handlers) shows them."""
    data = make_dataset("AudioFolder", tmp_path, per_class=2, seconds=1.0)
    results = run_in_process("AudioFolder", recipe_argv("linear", data, tiny_ast, tmp_path / "run"))
    assert isinstance(results, dict), results
    printed = "".join(capfd.readouterr())
    assert printed.count("checks the plumbing only") == 1
    assert printed.count("the best epoch is chosen on it") == 1
    assert "--valid_fraction=" not in printed  # 24 files: 50 cannot be drawn from them
    assert "add files (24 in all" in printed
