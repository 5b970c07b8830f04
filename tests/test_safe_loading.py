"""A PETL model folder is data: loading it never executes what it says.

Each crafted folder carries a payload that would create a marker file if anything in it were
instantiated, imported or unpickled; the tests check that the load is refused (or, for the legacy
yaml text, ignored) and that the marker does not exist. Loading goes through the three entry
points a user has: ``load_petl_model`` / ``PETLClassifier.from_folder``, ``python -m
petl_modules.classify`` and ``python -m petl_modules.export``.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules import classify as classify_cli
from petl_modules import export as export_cli
from petl_modules.training.compose import compose_hparams, load_hparams
from petl_modules.training.pretrained import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    PETLModelError,
    build_config,
    load_petl_model,
    save_petl_model,
)

from conftest import REPO

LEGACY = REPO / "tests" / "data" / "legacy_v1"
BASE = LEGACY / "tiny_ast"  # hidden 32, 1 layer: the base of the legacy folders
FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


class Payload:
    """Pickling this object records a call that would create ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def legacy_waveforms():
    expected = json.loads((LEGACY / "expected_v1.json").read_text())
    generator = torch.Generator().manual_seed(expected["generator_seed"])
    wavs = [0.1 * torch.randn(int(16000 * s), generator=generator) for s in expected["seconds"]]
    return wavs, expected["probabilities"]


def probabilities(modules, wavs):
    processor = modules["petl_model"].adapted_model.input_processor
    inputs, lengths = batch_pad_right([processor(w) for w in wavs])
    with torch.no_grad():
        hidden, mask = modules["petl_model"](inputs, lengths)
        return torch.softmax(modules["classifier"](hidden, mask), dim=-1)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """A current-format (format_version 2) LoRA folder on the legacy tiny base."""
    tmp = tmp_path_factory.mktemp("good")
    text = compose_hparams(REPO / "hparams" / "lora.yaml", FSC_YAML, {
        "data_folder": str(tmp), "output_folder": str(tmp / "out"), "backbone_source": str(BASE),
        "max_frames": 64, "reduction_rate": 8})
    hparams = load_hparams(text)
    save_petl_model(tmp / "petl_model", hparams["modules"],
                    build_config(hparams, [f"c{i}" for i in range(31)]))
    return tmp / "petl_model"


def crafted(good_folder, tmp_path, edit_config=None, edit_weights=None):
    """A copy of ``good_folder`` with its config and/or weights changed."""
    folder = tmp_path / "crafted"
    shutil.copytree(good_folder, folder)
    if edit_config:
        config = json.loads((folder / CONFIG_FILE).read_text())
        config = edit_config(config)
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / CONFIG_FILE).write_text(text)
    if edit_weights:
        edit_weights(folder / WEIGHTS_FILE)
    return folder


def loaders(folder, tmp_path):
    """Every way a user loads a folder: (name, callable raising or returning an exit code)."""
    return [
        ("load_petl_model", lambda: load_petl_model(folder, check=False)),
        ("classify", lambda: classify_cli.main([str(folder), str(tmp_path / "x.wav")])),
        ("export", lambda: export_cli.main([str(folder), str(tmp_path / "export")])),
    ]


def option(key, value):
    def edit(config):
        config["options"][key] = value
        return config
    return edit


def top(key, value):
    def edit(config):
        config[key] = value
        return config
    return edit


# (case id, edit of petl_config.json, what the error message says). The marker is created by any
# of them only if the folder's content were executed.
CRAFTED_CONFIGS = [
    ("apply_tag_in_option", lambda m: option("lora_targets", f"!apply:os.system ['touch {m}']"),
     "YAML tag"),
    ("new_tag_in_option", lambda m: option("init", f"!new:pathlib.Path.touch ['{m}']"), "YAML tag"),
    ("name_tag_in_option", lambda m: option("init", "!name:os.system"), "YAML tag"),
    ("module_tag_in_option", lambda m: option("init", "!module:os"), "YAML tag"),
    ("tag_in_a_list_option", lambda m: option("folds", [1, f"!apply:os.system ['touch {m}']"]),
     "YAML tag"),
    ("option_naming_an_object", lambda m: option("petl_model", "x"), "names an object"),
    ("dunder_option", lambda m: option("__set_seed", 1), "not an option name"),
    ("nested_option", lambda m: option("lr", {"a": 1}), "not a plain value"),
    ("unknown_top_level_key", lambda m: top("preprocess", f"!apply:os.system ['touch {m}']"),
     "unknown key 'preprocess'"),
    ("method_outside_the_registry", lambda m: top("method", "nonexistent"), "not one of"),
    ("method_as_a_dotted_path", lambda m: top("method", "os.system"), "not a method name"),
    ("missing_method", lambda m: (lambda c: {k: v for k, v in c.items() if k != "method"}),
     "missing key 'method'"),
    ("newer_format", lambda m: top("format_version", FORMAT_VERSION + 1), "newer version"),
    ("class_names_not_strings", lambda m: top("class_names", [1, 2]), "list of strings"),
    ("too_few_class_names", lambda m: top("class_names", ["a", "b"]), "class_names"),
    ("not_an_object", lambda m: (lambda c: [c]), "expected a JSON object"),
    ("nan_constant", lambda m: (lambda c: json.dumps(c).replace('"lr": 0.005', '"lr": NaN')),
     "not valid JSON"),
    ("yaml_instead_of_json", lambda m: (lambda c: f"method: !apply:os.system ['touch {m}']\n"),
     "not valid JSON"),
]


@pytest.mark.parametrize("case, edit, message", CRAFTED_CONFIGS, ids=[c[0] for c in CRAFTED_CONFIGS])
def test_crafted_config_is_refused_and_nothing_runs(case, edit, message, good_folder, tmp_path,
                                                   capsys):
    marker = tmp_path / "pwned"
    folder = crafted(good_folder, tmp_path, edit_config=edit(marker))
    for name, load in loaders(folder, tmp_path):
        if name == "load_petl_model":
            with pytest.raises(PETLModelError, match=message):
                load()
        else:
            assert load() == 2, name
            assert message.split("'")[0] in capsys.readouterr().err
        assert not marker.exists(), f"{case}: the folder's content ran through {name}"


def test_pickled_weights_are_refused_and_never_unpickled(good_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    folder = crafted(good_folder, tmp_path,
                     edit_weights=lambda path: torch.save({"w": Payload(marker)}, path))
    with pytest.raises(PETLModelError, match="not a readable safetensors file"):
        load_petl_model(folder, check=False)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    ("drop", "missing"), ("add", "not a tensor of the rebuilt model"), ("reshape", "has shape")])
def test_weights_must_be_exactly_the_rebuilt_models_trained_tensors(change, message, good_folder,
                                                                    tmp_path):
    from safetensors.torch import load_file, save_file

    def edit(path):
        state = load_file(str(path))
        name = sorted(state)[0]
        if change == "drop":
            del state[name]
        elif change == "add":
            state["petl_model.extra.weight"] = torch.zeros(2)
        else:
            state[name] = torch.zeros(3, 3)
        save_file(state, str(path))

    folder = crafted(good_folder, tmp_path, edit_weights=edit)
    with pytest.raises(PETLModelError, match=message):
        load_petl_model(folder, check=False)


def test_current_folder_is_plain_data_with_a_format_version(good_folder):
    config = json.loads((good_folder / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION == 2
    assert "hyperparams" not in config
    assert not any(isinstance(v, str) and v.startswith("!") for v in config["options"].values())
    modules, _ = load_petl_model(good_folder, check=True)
    assert modules["classifier"].head.out_features == 31


@pytest.mark.parametrize("method", ["lora", "adapter", "prompt_tuning"])
def test_folder_written_by_format_version_1_still_loads_with_the_same_outputs(method):
    wavs, expected = legacy_waveforms()
    modules, config = load_petl_model(LEGACY / f"petl_model_v1_{method}", backbone_source=str(BASE))
    assert config["format_version"] == 1
    assert torch.allclose(probabilities(modules, wavs), torch.tensor(expected[method]), atol=1e-6)


def test_format_version_1_yaml_text_is_never_parsed(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "v1"
    shutil.copytree(LEGACY / "petl_model_v1_lora", folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["hyperparams"] = f"__payload: !apply:pathlib.Path.touch ['{marker}']\n" + config["hyperparams"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    load_petl_model(folder, backbone_source=str(BASE))
    assert not marker.exists()
