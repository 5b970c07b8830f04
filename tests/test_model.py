"""The model layer: a trained model as a typed artifact, built in plain Python, saved and loaded as
users know it from transformers (``PETLModel.from_pretrained``, ``save_pretrained``,
``model(wavs)``, ``model.classify(files)``); its base checkpoint named without a path of this
machine, found again here, and loaded once."""

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
import transformers
from safetensors.torch import load_file

from petl_modules.classify import PETLClassifier
from petl_modules.methods import method_config
from petl_modules.model import PETLModel
from petl_modules.model.bases import LOCAL_BASES_FILE, hub_id_of_cache_folder, identify
from petl_modules.model.folder import read_spec
from petl_modules.model.spec import CONFIG_FILE, WEIGHTS_FILE, PETLModelError
from petl_modules.model.task import MultiLabel
from petl_modules.model.windows import EvalProtocol
from petl_modules.training.pretrained import save_petl_model

from conftest import REPO, TINY_RUN
from recipe_helpers import run_in_process
from test_after_training import build, pretend_trained, tiny_options, waveforms

CLASSES = [f"c{i}" for i in range(31)]


@pytest.fixture(scope="module")
def adapter_folder(tiny_ast, tmp_path_factory):
    """A pretend-trained conformer adapter (BatchNorm statistics too) on the tiny AST."""
    tmp = tmp_path_factory.mktemp("adapter")
    hparams, _ = build("adapter", tiny_ast, tmp, **tiny_options("adapter"))
    pretend_trained(hparams, hparams["backbone"].input_processor)
    save_petl_model(tmp / "petl_model", hparams, CLASSES)
    return tmp / "petl_model"


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    paths = []
    for k, wav in enumerate(waveforms(3)):
        paths.append(folder / f"{k}.wav")
        sf.write(paths[-1], wav.numpy(), 16000)
    return paths


def test_from_pretrained_classifies_files_and_waveforms_as_the_classifier_api(adapter_folder, wav_files):
    model = PETLModel.from_pretrained(adapter_folder)
    wavs = torch.nn.utils.rnn.pad_sequence([model.load_audio(p) for p in wav_files], batch_first=True)
    lengths = torch.tensor([len(model.load_audio(p)) / wavs.shape[1] for p in wav_files])
    out_prob, score, index, labels = model(wavs, lengths)
    assert out_prob.shape == (3, 31) and labels == [CLASSES[i] for i in index.tolist()]
    assert torch.allclose(model([model.load_audio(p) for p in wav_files])[0], out_prob, atol=1e-6)
    rows = model.classify(wav_files + [Path("missing.wav")])
    assert [r["file"] for r in rows] == [str(p) for p in wav_files] + ["missing.wav"]
    assert "missing.wav" in rows[-1]["error"] and "label" not in rows[-1]
    for row, expected in zip(rows, out_prob):
        assert torch.allclose(row["probabilities"], expected, atol=1e-6)
    assert model.classify(wav_files[0])["label"] == rows[0]["label"]
    classifier = PETLClassifier.from_folder(adapter_folder)  # the SpeechBrain-style name delegates
    assert isinstance(classifier, PETLModel)
    assert torch.equal(classifier.classify_batch(wavs, lengths)[0], out_prob)


def test_save_pretrained_writes_the_same_model(adapter_folder, wav_files, tmp_path):
    model = PETLModel.from_pretrained(adapter_folder)
    model.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / CONFIG_FILE).read_text()) == \
        json.loads((adapter_folder / CONFIG_FILE).read_text())
    saved, original = load_file(str(tmp_path / "copy" / WEIGHTS_FILE)), load_file(str(adapter_folder / WEIGHTS_FILE))
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    again = PETLModel.from_pretrained(tmp_path / "copy")
    assert [r["probabilities"].tolist() for r in again.classify(wav_files)] == \
        [r["probabilities"].tolist() for r in model.classify(wav_files)]


def test_a_model_built_in_plain_python_saves_and_loads(tiny_ast, wav_files, tmp_path):
    model = PETLModel.create(tiny_ast, method_config("lora", {"reduction_rate": 16}), ["yes", "no", "maybe"],
                             pooling="cls", task=MultiLabel([0.4, 0.5, 0.6]),
                             evaluation=EvalProtocol("sliding", 0.2, "max"), max_frames=64)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1)
    model.save_pretrained(tmp_path / "model")
    spec, _ = read_spec(tmp_path / "model")
    assert spec.method.to_dict() == {"lora_targets": "Wq,Wv", "reduction_rate": 16, "lora_alpha": 8,
                                     "init": "identity"}
    assert (spec.pooling, spec.task.thresholds, spec.evaluation.config()) == (
        "cls", [0.4, 0.5, 0.6], {"eval_windows": "sliding", "window_hop_seconds": 0.2, "window_pooling": "max"})
    assert spec.backbone.options == {"max_frames": 64, "position_embeddings": "adapt"}
    loaded = PETLModel.from_pretrained(tmp_path / "model")
    assert [r["probabilities"].tolist() for r in loaded.classify(wav_files)] == \
        [r["probabilities"].tolist() for r in model.classify(wav_files)]
    assert loaded.merge().merged  # LoRA folded into the projections: no model folder holds that
    with pytest.raises(PETLModelError, match="merged into the backbone"):
        loaded.save_pretrained(tmp_path / "merged")


# ==================================================================== the base checkpoint
def test_a_base_is_named_by_its_hub_id_or_its_folder_name_never_by_a_path(tmp_path):
    assert identify("MIT/ast-finetuned-audioset-10-10-0.4593") == {
        "hub_id": "MIT/ast-finetuned-audioset-10-10-0.4593", "local_name": None}
    local = tmp_path / "my_ast"
    local.mkdir()
    assert identify(local) == {"hub_id": None, "local_name": "my_ast"}
    snapshot = tmp_path / "hub" / "models--MIT--ast-finetuned" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    assert hub_id_of_cache_folder(snapshot) == "MIT/ast-finetuned"
    assert identify(snapshot) == {"hub_id": "MIT/ast-finetuned", "local_name": None}


def test_a_local_base_is_found_on_this_machine_and_named_elsewhere(adapter_folder, tiny_ast, tmp_path,
                                                                   monkeypatch):
    config = json.loads((adapter_folder / CONFIG_FILE).read_text())
    assert config["backbone"]["local_name"] == Path(tiny_ast).name
    assert str(tiny_ast) not in (adapter_folder / CONFIG_FILE).read_text()
    assert PETLModel.from_pretrained(adapter_folder).source == str(Path(tiny_ast).resolve())
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "another_machine"))
    with pytest.raises(PETLModelError, match=rf"local checkpoint folder named '{Path(tiny_ast).name}' "
                                             rf"\(weights fingerprint {config['backbone']['fingerprint']['sha256'][:12]}\)"
                                             r".*--backbone_source="):
        PETLModel.from_pretrained(adapter_folder)
    assert PETLModel.from_pretrained(adapter_folder, backbone_source=tiny_ast).source == str(tiny_ast)
    assert (tmp_path / "another_machine" / LOCAL_BASES_FILE).exists() is False


def test_a_moved_or_replaced_base_is_not_taken_from_the_record(adapter_folder, tiny_ast, tmp_path,
                                                                monkeypatch):
    """The record maps a fingerprint to a folder; a folder whose weights changed since is refused by
    the fingerprint check, naming the base."""
    copy = tmp_path / Path(tiny_ast).name
    transformers.ASTModel.from_pretrained(tiny_ast).save_pretrained(copy)
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "home"))
    PETLModel.from_pretrained(adapter_folder, backbone_source=copy).save_pretrained(tmp_path / "model")
    torch.manual_seed(5)
    transformers.ASTModel(transformers.ASTConfig.from_pretrained(copy)).save_pretrained(copy)
    with pytest.raises(PETLModelError, match="fingerprints of their weights differ"):
        PETLModel.from_pretrained(tmp_path / "model")


def count_loads(monkeypatch):
    """The sources ``ASTModel.from_pretrained`` (the AST lobe's load) is called with, from now on."""
    loads = []
    load = transformers.ASTModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(args[0])
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.ASTModel, "from_pretrained", classmethod(counted))
    return loads


@pytest.mark.parametrize("several", [False, True], ids=["one model", "several tasks"])
def test_the_base_checkpoint_is_loaded_once(adapter_folder, tmp_path, monkeypatch, several):
    loads = count_loads(monkeypatch)
    if several:
        other = tmp_path / "other"
        PETLModel.from_pretrained(adapter_folder).save_pretrained(other)
        loads.clear()
        PETLClassifier.from_folders([adapter_folder, other])
    else:
        PETLModel.from_pretrained(adapter_folder)
    assert len(loads) == 1, loads


@pytest.mark.slow
def test_a_run_loads_its_base_checkpoint_once(fsc_data, tiny_ast, tmp_path, monkeypatch):
    """Build, run identity, backbone fingerprint and the saved model folder: one load."""
    loads = count_loads(monkeypatch)
    results = run_in_process("FSC", [str(REPO / "hparams" / "lora.yaml"), f"--data_folder={fsc_data}",
                                     f"--backbone_source={tiny_ast}", f"--output_folder={tmp_path / 'out'}",
                                     "--reduction_rate=16", *TINY_RUN])
    assert isinstance(results, dict), results
    assert len(loads) == 1, loads
    assert (tmp_path / "out" / "petl_model" / CONFIG_FILE).is_file()
