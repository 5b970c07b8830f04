"""The recipes' command line (``petl_modules.training.arguments``): every argument kept whole
(SpeechBrain's parser splits values on ``=``), SpeechBrain's run options as SpeechBrain parses
them, and ``as_argument``, the text of a value that reads back as the same value."""

import ruamel.yaml
import pytest
import speechbrain as sb

from petl_modules.training.arguments import (
    CommandLineError,
    as_argument,
    parse_arguments,
    read_value,
    split_arguments,
)
from petl_modules.training.compose import compose_hparams

from conftest import REPO

METHOD = "hparams/lora.yaml"


def overrides_of(*args):
    return parse_arguments([METHOD, *args])[2]


# ==================================================================== values kept whole
@pytest.mark.parametrize("value", [
    "results/sweeps/t/FSC/lora/reduction_rate=8,lora_alpha=16/seed1",  # a sweep's run folder
    "/data/a=b/--seed=3",  # '=' and '=--key=' inside a value are not options
    "/data/my data",  # spaces
    "a,b,c",  # commas
    "x # y",  # would be a yaml comment
    "a: b",  # would be a yaml mapping
    "- a",  # would be a yaml list
    "--not-an-option",  # only in the --key=value form
])
def test_a_value_holding_equals_spaces_commas_or_yaml_syntax_arrives_as_written(value):
    assert overrides_of(f"--output_folder={value}") == {"output_folder": value}
    if not value.startswith("--"):
        assert overrides_of("--output_folder", value) == {"output_folder": value}


def test_speechbrain_rewrites_such_a_value_and_ours_does_not():
    folder = "results/lora/reduction_rate=8/seed1"
    _, _, theirs = sb.parse_arguments([METHOD, f"--output_folder={folder}"])
    assert theirs == "output_folder: results/lora/reduction_rate 8/seed1"  # the defect
    assert overrides_of(f"--output_folder={folder}")["output_folder"] == folder


@pytest.mark.parametrize("text, value", [
    ("8", 8), ("0.5", 0.5), ("1e-05", 1e-05), ("True", True), ("False", False), ("null", None),
    ("", None), ("'8'", "8"), ('"True"', "True"), ("[q, v]", ["q", "v"]), ("[1,2,3]", [1, 2, 3]),
    ("{a: 1}", {"a": 1}), ("all", "all"), ("yes", "yes"),
])
def test_a_value_that_is_one_yaml_value_is_read_as_speechbrain_reads_it(text, value):
    assert read_value(text) == value and isinstance(read_value(text), str) == isinstance(value, str)
    assert overrides_of(f"--key={text}")["key"] == value


def test_a_tag_in_a_hand_written_command_stays_a_tag_as_in_speechbrain():
    tagged = overrides_of("--output_folder=!ref results/<seed>")["output_folder"]
    assert isinstance(tagged, ruamel.yaml.comments.TaggedScalar) and tagged.tag.value == "!ref"


def test_key_value_and_key_space_value_give_the_same_options():
    assert overrides_of("--seed=3", "--lora_targets=[q, v]", "--lr", "-0.5") == \
        overrides_of("--seed", "3", "--lora_targets", "[q, v]", "--lr=-0.5")


# ==================================================================== SpeechBrain's run options
@pytest.mark.parametrize("argv", [
    [METHOD, "--device", "cuda:1", "--precision=bf16", "--seed=3"],
    [METHOD, "--device=cpu", "--precision", "fp16", "--eval_precision=bf16", "--debug",
     "--noprogressbar", "--seed", "3", "--batch_size=4"],
    [METHOD, "--jit_module_keys", "a", "b", "--ckpt_interval_steps=5", "--test_only"],
    [METHOD, "--distributed_backend=gloo", "--data_folder=/data/fsc", "--lora_targets=[q, v]"],
])
def test_run_options_and_overrides_are_speechbrains_where_speechbrain_reads_them_right(argv):
    ours = parse_arguments(argv)
    theirs = sb.parse_arguments(argv)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]  # RunOptions: every field, and which were given
    assert ours[2] == dict(ruamel.yaml.YAML().load(theirs[2]) or {})


def test_checkpoint_minutes_take_fractions_and_torch_launch_rank_is_accepted():
    _, run_opts, overrides = parse_arguments([METHOD, "--ckpt_interval_minutes=0.1", "--local-rank=1",
                                              "--local_rank", "0", "--seed=1"])
    assert run_opts["ckpt_interval_minutes"] == 0.1 and "ckpt_interval_minutes" in run_opts.overridden_args
    assert overrides == {"seed": 1}


@pytest.mark.parametrize("argv, message", [
    ([METHOD, "--seed"], "--seed needs a value: --seed=VALUE"),
    ([METHOD, "--seed=1", "--seed=2"], "--seed is given twice"),
    ([METHOD, "--data_folder", "/a", "b"], "'b' (after /a) is not an option"),
    ([METHOD, "--precision=fp8"], "argument --precision: invalid choice: 'fp8'"),
    ([METHOD, "--dev=cpu"], None),  # no abbreviation: an override named 'dev' (the yaml refuses it)
    ([METHOD, "--device"], "--device needs a value"),
    ([METHOD, "--ckpt_interval_minutes=-1"], "--ckpt_interval_minutes must be >= 0"),
    ([METHOD, "--a.b=1"], "'a.b' is not an option name"),
    (["--seed=1"], "no method file"),
])
def test_an_argument_that_cannot_be_read_is_one_error_line_naming_it(argv, message, capsys):
    if message is None:
        assert parse_arguments(argv)[2] == {"dev": "cpu"}
        return
    with pytest.raises(SystemExit) as exit_:
        parse_arguments(argv)
    text = str(exit_.value.code)
    assert text.startswith("Error on the command line: ") and message in text and "\n" not in text


def test_a_sweep_folder_name_reaches_the_composed_configuration_unchanged(tiny_ast, tmp_path):
    folder = tmp_path / "FSC" / "lora" / "reduction_rate=8,lora_alpha=4" / "seed1"
    hparams_file, _, overrides = parse_arguments([
        str(REPO / METHOD), f"--output_folder={folder}", f"--data_folder={tmp_path}/data=x",
        f"--backbone_source={tiny_ast}", "--reduction_rate=8", "--lora_alpha=4"])
    text = compose_hparams(hparams_file, REPO / "recipes" / "FSC" / "fsc.yaml", overrides)
    composed = ruamel.yaml.YAML().load(text)
    assert composed["output_folder"] == str(folder)
    assert composed["data_folder"] == f"{tmp_path}/data=x"
    assert (composed["reduction_rate"], composed["lora_alpha"]) == (8, 4)


# ==================================================================== as_argument
@pytest.mark.parametrize("value", [
    8, -3, 0.1, 1e-05, float("inf"), True, False, None, "8", "True", "null", "", "a: b", "x # y",
    "!apply:os.system [echo]", "*alias", "&anchor x", "[1, 2]", "it's", "a=b", "/data/my data",
    [1, "a b", "c,d", "8", True, None], [], ["!ref <x>"],
])
def test_every_plain_value_reads_back_the_same_and_never_as_a_tag(value):
    text = as_argument(value)
    back = read_value(text)
    assert back == value and not isinstance(back, ruamel.yaml.comments.TaggedScalar)
    assert split_arguments([METHOD, f"--key={text}"])[2] == {"key": text}


@pytest.mark.parametrize("value", ["a\nb", "tab\there", {"a": 1}, [[1]], float("nan")])
def test_a_value_no_command_line_can_carry_is_refused(value):
    with pytest.raises(ValueError):
        as_argument(value)


def test_the_parser_of_speechbrains_run_options_is_the_one_we_adjust():
    """Pins the SpeechBrain internals ``arguments`` relies on (RunOptions._create_parser and its
    actions): a SpeechBrain upgrade that changes them fails here, not in a user's run."""
    from speechbrain.utils.run_opts import RunOptions

    parser = RunOptions._create_parser()
    dests = {a.dest: a for a in parser._actions}
    assert dests["ckpt_interval_minutes"].type is int  # ours takes fractions
    assert dests["debug"].nargs == 0 and dests["jit_module_keys"].nargs == "*"
    assert set(RunOptions().as_dict()) >= {"device", "precision", "overridden_args"}
    with pytest.raises(CommandLineError):
        split_arguments([])
