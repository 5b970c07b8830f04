"""The run flow a reader sees (each recipe's main block in SpeechBrain's template order), the
optimiser and schedule declared in the yaml, and method options that are explicit."""

import ast
import math

import pytest
import torch
from speechbrain.utils.epoch_loop import EpochCounter

from petl_modules.backbones import Backbone
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.prompt import prompt_tuning
from petl_modules.options import UnknownOptionError, check_options, keyword_names
from petl_modules.training.brain import ClassificationBrain
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO, TINY_RUN, read_results
from recipe_helpers import run_in_process

RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/train.py"))

# SpeechBrain's template order: parse arguments, DDP group, hparams, experiment folder, prepare on
# the main process (run.prepare: run_on_main, or nothing with --shards), then per fold: datasets
# (run.datasets: fold_datasets, or the shards'), Brain, fit, evaluate; finally the results.
TEMPLATE_ORDER = [
    "parse_arguments", "ddp_init_group", "load_run", "claimed_output_folder", "prepare",
    "unfinished_folds", "fold_hparams", "datasets", "Brain", "fit", "evaluate",
    "finish_fold", "write_results",
]


def _calls_in_order(function):
    """The names of the calls in ``function``'s body, in source order (a Brain class as 'Brain')."""
    calls = sorted((n for n in ast.walk(function) if isinstance(n, ast.Call)),
                   key=lambda n: (n.lineno, n.col_offset))
    names = []
    for call in calls:
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        names.append("Brain" if name.endswith("Brain") else name)
    return names


# ==================================================================== the run flow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_main_reads_top_to_bottom_in_speechbrain_template_order(recipe):
    tree = ast.parse((REPO / "recipes" / recipe / "train.py").read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    steps = [name for name in _calls_in_order(main) if name in TEMPLATE_ORDER]
    assert steps == TEMPLATE_ORDER, steps
    # What is common lives in petl_modules.training.recipe: the main block only shows the order.
    assert len(main.body) <= 6


def test_misspelt_option_in_a_custom_method_yaml_fails_at_build_naming_the_close_match(
        tiny_ast, tmp_path):
    text = (REPO / "hparams" / "adapter.yaml").read_text()
    assert "    reduction_rate: !ref <reduction_rate>" in text  # of the method's config
    method_file = tmp_path / "my_adapter.yaml"
    method_file.write_text(text.replace("    reduction_rate: !ref <reduction_rate>", "    reduction_rat: 8"))
    message = run_in_process("FSC", [
        str(method_file), f"--data_folder={tmp_path / 'no_data'}", f"--backbone_source={tiny_ast}",
        f"--output_folder={tmp_path / 'out'}", *TINY_RUN])
    assert isinstance(message, str) and message.startswith("Error in the configuration")
    assert message.endswith("unknown option 'reduction_rat' of the adapter method; did you mean "
                            "reduction_rate?")
    assert "\n" not in message and not (tmp_path / "out").exists()  # refused before anything


@pytest.mark.slow
def test_rerun_of_a_multi_fold_run_skips_finished_folds_and_reports_all(tmp_path, tiny_ast):
    from petl_modules.synthetic import make_dataset

    data = make_dataset("ESC50", tmp_path / "data", per_class=1, seconds=0.5)
    out = tmp_path / "out"
    args = [str(REPO / "hparams" / "linear.yaml"), f"--data_folder={data}",
            f"--backbone_source={tiny_ast}", f"--output_folder={out}", "--folds=[1,2,3]", *TINY_RUN]
    first = run_in_process("ESC50", args + ["--fold=2"])
    assert [f["fold"] for f in first["folds"]] == [2]
    finished = (out / "fold_2" / "fold_result.json").read_text()

    results = run_in_process("ESC50", args)
    assert [f["fold"] for f in results["folds"]] == [1, 2, 3]
    assert (out / "fold_2" / "fold_result.json").read_text() == finished  # not run again
    assert results["requested_folds"] == [1, 2, 3] and read_results(out) == results
    assert results["trainable_params_without_head"] == 2 * 64  # the header of a skipped fold too


# ==================================================================== optimiser and schedule
def test_optimiser_groups_and_cosine_schedule_come_from_the_yaml_with_steps_filled_in_by_fit(
        tiny_ast, tmp_path):
    hparams = load_hparams(compose_hparams(
        REPO / "hparams" / "adapter.yaml", REPO / "recipes" / "FSC" / "fsc.yaml",
        {"data_folder": str(tmp_path), "backbone_source": str(tiny_ast), "lr": 0.004,
         "head_lr": 0.002, "number_of_epochs": 3, "max_frames": 64, "reduction_rate": 8}))
    assert dict(hparams["param_groups"]) == {"petl_model": 0.004, "classifier": 0.002}
    brain = ClassificationBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                                hparams=hparams, run_opts={"noprogressbar": True})
    loader = torch.utils.data.DataLoader(list(range(7)), batch_size=2)  # 4 steps an epoch
    brain.fit(EpochCounter(0), loader)  # optimisers are made at the start of fit, no epoch runs

    petl, head = brain.optimizer.param_groups
    assert isinstance(brain.optimizer, torch.optim.AdamW) and brain.optimizer.defaults["eps"] == 1e-6
    assert (petl["lr"], head["lr"]) == (0.004, 0.002)
    trainable = [p for p in hparams["petl_model"].parameters() if p.requires_grad]
    assert [id(p) for p in petl["params"]] == [id(p) for p in trainable]
    assert len(head["params"]) == 2  # the head's weight and bias
    scheduler = brain.lr_scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 3 * 4
    for _ in range(6):  # half of the run: half of the initial rate
        brain.optimizer.step()
        scheduler.step()
    assert petl["lr"] == pytest.approx(0.004 * (1 + math.cos(math.pi / 2)) / 2)


# ==================================================================== explicit options
def tiny_lobe(tiny_ast):
    return Backbone(str(tiny_ast), max_frames=64)


def test_misspelt_adapter_option_is_an_error_naming_the_close_match(tiny_ast):
    with pytest.raises(UnknownOptionError, match=r"^unknown option 'reduction_rat' of Adapter; did you "
                                        r"mean reduction_rate\?$"):
        AdaptedBackbone(tiny_lobe(tiny_ast), adapter_class=Adapter, insertion_points=["ffn"],
                        adapter_kwargs={"reduction_rat": 8})


def test_options_of_a_function_adapter_class_are_checked_too(tiny_ast):
    # prompt_tuning forwards to the prompt classes: its own named parameters are its options.
    with pytest.raises(UnknownOptionError, match="'prompt_lenn' of prompt_tuning; did you mean prompt_len"):
        AdaptedBackbone(tiny_lobe(tiny_ast), adapter_class=prompt_tuning,
                        insertion_points=["embeddings"], adapter_kwargs={"prompt_lenn": 4})


def test_unknown_option_without_close_match_lists_the_options():
    with pytest.raises(UnknownOptionError, match="unknown option 'colour' of Thing; its options are "
                                        "size, shape."):
        check_options({"size": 1, "colour": 2}, ["size", "shape"], "Thing")


def test_a_subclass_passing_kwargs_on_keeps_its_bases_options():
    class MyAdapter(Adapter):
        def __init__(self, module, hidden_size, gate=1.0, **kwargs):
            super().__init__(module, hidden_size, **kwargs)

    names = keyword_names(MyAdapter, skip=1)
    assert names[:2] == ["hidden_size", "gate"] and "reduction_rate" in names
    assert "kwargs" not in names and "module" not in names
    assert keyword_names(Adapter, skip=1)[0] == "hidden_size"


def test_extras_reach_only_adapter_classes_that_name_them(tiny_ast):
    seen = []

    def recording(module, hidden_size, layer):
        seen.append((hidden_size, layer))
        return module

    AdaptedBackbone(tiny_lobe(tiny_ast), adapter_class=recording, insertion_points=["ffn"])
    assert seen == [(64, 0), (64, 1)]  # no 'point' nor 'prompt_position': not parameters of it
