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
from safetensors.torch import save_file

from petl_modules import classify as classify_cli
from petl_modules import export as export_cli
from petl_modules.classify import PETLClassifier
from petl_modules.model import PETLModel
from petl_modules.training.compose import compose_hparams, load_hparams
from petl_modules.training.pretrained import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    PETLModelError,
    load_petl_model,
    save_petl_model,
)

from conftest import REPO
from legacy_helpers import BASES, fill, probabilities, waveforms

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


class Payload:
    """Pickling this object records a call that would create ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


LEGACY_VERSIONS = (1, 2, 3)


def legacy_expected(version):
    return json.loads((REPO / "tests" / "data" / f"legacy_v{version}" / f"expected_v{version}.json")
                      .read_text())


# (format version, folder name) of every kept folder of an older format.
LEGACY_FOLDERS = [(v, name) for v in LEGACY_VERSIONS for name in sorted(legacy_expected(v)["shapes"])]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """The folders of format_version 1 to 3 (their JSON as the code of their format wrote it, their
    tensors regenerated as its script filled them) and their bases: a hidden-32 1-layer AST
    (``tiny_ast/``) and, for some folders of formats 2 and 3, a hidden-32 1-layer wav2vec2
    (``tiny_wav2vec2/``)."""
    root = tmp_path_factory.mktemp("legacy")
    for name, make in BASES.items():
        make(root / f"tiny_{name}")
    for version in LEGACY_VERSIONS:
        expected = legacy_expected(version)
        for name, shapes in expected["shapes"].items():
            folder = root / f"petl_model_v{version}_{name}"
            folder.mkdir()
            source = REPO / "tests" / "data" / f"legacy_v{version}" / folder.name / CONFIG_FILE
            shutil.copy(source, folder / CONFIG_FILE)
            tensors = {n: torch.zeros(shape, dtype=torch.long if n.endswith("num_batches_tracked")
                                      else torch.float32) for n, shape in shapes.items()}
            save_file(fill(tensors, seed=1, scale=0.05), str(folder / WEIGHTS_FILE))
    return root


def legacy_base(legacy, version, name):
    """The base checkpoint folder of a legacy folder."""
    return str(legacy / f"tiny_{legacy_expected(version).get('bases', {}).get(name, 'ast')}")


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, legacy):
    """A current-format (format_version 4) LoRA folder on the legacy tiny base."""
    tmp = tmp_path_factory.mktemp("good")
    text = compose_hparams(REPO / "hparams" / "lora.yaml", FSC_YAML, {
        "data_folder": str(tmp), "output_folder": str(tmp / "out"), "backbone_source": str(legacy / "tiny_ast"),
        "max_frames": 64, "reduction_rate": 8})
    hparams = load_hparams(text)
    save_petl_model(tmp / "petl_model", hparams, [f"c{i}" for i in range(31)])
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


def section(name, key, value):
    """An edit setting ``config[name][key]`` (a section of format 4)."""
    def edit(config):
        config[name][key] = value
        return config
    return edit


def method_option(key, value):
    def edit(config):
        config["method"]["config"][key] = value
        return config
    return edit


def backbone_option(key, value):
    def edit(config):
        config["backbone"]["options"][key] = value
        return config
    return edit


def top(key, value):
    def edit(config):
        config[key] = value
        return config
    return edit


# (case id, edit of petl_config.json, what the error message says). The marker is created by any
# of them only if the folder's content were executed. Every value is checked against the method's
# or the lobe's option definitions (or the schema); nothing reaches a YAML parser.
CRAFTED_CONFIGS = [
    ("apply_tag_in_option", lambda m: method_option("lora_targets", f"!apply:os.system ['touch {m}']"),
     "unknown target"),
    ("new_tag_in_option", lambda m: method_option("init", f"!new:pathlib.Path.touch ['{m}']"),
     "is not valid"),
    ("name_tag_in_option", lambda m: method_option("init", "!name:os.system"), "is not valid"),
    ("module_tag_in_option", lambda m: method_option("init", "!module:os"), "is not valid"),
    ("tag_in_a_list_option", lambda m: method_option("folds", [1, f"!apply:os.system ['touch {m}']"]),
     "unknown option 'folds'"),
    ("option_naming_an_object", lambda m: method_option("petl_model", "x"), "unknown option 'petl_model'"),
    ("dunder_option", lambda m: method_option("__set_seed", 1), "unknown option '__set_seed'"),
    ("nested_option", lambda m: method_option("reduction_rate", {"a": 1}), "is not valid"),
    ("unknown_top_level_key", lambda m: top("preprocess", f"!apply:os.system ['touch {m}']"),
     "unknown key 'preprocess'"),
    ("method_outside_the_registry", lambda m: section("method", "name", "nonexistent"), "not one of"),
    ("method_as_a_dotted_path", lambda m: section("method", "name", "os.system"), "not a method name"),
    ("missing_method", lambda m: (lambda c: {k: v for k, v in c.items() if k != "method"}),
     "missing key 'method'"),
    ("state_of_a_method_without_state", lambda m: section("method", "state", {"seed": 1}),
     "keeps no state"),
    ("newer_format", lambda m: top("format_version", FORMAT_VERSION + 1), "newer version"),
    ("class_names_not_strings", lambda m: top("class_names", [1, 2]), "list of strings"),
    ("too_few_class_names", lambda m: top("class_names", ["a", "b"]), "class_names"),
    ("not_an_object", lambda m: (lambda c: [c]), "expected a JSON object"),
    ("nan_constant", lambda m: (lambda c: json.dumps(c).replace('"lora_alpha": 8', '"lora_alpha": NaN')),
     "not valid JSON"),
    ("yaml_instead_of_json", lambda m: (lambda c: f"method: !apply:os.system ['touch {m}']\n"),
     "not valid JSON"),
    # Paths of a run are no model option: a folder gives none (rebuilding never creates folders).
    ("save_folder_as_an_option", lambda m: backbone_option("save_folder", str(m)),
     "unknown option 'save_folder'"),
    # transformers fetches and runs an attention kernel from the hub for 'org/repo' values: the
    # attention implementation is no model option.
    ("hub_kernel_attention",
     lambda m: backbone_option("attn_implementation", "kernels-community/flash-attn"),
     "unknown option 'attn_implementation'"),
    # A size option is bounded by the backbone's dimensions before anything of that size is
    # allocated (1e-5: a LoRA rank of 6,400,000 on hidden 64, ~13 GB).
    ("reduction_rate_far_below_one", lambda m: method_option("reduction_rate", 1e-5),
     "wider than the backbone"),
    ("number_option_of_the_wrong_type", lambda m: backbone_option("max_frames", "64"), "is not valid"),
    ("base_named_by_a_path", lambda m: section("backbone", "local_name", "../../etc"),
     "not a plain folder name"),
    ("base_named_twice", lambda m: section("backbone", "hub_id", "someone/model"), "exactly one"),
    ("unknown_family", lambda m: section("backbone", "family", "rnn"), "No backbone lobe"),
    ("malformed_fingerprint", lambda m: section("backbone", "fingerprint", {"sha256": "abc"}),
     "SHA-256"),
    ("unknown_task", lambda m: section("task", "kind", "regression"), "not one of"),
    ("unknown_task_key", lambda m: section("task", "loss", "focal"), "unknown key 'loss'"),
    ("multilabel_without_thresholds", lambda m: section("task", "kind", "multilabel"),
     "needs 'thresholds'"),
    ("threshold_out_of_range", lambda m: top("task", {"kind": "multilabel", "thresholds": [2.0] * 31}),
     "numbers in"),
    ("thresholds_not_one_per_class", lambda m: top("task", {"kind": "multilabel",
                                                             "thresholds": [0.5] * 3}), "31 class_names"),
    ("thresholds_of_a_single_label_model", lambda m: section("task", "thresholds", [0.5] * 31),
     "single_label"),
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


def test_current_folder_holds_only_what_defines_the_model(good_folder, legacy):
    config = json.loads((good_folder / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION == 4
    assert set(config) == {"format_version", "library", "backbone", "method", "head", "task",
                           "evaluation", "class_names"}
    assert config["method"] == {"name": "lora", "config": {"lora_targets": "Wq,Wv", "reduction_rate": 8,
                                                           "lora_alpha": 8, "init": "identity"},
                                "state": {}}
    assert config["backbone"]["options"] == {"max_frames": 64, "position_embeddings": "adapt"}
    assert config["backbone"]["local_name"] == "tiny_ast" and config["backbone"]["hub_id"] is None
    assert str(legacy) not in (good_folder / CONFIG_FILE).read_text()  # no path of this machine
    modules, _ = load_petl_model(good_folder, check=True)
    assert modules["classifier"].head.out_features == 31


def test_class_names_are_labels_whatever_they_look_like(good_folder, tmp_path):
    marker = tmp_path / "pwned"
    names = [f"!apply:pathlib.Path.touch ['{marker}']", "<backbone_source>", "9**9**9"] + \
        [f"c{i}" for i in range(28)]
    folder = crafted(good_folder, tmp_path, edit_config=top("class_names", names))
    classifier = PETLClassifier.from_folder(folder)
    assert classifier.labels == names and not marker.exists()


def test_a_legacy_folder_reads_the_model_options_and_never_the_others(legacy, tmp_path):
    """Format 1-3 folders kept every option of their run: the model's are checked, the others
    (paths, tracking, even text HyperPyYAML would have run) are never read."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "v3"
    shutil.copytree(legacy / "petl_model_v3_lora", folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["options"].update(wandb_project=f"!apply:pathlib.Path.touch ['{marker}']",
                             dataset="9**9**9", save_folder=str(marker), attn_implementation="org/kernel")
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    load_petl_model(folder, backbone_source=str(legacy / "tiny_ast"))
    assert not marker.exists()
    config["options"]["init"] = f"!new:pathlib.Path.touch ['{marker}']"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PETLModelError, match="init=.* is not valid"):
        load_petl_model(folder, backbone_source=str(legacy / "tiny_ast"))
    assert not marker.exists()


@pytest.mark.parametrize("version, name", LEGACY_FOLDERS, ids=[f"v{v}-{n}" for v, n in LEGACY_FOLDERS])
def test_folder_written_by_an_older_format_still_loads_with_the_same_outputs(version, name, legacy):
    expected = legacy_expected(version)
    folder = legacy / f"petl_model_v{version}_{name}"
    modules, config = load_petl_model(folder, backbone_source=legacy_base(legacy, version, name))
    assert config["format_version"] == version
    multilabel = config.get("task") == "multilabel"
    found = probabilities(modules, waveforms(expected["seconds"]), multilabel)
    assert torch.allclose(found, torch.tensor(expected["probabilities"][name]), atol=1e-6)
    if name in expected.get("classified", {}):  # format 3: classify follows the folder's protocol
        classifier = PETLClassifier.from_folder(folder, backbone_source=legacy_base(legacy, version, name))
        out_prob = classifier.classify_waveforms(waveforms(expected["long_seconds"], seed=1))[0]
        assert torch.allclose(out_prob, torch.tensor(expected["classified"][name]), atol=1e-6)


@pytest.mark.parametrize("version, name", LEGACY_FOLDERS, ids=[f"v{v}-{n}" for v, n in LEGACY_FOLDERS])
def test_an_older_folder_saved_again_is_format_4_with_the_same_outputs(version, name, legacy, tmp_path):
    expected = legacy_expected(version)
    base = legacy_base(legacy, version, name)
    PETLModel.from_pretrained(legacy / f"petl_model_v{version}_{name}", base).save_pretrained(tmp_path / "v4")
    text = (tmp_path / "v4" / CONFIG_FILE).read_text()
    assert json.loads(text)["format_version"] == 4 and "/tmp" not in text  # the old path is gone
    modules, config = load_petl_model(tmp_path / "v4", backbone_source=base)
    found = probabilities(modules, waveforms(expected["seconds"]), config["task"] == "multilabel")
    assert torch.allclose(found, torch.tensor(expected["probabilities"][name]), atol=1e-6)


def test_an_older_folder_is_pushed_as_format_4_without_the_paths_it_recorded(legacy, tmp_path):
    from petl_modules import push

    folder = legacy / "petl_model_v3_lora"
    assert '"backbone_source": "/' in (folder / CONFIG_FILE).read_text()
    (tmp_path / "staged").mkdir()
    _, card, names = push.stage_folder(folder, "my-lab/x", tmp_path / "staged")
    config = json.loads((tmp_path / "staged" / CONFIG_FILE).read_text())
    assert config["format_version"] == 4 and config["backbone"]["local_name"] == "tiny_ast"
    assert "/tmp" not in (tmp_path / "staged" / CONFIG_FILE).read_text() and "/tmp" not in card.content
    load_petl_model(tmp_path / "staged", backbone_source=str(legacy / "tiny_ast"))


def test_format_version_1_yaml_text_is_never_parsed(tmp_path, legacy):
    marker = tmp_path / "pwned"
    folder = tmp_path / "v1"
    shutil.copytree(legacy / "petl_model_v1_lora", folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["hyperparams"] = f"__payload: !apply:pathlib.Path.touch ['{marker}']\n" + config["hyperparams"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    load_petl_model(folder, backbone_source=str(legacy / "tiny_ast"))
    assert not marker.exists()


# ==================================================================== beyond the config's content
def test_huge_config_is_refused_without_reading_it(good_folder, tmp_path):
    from petl_modules.model.folder import MAX_CONFIG_BYTES

    folder = crafted(good_folder, tmp_path)
    with open(folder / CONFIG_FILE, "r+b") as stream:
        stream.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no disk used
    with pytest.raises(PETLModelError, match="too large"):
        load_petl_model(folder, check=False)


def _attacker_root(tmp_path, marker):
    """A folder a user may cd into (an unpacked download) that looks like a PETL-AST repository:
    its method file and synthetic generator would create ``marker`` if they were used."""
    root = tmp_path / "download"
    (root / "hparams").mkdir(parents=True)
    (root / "hparams" / "lora.yaml").write_text(
        f"method: lora\n__payload: !apply:pathlib.Path.touch ['{marker}']\n")
    (root / "recipes" / "FSC").mkdir(parents=True)
    (root / "recipes" / "FSC" / "fsc_synthetic.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return root


def test_method_files_come_from_the_repository_not_the_current_folder(good_folder, tmp_path,
                                                                      monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.delenv("PETL_AST_ROOT", raising=False)
    monkeypatch.chdir(_attacker_root(tmp_path, marker))
    load_petl_model(good_folder, check=False)
    assert not marker.exists(), "a method file of the current folder was instantiated"


def test_synthetic_generators_come_from_the_repository_not_the_current_folder(tmp_path,
                                                                            monkeypatch):
    from petl_modules import synthetic

    marker = tmp_path / "pwned"
    monkeypatch.delenv("PETL_AST_ROOT", raising=False)
    monkeypatch.chdir(_attacker_root(tmp_path, marker))
    assert synthetic.generator_files()["FSC"].is_relative_to(REPO)
    assert not marker.exists()


def test_pickled_backbone_weights_are_never_unpickled(tmp_path, monkeypatch, legacy):
    """A backbone_source folder with a pickled pytorch_model.bin: transformers reads it with
    weights_only=True, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD does not relax."""
    from petl_modules.backbones import Backbone

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    folder = tmp_path / "base"
    folder.mkdir()
    shutil.copy(legacy / "tiny_ast" / "config.json", folder / "config.json")
    torch.save({"w": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception):
        Backbone(str(folder), max_frames=64)
    assert not marker.exists()


@pytest.mark.parametrize("tool", ["classify", "export"])
def test_a_hub_id_out_of_reach_is_refused_clearly(tool, tmp_path, capsys):
    args = {"classify": [str(tmp_path / "x.wav")], "export": [str(tmp_path / "out")]}[tool]
    main = {"classify": classify_cli.main, "export": export_cli.main}[tool]
    assert main(["someone/petl-ast-lora", *args]) == 2  # offline, not in the cache
    assert "'someone/petl-ast-lora' is not in the Hugging Face cache" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _symlinked(out, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / "model.safetensors").symlink_to(victim)
    return victim


@pytest.mark.parametrize("content", ["other_files", "symlink", "previous_export"])
def test_export_never_overwrites_other_content(content, good_folder, tmp_path, capsys):
    out = tmp_path / "out"
    if content == "other_files":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        (out / "config.json").write_text("{}")
        kept = out / "notes.txt"
    elif content == "symlink":
        kept = _symlinked(out, tmp_path)
    else:
        assert export_cli.main([str(good_folder), str(out)]) == 0
        assert export_cli.main([str(good_folder), str(out)]) == 0  # a re-export replaces its files
        return
    assert export_cli.main([str(good_folder), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert kept.read_text() == "keep me"
    assert (out / "config.json").read_text() == "{}" if content == "other_files" else True


# ==================================================================== results, cache, run folder
def _does_not_block(function, fifo, seconds=20):
    """Runs ``function`` in a thread; True when it returns within ``seconds`` (a reader blocked
    on ``fifo`` is released afterwards, so the test never hangs)."""
    import os
    import threading

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(value=function()), daemon=True)
    thread.start()
    thread.join(seconds)
    blocked = thread.is_alive()
    if blocked:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the blocked reader gets EOF
        os.close(fd)
        thread.join(5)
    return not blocked, outcome.get("value")


@pytest.mark.parametrize("kind", ["huge", "fifo"])
def test_results_tool_skips_a_huge_or_special_results_file(kind, tmp_path):
    import os

    from petl_modules import results

    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    if kind == "huge":
        with open(path, "wb") as stream:
            stream.truncate(results.MAX_RESULTS_BYTES + 1)  # sparse: no disk used
    else:
        os.mkfifo(path)
    warnings = []
    returned, value = _does_not_block(lambda: results.collect([tmp_path], warn=warnings.append),
                                      path)
    assert returned, "the results tool blocked on the file"
    runs, skipped = value
    assert runs == [] and [p for p, _ in skipped] == [str(path)]
    assert ("too large" if kind == "huge" else "not a regular file") in skipped[0][1]


@pytest.mark.parametrize("content", ["payload", "a_list", "vectors_not_a_tensor", "length_mismatch",
                                     "garbage"])
def test_a_malformed_backbone_cache_is_recomputed_and_nothing_runs(content, tmp_path, monkeypatch,
                                                                 caplog):
    from petl_modules.training.cache import load_cache

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "cache.pt"
    saved = {"payload": {"wavs": ["a.wav"], "vectors": Payload(marker)},
             "a_list": [1, 2],
             "vectors_not_a_tensor": {"wavs": ["a.wav"], "vectors": "x"},
             "length_mismatch": {"wavs": ["a.wav", "b.wav"], "vectors": torch.zeros(1, 4)}}
    if content == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    else:
        torch.save(saved[content], path)
    assert load_cache(path) == {}
    assert str(path) in caplog.text
    assert not marker.exists()


def test_run_lock_holder_file_that_blocks_is_not_read(tmp_path):
    import os

    from petl_modules.training.run_folder import HOLDER_FILE, RunFolderError, RunLock

    with RunLock(tmp_path):
        holder = tmp_path / HOLDER_FILE
        holder.unlink()
        os.mkfifo(holder)

        def second():
            try:
                RunLock(tmp_path).acquire()
            except RunFolderError as err:
                return str(err)

        returned, message = _does_not_block(second, holder)
        assert returned, "naming the holder blocked on its file"
        assert "in use by another run" in message
        holder.unlink()


def test_deeply_nested_run_identity_is_a_clear_error(tmp_path):
    from petl_modules.training.run_folder import IDENTITY_FILE, RunFolderError, check_run_identity

    (tmp_path / IDENTITY_FILE).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(RunFolderError, match="cannot be read"):
        check_run_identity(tmp_path, {"options": {}, "schedule": {}})


# ==================================================================== round 3 (issue 32)
HUB_KERNEL = "evil-org/evil-kernel"


@pytest.fixture
def kernels_reached(monkeypatch):
    """Every entry point to the ``kernels`` package (what fetches and loads a Hub kernel) patched
    to record the call and fail; the test asserts the list stays empty."""
    import kernels
    import transformers.modeling_utils
    from transformers.integrations import hub_kernels

    reached = []

    def refuse(*args, **kwargs):
        reached.append(args)
        raise AssertionError(f"the kernels package was reached: {args}")

    monkeypatch.setattr(kernels, "get_kernel", refuse)
    for name in ("get_kernel", "load_and_register_attn_kernel", "lazy_load_kernel"):
        monkeypatch.setattr(hub_kernels, name, refuse)
    monkeypatch.setattr(transformers.modeling_utils, "lazy_import_flash_attention", refuse)
    return reached


def kernel_base(source, tmp_path, value=HUB_KERNEL, key="attn_implementation"):
    """A copy of the checkpoint folder ``source`` whose config.json names ``value`` as its
    attention implementation."""
    folder = tmp_path / f"kernel_{Path(source).name}"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("key, value", [("attn_implementation", HUB_KERNEL),
                                        ("_attn_implementation", HUB_KERNEL),
                                        ("attn_implementation", {"": HUB_KERNEL})])
def test_a_backbone_naming_a_hub_kernel_is_refused_by_every_family(key, value, tiny_backbones,
                                                                    tmp_path, kernels_reached):
    from petl_modules.backbones import Backbone
    from petl_modules.backbones.base import checkpoint_fingerprint

    for name, source in tiny_backbones.items():
        if not Path(source).is_dir():  # BEATs: a released .pt file, no config.json to name a kernel
            continue
        base = kernel_base(source, tmp_path / name, value, key)
        for load in (lambda: Backbone(base, max_frames=64), lambda: checkpoint_fingerprint(base)):
            with pytest.raises(OSError, match=f"names the attention implementation '{HUB_KERNEL}'"):
                load()
    assert not kernels_reached


def test_a_hub_kernel_given_as_the_attention_option_is_refused(tiny_ast, kernels_reached):
    from petl_modules.backbones import Backbone

    with pytest.raises(OSError, match=f"attn_implementation '{HUB_KERNEL}' is not supported"):
        Backbone(str(tiny_ast), attn_implementation=HUB_KERNEL)
    assert not kernels_reached


def test_every_tool_refuses_a_base_naming_a_hub_kernel(good_folder, legacy, tmp_path, capsys,
                                                       kernels_reached):
    from petl_modules import from_peft as from_peft_cli

    adapter = tmp_path / "peft"
    assert export_cli.main([str(good_folder), str(adapter), "--format=peft"]) == 0
    base = kernel_base(legacy / "tiny_ast", tmp_path)
    other = shutil.copytree(good_folder, tmp_path / "other_task")
    given = f"--backbone_source={base}"
    wav = str(tmp_path / "x.wav")
    runs = {
        "classify": lambda: classify_cli.main([str(good_folder), wav, given]),
        "several tasks": lambda: classify_cli.main(["--model", str(good_folder), "--model",
                                                    str(other), given, "--", wav]),
        **{f"export {f}": lambda f=f: export_cli.main([str(good_folder), str(tmp_path / f),
                                                       f"--format={f}", given])
           for f in ("transformers", "peft", "onnx")},
        "from_peft": lambda: from_peft_cli.main([str(adapter), str(tmp_path / "imported"), given]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        err = capsys.readouterr().err
        assert err.count("Error:") == 1 and f"'{HUB_KERNEL}'" in err, (name, err)
    assert not kernels_reached
    assert not any((tmp_path / f).exists() for f in ("transformers", "peft_", "onnx", "imported"))


@pytest.fixture(scope="module")
def peft_adapter(good_folder, tmp_path_factory):
    """The PEFT export of ``good_folder`` (adapter + our head beside it)."""
    out = tmp_path_factory.mktemp("peft") / "adapter"
    assert export_cli.main([str(good_folder), str(out), "--format=peft"]) == 0
    return out


def run_tool(module, *args, seconds=60):
    """``petl_modules.<module>.main(args)`` in this process: ``(exit code, stderr)``; a tool still
    running after ``seconds`` (a hang, what these attacks caused) is interrupted and fails the
    test (regular expression matching and integer powers check for signals)."""
    import importlib
    import signal
    import sys

    class Hang(BaseException):  # not an OSError (TimeoutError is): no tool catches it
        pass

    def interrupt(*_):
        raise Hang

    main = importlib.import_module(f"petl_modules.{module}").main
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    capture = __import__("io").StringIO()
    stderr, sys.stderr = sys.stderr, capture
    try:
        code = main([str(a) for a in args])
    except Hang:
        pytest.fail(f"petl_modules.{module} still ran after {seconds} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.stderr = stderr
    return code, capture.getvalue()


# HyperPyYAML arithmetic that grows without end (4 KB): what a value reaching an evaluator runs.
EXPONENT_TOWER = "<n_classes>" + "**<n_classes>" * 320


def test_a_4kb_backbone_source_of_arithmetic_is_a_clear_error(legacy, tmp_path):
    folder = tmp_path / "tower"
    shutil.copytree(legacy / "petl_model_v3_lora", folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["backbone_source"] = config["options"]["backbone_source"] = EXPONENT_TOWER
    config["fingerprint"] = None
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    assert len(EXPONENT_TOWER) > 4000
    for module, args in (("classify", [folder, tmp_path / "x.wav"]),
                         ("export", [folder, tmp_path / "out"])):
        code, err = run_tool(module, *args)
        assert code == 2 and err.count("Error:") == 1 and "Traceback" not in err, (module, err)
        assert "backbone_source" in err, err
    assert not (tmp_path / "out").exists()


def test_a_4kb_head_pooling_of_arithmetic_is_a_clear_error(peft_adapter, tmp_path):
    adapter = shutil.copytree(peft_adapter, tmp_path / "adapter")
    side = json.loads((adapter / "classifier_head.json").read_text())
    side["pooling"] = EXPONENT_TOWER
    (adapter / "classifier_head.json").write_text(json.dumps(side))
    code, err = run_tool("from_peft", adapter, tmp_path / "imported")
    assert code == 2 and err.count("Error:") == 1 and "Traceback" not in err, err
    assert "pooling" in err and "classifier_head.json" in err, err
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("targets", [r"^(([a-z_.0-9])+)+!$", ["q_proj", r"(\w+\.?)+!"], [7]],
                         ids=["regex", "regex_in_list", "not_a_name"])
def test_a_regex_in_target_modules_is_refused(targets, peft_adapter, tmp_path):
    adapter = shutil.copytree(peft_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = targets
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code, err = run_tool("from_peft", adapter, tmp_path / "imported")
    assert code == 2 and err.count("Error:") == 1 and "Traceback" not in err, err
    assert "target_modules" in err, err
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("key, value", [("r", float("nan")), ("r", float("inf")), ("r", 2.5),
                                        ("lora_alpha", float("nan")), ("lora_alpha", float("-inf"))])
def test_a_lora_rank_or_alpha_of_nan_or_infinity_is_a_clear_error(key, value, peft_adapter, tmp_path):
    adapter = shutil.copytree(peft_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[key] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code, err = run_tool("from_peft", adapter, tmp_path / "imported")
    assert code == 2 and err.count("Error:") == 1 and "Traceback" not in err, err
    assert f"{key}=" in err, err


def test_an_allocation_failure_while_building_is_a_clear_error(good_folder, tmp_path, monkeypatch,
                                                               capsys):
    from petl_modules.methods import lora

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 13107200000 bytes. Error code 12")

    monkeypatch.setattr(lora.LoraConfig, "build", fail)
    with pytest.raises(PETLModelError, match="Not enough memory to build the 'lora' model"):
        load_petl_model(good_folder)
    for name, load in loaders(good_folder, tmp_path)[1:]:
        assert load() == 2, name
        err = capsys.readouterr().err
        assert err.count("Error:") == 1 and "Not enough memory" in err, (name, err)


# Any text a dataset uses is a class name (item 4 of issue 32): markup-like tokens, operators,
# YAML/shell-looking text, unicode, spaces.
ODD_CLASS_NAMES = ["<unk>", "<sil>", "C++", "%", "!x", "!bang", "x**2", "%pct", "café ü 音", "two words",
                   " padded ", "=1+1", "-x", "@at", "a,b;c", "'quoted\"", "\ttab"]


def test_odd_class_names_save_load_classify_export_and_import(legacy, tmp_path, capsys):
    from petl_modules import from_peft as from_peft_cli

    names = ODD_CLASS_NAMES + [f"c{i}" for i in range(31 - len(ODD_CLASS_NAMES))]
    text = compose_hparams(REPO / "hparams" / "lora.yaml", FSC_YAML, {
        "data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
        "backbone_source": str(legacy / "tiny_ast"), "max_frames": 64, "reduction_rate": 8})
    save_petl_model(tmp_path / "petl_model", load_hparams(text), names)
    folder = tmp_path / "petl_model"
    assert PETLClassifier.from_folder(folder).labels == names
    import soundfile

    soundfile.write(tmp_path / "x.wav", waveforms([1.0])[0].numpy(), 16000)
    assert classify_cli.main([str(folder), str(tmp_path / "x.wav"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in names
    for export_format in ("transformers", "peft", "onnx"):
        out = tmp_path / export_format
        assert export_cli.main([str(folder), str(out), f"--format={export_format}"]) == 0, export_format
        side = json.loads((out / ("onnx_config.json" if export_format == "onnx"
                                  else "classifier_head.json")).read_text())
        assert side["class_names"] == names, export_format
    assert from_peft_cli.main([str(tmp_path / "peft"), str(tmp_path / "imported")]) == 0
    assert PETLClassifier.from_folder(tmp_path / "imported").labels == names


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_failing_export_leaves_the_previous_export_untouched(good_folder, tmp_path, monkeypatch,
                                                                capsys):
    from petl_modules.sharing import onnx_export

    out = tmp_path / "export"
    out.mkdir()  # a previous ONNX export (its content does not matter here)
    (out / "model.onnx").write_bytes(b"previous model")
    (out / "onnx_config.json").write_text('{"format": "onnx"}')
    before = _files(out)

    def fail(*args, **kwargs):
        raise RuntimeError("the exporter failed (injected)")

    monkeypatch.setattr(onnx_export, "export_graph", fail)
    assert export_cli.main([str(good_folder), str(out), "--format=onnx"]) == 2
    assert "injected" in capsys.readouterr().err
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no half-written folder


def test_an_export_killed_midway_leaves_no_folder_and_the_next_one_proceeds(good_folder, tmp_path,
                                                                           monkeypatch):
    from petl_modules.sharing import head

    out = tmp_path / "export"
    real = head.save_file

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill after the backbone's files were written

    monkeypatch.setattr(head, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        export_cli.main([str(good_folder), str(out)])
    assert list(tmp_path.iterdir()) == []
    # A SIGKILL leaves the hidden partial folder beside OUT_DIR: it does not block the next export.
    (tmp_path / ".export.partial-killed").mkdir()
    (tmp_path / ".export.partial-killed" / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(head, "save_file", real)
    assert export_cli.main([str(good_folder), str(out)]) == 0
    assert (out / "classifier_head.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_recorded_onnx_opset_is_the_files(good_folder, tmp_path):
    import onnx

    out = tmp_path / "onnx"
    assert export_cli.main([str(good_folder), str(out), "--format=onnx", "--opset=1"]) == 0
    declared = {o.domain: o.version for o in onnx.load(str(out / "model.onnx")).opset_import}
    recorded = json.loads((out / "onnx_config.json").read_text())["opset"]
    assert recorded == declared[""] and recorded > 1
    side = json.loads((out / "onnx_config.json").read_text())
    assert local_paths(side, [tmp_path, good_folder.parent, REPO]) == []
    assert side["base_backbone_source"] == "tiny_ast" and side["petl_model"] == "petl_model"


def local_paths(value, roots):
    """The strings in the JSON value ``value`` holding a path under one of ``roots``."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in local_paths(v, roots)]
    if isinstance(value, list):
        return [s for v in value for s in local_paths(v, roots)]
    return [value] if isinstance(value, str) and any(str(r) in value for r in roots) else []


def test_an_export_names_the_base_and_the_model_without_local_paths(good_folder, legacy, tmp_path):
    out = tmp_path / "export"
    assert export_cli.main([str(good_folder), str(out)]) == 0
    side = json.loads((out / "classifier_head.json").read_text())
    assert local_paths(side, [tmp_path, legacy, good_folder.parent, REPO]) == []
    assert side["base_backbone_source"] == "tiny_ast" and side["petl_model"] == "petl_model"


def test_metrics_command_holds_no_local_path(tmp_path, monkeypatch):
    from petl_modules.model.metrics_file import run_command, write_metrics

    monkeypatch.setattr("sys.argv", [str(REPO / "recipes" / "FSC" / "train.py"), "hparams/lora.yaml",
                                     f"--data_folder={tmp_path / 'data' / 'fsc'}", "--lr=-0.5",
                                     f"--backbone_source={tmp_path / 'bases' / 'ast'}",
                                     "--backbone_source=MIT/ast-finetuned-audioset-10-10-0.4593"])
    metrics = write_metrics(tmp_path, {"test_accuracy": 0.5}, command=run_command(root=REPO))  # as the recipes
    assert metrics["command"] == (
        "python recipes/FSC/train.py hparams/lora.yaml --data_folder=.../fsc --lr=-0.5 "
        "--backbone_source=.../ast --backbone_source=MIT/ast-finetuned-audioset-10-10-0.4593")


def test_one_tasks_non_finite_output_fails_that_task_only(good_folder, tmp_path, capsys):
    import soundfile
    from safetensors.torch import load_file

    broken = shutil.copytree(good_folder, tmp_path / "nan_task")
    state = load_file(str(broken / WEIGHTS_FILE))
    state["classifier.head.bias"] = torch.full_like(state["classifier.head.bias"], float("nan"))
    save_file(state, str(broken / WEIGHTS_FILE))
    wav = tmp_path / "x.wav"
    soundfile.write(wav, waveforms([1.0])[0].numpy(), 16000)
    classifier = PETLClassifier.from_folders([good_folder, broken])
    (result,), errors = classifier.classify_files([wav])
    assert errors == [] and set(result["tasks"]) == {str(good_folder), str(broken)}
    assert result["tasks"][str(broken)] == {"error": result["tasks"][str(broken)]["error"]}
    assert "non-finite" in result["tasks"][str(broken)]["error"]
    assert result["tasks"][str(good_folder)]["label"] in classifier.labels[str(good_folder)]
    assert classify_cli.main(["--model", str(good_folder), "--model", str(broken), "--", str(wav)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and f"\t{good_folder}\t" in captured.out
    assert captured.err.count("Error:") == 1 and f"task {broken} could not classify" in captured.err


def test_a_backbone_changing_model_is_refused_from_its_tensors_not_its_own_list(legacy, tmp_path):
    """A folder of format 3 listed its trained tensors (``parameters``): emptying that list does not
    let a BitFit model (biases of the frozen backbone in its safetensors) join other tasks."""
    bitfit = shutil.copytree(legacy / "petl_model_v3_bitfit", tmp_path / "bitfit")
    config = json.loads((bitfit / CONFIG_FILE).read_text())
    config["parameters"] = [n for n in config["parameters"] if n.startswith("classifier.")]
    config["buffers"] = []
    (bitfit / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PETLModelError, match="trains backbone tensors"):
        PETLClassifier.from_folders([legacy / "petl_model_v3_lora", bitfit],
                                    backbone_source=str(legacy / "tiny_ast"))


def test_a_model_whose_safetensors_hold_a_backbone_bias_cannot_join_other_tasks(good_folder, legacy,
                                                                                tmp_path):
    from safetensors.torch import load_file

    edited = shutil.copytree(good_folder, tmp_path / "edited")
    state = load_file(str(edited / WEIGHTS_FILE))
    name = next(n for n in state if n.endswith(".lora_A")).rsplit(".", 1)[0] + ".pretrained_module.bias"
    state[name] = torch.zeros(state[name.replace(".pretrained_module.bias", ".lora_A")].shape[1])
    save_file(state, str(edited / WEIGHTS_FILE))
    other = shutil.copytree(good_folder, tmp_path / "other")
    with pytest.raises(PETLModelError, match="trains backbone tensors"):
        PETLClassifier.from_folders([other, edited])


def _adapter_with(peft_adapter, tmp_path, **changes):
    adapter = shutil.copytree(peft_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


def _base_copy(legacy, tmp_path, pickled=False, model_type=None):
    base = shutil.copytree(legacy / "tiny_ast", tmp_path / "base")
    if pickled:
        from safetensors.torch import load_file

        torch.save(load_file(str(base / "model.safetensors")), base / "pytorch_model.bin")
        (base / "model.safetensors").unlink()
    if model_type:
        config = json.loads((base / "config.json").read_text())
        config["model_type"] = model_type
        (base / "config.json").write_text(json.dumps(config))
    return base


# (case, the tool's command line from (good folder, adapter, base, tmp_path), the message)
REVIEW_FAILURES = [
    ("peft_own_value_error", lambda g, a, b, t: ("from_peft", _adapter_with(a, t, init_lora_weights="nope"),
                                                 t / "imported", f"--backbone_source={b(t)}"),
     "init_lora_weights"),
    ("pickled_backbone_classify", lambda g, a, b, t: ("classify", g, t / "x.wav",
                                                      f"--backbone_source={b(t, pickled=True)}"),
     "pytorch_model.bin, a pickle"),
    ("pickled_backbone_from_peft", lambda g, a, b, t: ("from_peft", a, t / "imported",
                                                       f"--backbone_source={b(t, pickled=True)}"),
     "pytorch_model.bin, a pickle"),
    ("unknown_model_type_classify", lambda g, a, b, t: ("classify", g, t / "x.wav",
                                                        f"--backbone_source={b(t, model_type='bert')}"),
     "bert"),
    ("unknown_model_type_from_peft", lambda g, a, b, t: ("from_peft", a, t / "imported",
                                                         f"--backbone_source={b(t, model_type='bert')}"),
     "model_type 'bert'"),
]


@pytest.mark.parametrize("case, command, message", REVIEW_FAILURES, ids=[c[0] for c in REVIEW_FAILURES])
def test_a_failure_of_the_review_is_one_error_line(case, command, message, good_folder, peft_adapter,
                                                   legacy, tmp_path):
    module, *args = command(good_folder, peft_adapter, lambda t, **k: _base_copy(legacy, t, **k),
                            tmp_path)
    code, err = run_tool(module, *args)
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in err, err


def test_stored_shapes_are_checked_before_the_model_is_built(good_folder, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from petl_modules.model import folder as folder_module

    def wider(path):
        state = load_file(str(path))
        name = next(n for n in state if n.endswith(".lora_A"))
        state[name] = torch.zeros(state[name].shape[0] * 2, state[name].shape[1])
        save_file(state, str(path))

    edited = crafted(good_folder, tmp_path, edit_weights=wider)
    devices = []
    real = folder_module.attach_modules
    monkeypatch.setattr(folder_module, "attach_modules",
                        lambda spec, lobe, device=None: devices.append(device) or real(spec, lobe, device))
    with pytest.raises(PETLModelError, match="do not fit"):
        load_petl_model(edited)
    assert devices == ["meta"]  # only the plan on the meta device was built


def test_a_size_option_out_of_proportion_with_the_backbone_is_refused_before_building(legacy,
                                                                                      tmp_path):
    folder = shutil.copytree(legacy / "petl_model_v3_prompt_tuning", tmp_path / "prompts")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["options"]["prompt_len"] = 10 ** 6  # 32 M floats per layer on a hidden-32 base
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PETLModelError, match="more than the backbone"):
        load_petl_model(folder, backbone_source=str(legacy / "tiny_ast"))
