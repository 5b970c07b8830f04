"""Each method is one config class in the registry: its typed options are the single definition of
the method file's keys, of the option checks (type, allowed values, range, close matches), of a
model folder's method config and of the docs' options table."""

import dataclasses
import re

import pytest
import ruamel.yaml

from petl_modules.methods import METHODS, method_config
from petl_modules.methods.config import options_table
from petl_modules.options import OptionError, UnknownOptionError

from conftest import REPO

OPTIONS = [(name, option) for name in sorted(METHODS) for option in METHODS[name].options()]


def method_file(name):
    return ruamel.yaml.YAML().load((REPO / "hparams" / f"{name}.yaml").read_text())


def test_every_method_file_is_a_registered_method_and_every_method_has_its_file():
    assert sorted(p.stem for p in (REPO / "hparams").glob("*.yaml")) == sorted(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_method_file_builds_its_config_from_its_plain_options_with_the_configs_defaults(name):
    cls = METHODS[name]
    tree = method_file(name)
    assert tree["method"] == name
    node = tree["method_config"]
    assert node.tag.value == f"!new:{cls.__module__}.{cls.__name__}"
    given = dict(node) if isinstance(node, dict) else {}
    assert list(given) == list(cls.options())  # every option, in the config's order
    for option, spec in cls.options().items():
        assert str(given[option].tag.value) == "!ref" and str(given[option]) == f"<{option}>"
        assert tree[option] == spec.default, f"{name}.yaml: {option} is {tree[option]!r}, the config says {spec.default!r}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_defaults_round_trip_as_plain_json(name):
    config = METHODS[name]()
    assert METHODS[name].from_dict(config.to_dict()) == config
    assert all(isinstance(v, (str, int, float, bool)) for v in config.to_dict().values())


def wrong_values(spec):
    """Values an option of ``spec`` must refuse: a list always; a string where it takes none or
    only its choices; True where it takes no bool; 1.5 where it takes whole numbers only."""
    kinds = spec.kinds()
    wrong = [["a", "list"]]
    if str not in kinds or spec.choices is not None:
        wrong.append("not a choice")
    if bool not in kinds:
        wrong.append(True)
    if int in kinds and float not in kinds:
        wrong.append(1.5)
    return wrong


@pytest.mark.parametrize("name, option", OPTIONS, ids=[f"{n}.{o}" for n, o in OPTIONS])
def test_a_value_of_another_type_is_refused_naming_the_option(name, option):
    for value in wrong_values(METHODS[name].options()[option]):
        with pytest.raises(OptionError, match=rf"^{option}=.* of the {name} method is not valid: it takes"):
            method_config(name, {option: value})


RANGED = [(n, o) for n, o in OPTIONS if METHODS[n].options()[o].minimum is not None]


@pytest.mark.parametrize("name, option", RANGED, ids=[f"{n}.{o}" for n, o in RANGED])
def test_a_number_below_its_range_is_refused_naming_the_bound(name, option):
    spec = METHODS[name].options()[option]
    with pytest.raises(OptionError, match=rf"{option}=.* is out of range: it must be >"):
        method_config(name, {option: spec.minimum - 1})


def test_a_misspelt_option_names_the_close_match_and_an_unknown_method_too():
    with pytest.raises(UnknownOptionError, match="unknown option 'num_adapter' of the soft_moa method; "
                                                 "did you mean num_adapters"):
        method_config("soft_moa", {"num_adapter": 3})
    with pytest.raises(OptionError, match="Unknown method 'soft_mao'.*Did you mean soft_moa"):
        method_config("soft_mao")


def test_checks_across_options():
    with pytest.raises(OptionError, match="prompt_len=23 is odd: prefix tuning splits"):
        method_config("prefix_tuning", {"prompt_len": 23})
    with pytest.raises(OptionError, match="lora_targets: unknown target 'Wx'"):
        method_config("lora", {"lora_targets": "Wq,Wx"})


def test_every_option_has_a_one_line_help():
    for name, cls in METHODS.items():
        for field in dataclasses.fields(cls):
            assert "option" in field.metadata, f"{name}.{field.name} is not declared with option()"
            assert field.metadata["option"].help and "\n" not in field.metadata["option"].help


def test_the_docs_options_table_is_made_from_the_configs():
    text = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    table = re.search(r"options_table\) -->\n(.*?)\n<!-- end of the options table -->", text, re.S)
    assert table, "docs/methods.md has no generated options table"
    assert table.group(1).splitlines() == options_table(), (
        "docs/methods.md's options table is not what the configs say: paste "
        "petl_modules.methods.config.options_table() between its markers")
