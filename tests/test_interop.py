"""Sharing and serving: PEFT adapters both ways, ONNX with its onnxruntime parity check.

Oracles: ``peft.PeftModel.from_pretrained`` on the base transformers model (last hidden states
equal to ours at 1e-5), and ``classify`` for ONNX (the export checks onnxruntime itself; the tests
check what it wrote, and run docs/interop.md's client, which computes its features itself). Tiny random backbones saved with save_pretrained; the ONNX runs
over every method file and every backbone family are slow.
"""

import json
import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import peft
import pytest
import soundfile
import torch
import transformers
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules import export as export_cli
from petl_modules import from_peft as from_peft_cli
from petl_modules.backbones import FAMILIES
from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS
from petl_modules.classify import PETLClassifier
from petl_modules.export import export_petl_model
from petl_modules.sharing import onnx_export
from petl_modules.sharing.peft_lora import import_peft_adapter
from petl_modules.tiny import (
    save_tiny_beats,
    save_tiny_w2v_bert,
    tiny_ast_config,
    tiny_data2vec_audio_config,
    tiny_waveform_config,
    tiny_whisper_config,
    tiny_whisper_feature_extractor,
)
from petl_modules.training.compose import compose_hparams, load_hparams
from petl_modules.training.pretrained import (
    PETLModelError,
    load_petl_model,
    save_petl_model,
)

from conftest import METHOD_FILES, REPO

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


# ==================================================================== helpers
def save_tiny(model_type, folder, pre_ln=False):
    """A tiny random checkpoint of ``model_type`` (a registry key) saved in ``folder``."""
    torch.manual_seed(0)
    if model_type == "audio-spectrogram-transformer":
        transformers.ASTModel(tiny_ast_config()).save_pretrained(folder)
    elif model_type in WAVEFORM_MODELS:
        config = tiny_waveform_config(model_type, pre_ln, "layer" if pre_ln else "group")
        WAVEFORM_MODELS[model_type][1](config).save_pretrained(folder)
    elif model_type == "data2vec-audio":
        transformers.Data2VecAudioModel(tiny_data2vec_audio_config()).save_pretrained(folder)
        transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    elif model_type == "whisper":
        config = tiny_whisper_config()
        transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
        tiny_whisper_feature_extractor(config).save_pretrained(folder)
    elif model_type == "wav2vec2-bert":
        save_tiny_w2v_bert(folder)
    elif model_type == "beats":  # a one-file checkpoint: its path
        Path(folder).mkdir(parents=True, exist_ok=True)
        return str(save_tiny_beats(Path(folder) / "tiny_beats.pt"))
    else:
        raise KeyError(model_type)
    return str(folder)


# The model types of the tiny checkpoints above; every lobe of the registry must be among them.
TINY_MODEL_TYPES = ["audio-spectrogram-transformer", *WAVEFORM_MODELS, "data2vec-audio", "whisper", "beats",
                    "wav2vec2-bert"]


def petl_folder(method, source, tmp_path, name="petl_model", **options):
    """A ``petl_model/`` folder of ``method`` on ``source`` whose trained tensors moved away from
    their start (so that a wrong mapping shows), built as a run builds it."""
    text = (REPO / "hparams" / f"{method}.yaml").read_text()
    values = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                  backbone_source=str(source), max_frames=64)
    if "\nreduction_rate:" in text:
        values["reduction_rate"] = 16
    values.update(options)
    hparams = load_hparams(compose_hparams(REPO / "hparams" / f"{method}.yaml", FSC_YAML, values))
    torch.manual_seed(3)
    with torch.no_grad():
        for module in hparams["modules"].values():
            for param in module.parameters():
                if param.requires_grad:
                    param.add_(0.1 * torch.randn_like(param))
    thresholds = [0.5 - 0.01 * i for i in range(31)] if options.get("task") == "multilabel" else None
    save_petl_model(tmp_path / name, hparams, [f"c{i}" for i in range(31)], thresholds)
    return tmp_path / name


def processed(model, seconds=(0.5, 0.7)):
    """``(inputs, lengths)`` of generated utterances through ``model``'s input processor."""
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * s), generator=generator) for s in seconds]
    return batch_pad_right([model.input_processor(w) for w in wavs])


def ours_and_peft(folder, out):
    """Our last hidden states and PeftModel's (loaded as the docs say: on ``out/base`` when the
    export wrote it, else on the checkpoint the adapter names, here the run's local copy) on the
    same inputs."""
    modules, config = load_petl_model(folder)
    lobe = modules["petl_model"].adapted_model
    processor = lobe.input_processor
    samples = processor.samples_needed or 16000
    generator = torch.Generator().manual_seed(1)
    inputs = torch.stack([processor(0.1 * torch.randn(samples, generator=generator)) for _ in range(2)])
    adapter = json.loads((out / "adapter_config.json").read_text())
    written = json.loads((out / "classifier_head.json").read_text())["peft"]["base_written"]
    base = out / adapter["base_model_name_or_path"] if written else config["backbone_source"]
    base = transformers.AutoModel.from_pretrained(base)
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        return lobe(inputs)[0], model(input_values=inputs).last_hidden_state, modules, adapter


# ==================================================================== PEFT export
@pytest.mark.parametrize("model_type,layout", [
    ("audio-spectrogram-transformer", "post_ln"), ("wav2vec2", "post_ln"), ("hubert", "post_ln"),
    pytest.param("wav2vec2", "pre_ln", marks=pytest.mark.slow),  # the final LayerNorm is saved
    pytest.param("data2vec-audio", "post_ln", marks=pytest.mark.slow)])
def test_peft_export_equals_peftmodel_from_pretrained(model_type, layout, tmp_path):
    source = save_tiny(model_type, tmp_path / "base", pre_ln=layout == "pre_ln")
    folder = petl_folder("lora", source, tmp_path, lora_targets="Wq,Wk,Wv,Wo")
    out = tmp_path / "peft"
    assert export_cli.main([str(folder), str(out), "--format=peft"]) == 0
    ours, theirs, modules, adapter = ours_and_peft(folder, out)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    lora = next(m for n, m in modules["petl_model"].named_modules() if n.endswith("q_proj"))
    config = json.loads((folder / "petl_config.json").read_text())["method"]["config"]
    # PEFT's scaling lora_alpha / r is ours, lora_alpha / reduction_rate
    assert adapter["lora_alpha"] / adapter["r"] == pytest.approx(
        config["lora_alpha"] / config["reduction_rate"], rel=1e-12)
    assert adapter["r"] == lora.lora_A.shape[0] and not adapter["use_rslora"]
    final_norm = modules["petl_model"].adapted_model.trained_modules("final_norm")
    assert adapter["modules_to_save"] == ([n.split(".", 1)[1] for n in final_norm] or None)
    # AST's position embeddings were cut to 64 frames: the base is written beside the adapter
    assert (out / "base").is_dir() == (model_type == "audio-spectrogram-transformer")
    head = json.loads((out / "classifier_head.json").read_text())
    assert head["class_names"] == [f"c{i}" for i in range(31)] and head["pooling"] == "mean"


def no_local_path_in(folder, *paths):
    """Every JSON file under ``folder`` names none of ``paths`` and holds no absolute path."""
    for file in folder.rglob("*.json"):
        text = file.read_text(encoding="utf-8")
        assert not any(str(p) in text for p in paths), file
        values = [v for v in re.findall(r'"([^"]*)"', text)]
        assert not any(os.path.isabs(v) for v in values), (file, [v for v in values if os.path.isabs(v)])


def test_a_peft_export_with_its_base_names_it_relative_and_loads_from_anywhere(
        tiny_ast, tmp_path, monkeypatch):
    folder = petl_folder("lora", tiny_ast, tmp_path)  # positions cut to 64 frames: base/ written
    export_petl_model(folder, tmp_path / "peft", format="peft")
    moved = tmp_path / "shared" / "adapter"  # the folder as someone else gets it
    moved.parent.mkdir()
    (tmp_path / "peft").rename(moved)
    no_local_path_in(moved, tmp_path, tiny_ast)
    adapter = json.loads((moved / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "base"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ours, theirs, _, _ = ours_and_peft(folder, moved)  # PeftModel.from_pretrained(base, adapter dir)
    assert torch.allclose(ours, theirs, atol=1e-5)
    view = import_peft_adapter(moved, tmp_path / "imported")  # resolves base/ beside the adapter
    assert view["class_names"] == [f"c{i}" for i in range(31)]
    assert json.loads((tmp_path / "imported" / "petl_config.json").read_text())["backbone"][
        "local_name"] == "base"


@pytest.mark.slow
def test_peft_export_names_the_checkpoint_when_the_run_kept_the_base(tiny_ast, other_ast, tmp_path,
                                                                    monkeypatch):
    folder = petl_folder("lora", tiny_ast, tmp_path, max_frames=128)  # the checkpoint's length
    out = tmp_path / "peft"
    side = export_petl_model(folder, out, format="peft")
    # a local checkpoint by its folder's name (a Hub id as it is), never its path
    assert not (out / "base").exists() and side["peft"]["base_model_name_or_path"] == tiny_ast.name
    no_local_path_in(out, tmp_path, tiny_ast)
    ours, theirs, _, _ = ours_and_peft(folder, out)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # on the machine that knows the checkpoint (by its fingerprint), the import finds it
    import_peft_adapter(out, tmp_path / "imported")
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "another_machine"))  # no record of it
    with pytest.raises(PETLModelError, match=f"'{tiny_ast.name}'.*--backbone_source"):
        import_peft_adapter(out, tmp_path / "imported_elsewhere")
    import_peft_adapter(out, tmp_path / "imported_elsewhere", backbone_source=tiny_ast)
    with pytest.raises(PETLModelError, match="not the checkpoint the adapter was exported on"):
        import_peft_adapter(out, tmp_path / "imported_other", backbone_source=other_ast)


def test_peft_export_refuses_other_methods_and_wavlm(tiny_ast, waveform_checkpoints, tmp_path):
    folder = petl_folder("adapter", tiny_ast, tmp_path)
    with pytest.raises(PETLModelError, match="holds LoRA, DoRA, .IA.3 and VeRA adapters.*--format=onnx"):
        export_petl_model(folder, tmp_path / "exported", format="peft")
    layer_sum = petl_folder("layer_sum", tiny_ast, tmp_path, name="layer_sum")
    with pytest.raises(PETLModelError, match="this model has layer_weights"):
        export_petl_model(layer_sum, tmp_path / "exported_sum", format="peft")
    wavlm = petl_folder("lora", waveform_checkpoints["wavlm", "post_ln"], tmp_path, name="wavlm")
    with pytest.raises(PETLModelError, match="PEFT leaves WavLM's attention unchanged"):
        export_petl_model(wavlm, tmp_path / "exported_wavlm", format="peft")


def test_peft_lora_is_a_no_op_on_wavlm_which_is_why_it_is_refused(waveform_checkpoints):
    base = transformers.AutoModel.from_pretrained(waveform_checkpoints["wavlm", "post_ln"]).eval()
    inputs = torch.randn(1, 8000)
    with torch.no_grad():
        before = base(inputs).last_hidden_state
        model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
        assert torch.equal(model.eval()(inputs).last_hidden_state, before)


@pytest.mark.parametrize("format,method", [
    ("transformers", "lora"), ("peft", "lora"), pytest.param("onnx", "adapter", marks=pytest.mark.slow)])
def test_exported_files_are_readable_as_the_umask_says(format, method, tiny_ast, tmp_path):
    """safetensors (under transformers' and PEFT's save_pretrained) writes owner-only files; an
    export's files all get the mode the umask gives new files."""
    folder = petl_folder(method, tiny_ast, tmp_path)
    previous = os.umask(0o027)
    try:
        export_petl_model(folder, tmp_path / "exported", format=format)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path / "exported")): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "exported").rglob("*") if p.is_file()}
    assert modes and modes == dict.fromkeys(modes, 0o640), modes


# ==================================================================== PEFT import
def peft_adapter(source, folder, **config):
    """A LoRA adapter trained 'elsewhere': PEFT's own model on ``source``, random A and B."""
    base = transformers.AutoModel.from_pretrained(source)
    model = peft.get_peft_model(base, peft.LoraConfig(**{"r": 4, "lora_alpha": 8, **config}))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", [
    "audio-spectrogram-transformer", pytest.param("hubert", marks=pytest.mark.slow)])
def test_import_of_a_peft_adapter_gives_peftmodel_outputs(model_type, tmp_path):
    source = save_tiny(model_type, tmp_path / "base", pre_ln=model_type != "audio-spectrogram-transformer")
    to_save = ["layernorm"] if model_type == "audio-spectrogram-transformer" else ["encoder.layer_norm"]
    adapter = peft_adapter(source, tmp_path / "adapter", target_modules=["q_proj", "v_proj"],
                           modules_to_save=to_save)
    out = tmp_path / "petl_model"
    assert from_peft_cli.main([str(adapter), str(out), f"--backbone_source={source}",
                               "--class_names=yes,no,maybe"]) == 0
    config = json.loads((out / "petl_config.json").read_text())
    hidden = transformers.AutoConfig.from_pretrained(source).hidden_size
    lora = config["method"]["config"]
    assert config["format_version"] == 4 and config["method"]["name"] == "lora"
    assert lora["reduction_rate"] == hidden // 4
    assert lora["lora_alpha"] / lora["reduction_rate"] == 8 / 4
    assert config["class_names"] == ["yes", "no", "maybe"]
    assert config["backbone"]["local_name"] == Path(source).name  # no path of this machine
    assert str(tmp_path) not in (out / "petl_config.json").read_text()
    modules, _ = load_petl_model(out)
    lobe = modules["petl_model"].adapted_model
    theirs = peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(source), str(adapter))
    inputs = torch.stack([lobe.input_processor(torch.randn(lobe.input_processor.samples_needed or 16000))])
    with torch.no_grad():
        assert torch.allclose(lobe(inputs)[0], theirs.eval()(input_values=inputs).last_hidden_state, atol=1e-5)
    assert PETLClassifier.from_folder(out).classify_waveforms([torch.randn(8000)])[3][0] in config["class_names"]


def peft_methods():
    """The method files whose modules are all projection updates PEFT has a type for (read off the
    registry: each method built on a tiny AST)."""
    from petl_modules.backbones import Backbone
    from petl_modules.methods import METHODS
    from petl_modules.methods.adapted import PETLModule
    from petl_modules.sharing.peft_lora import PEFT_TYPES

    import shutil
    import tempfile

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="petl_peft_probe_"))
    found = []
    try:
        transformers.ASTModel(tiny_ast_config()).save_pretrained(folder)
        for name in sorted(METHODS):
            options = {"reduction_rate": 16} if "reduction_rate" in METHODS[name].options() else {}
            model = METHODS[name].from_dict(options).build(Backbone(str(folder), max_frames=64))
            kinds = {type(m) for m in model.modules() if isinstance(m, PETLModule)}
            if kinds and kinds <= set(PEFT_TYPES) and not list(model.parameters(recurse=False)):
                found.append(name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return found


PEFT_METHODS = peft_methods()
ALL_PROJECTIONS = "Wq,Wk,Wv,Wo,ffn_in,ffn_out"
PEFT_CASES = [(m, {}) for m in PEFT_METHODS] + [
    ("lora", {"lora_targets": ALL_PROJECTIONS}), ("dora", {"lora_targets": "Wo,ffn_in,ffn_out"}),
    ("ia3", {"ia3_targets": ALL_PROJECTIONS}), ("vera", {"vera_targets": ALL_PROJECTIONS, "rank": 8})]


def test_the_peft_methods_are_lora_dora_ia3_and_vera():
    assert PEFT_METHODS == ["dora", "ia3", "lora", "vera"]


@pytest.mark.parametrize("method,options", PEFT_CASES, ids=[f"{m}-{o}" for m, o in PEFT_CASES])
def test_peft_export_of_each_peft_method_equals_peftmodel_from_pretrained(method, options, tiny_ast, tmp_path):
    folder = petl_folder(method, tiny_ast, tmp_path, **options)
    out = tmp_path / "peft"
    side = export_petl_model(folder, out, format="peft")
    ours, theirs, modules, adapter = ours_and_peft(folder, out)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    assert adapter["peft_type"] == {"ia3": "IA3", "vera": "VERA"}.get(method, "LORA")
    assert adapter.get("use_dora", False) == (method == "dora")
    if method == "vera":
        assert adapter["save_projection"] and adapter["r"] == options.get("rank", 256)
    if method == "ia3":  # the FFN's output projection rescales its input: feedforward_modules
        assert adapter["feedforward_modules"] == (["fc2"] if "ffn_out" in options.get("ia3_targets", "ffn_out") else [])
    assert side["peft"]["peft_type"] == adapter["peft_type"]
    # and back: the imported folder is the same model
    import_peft_adapter(out, tmp_path / "back")
    back, config = load_petl_model(tmp_path / "back")
    assert config["method"] == method
    original, _ = load_petl_model(folder)
    inputs, lengths = processed(original["petl_model"].adapted_model)
    with torch.no_grad():
        expected = original["classifier"](*original["petl_model"](inputs, lengths))
        found = back["classifier"](*back["petl_model"](inputs, lengths))
    assert torch.allclose(found, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_export_of_each_peft_method_on_a_pre_ln_wav2vec2(method, tmp_path):
    source = save_tiny("wav2vec2", tmp_path / "base", pre_ln=True)
    folder = petl_folder(method, source, tmp_path, lora_targets=ALL_PROJECTIONS) if method in ("lora", "dora") \
        else petl_folder(method, source, tmp_path)
    out = tmp_path / "peft"
    export_petl_model(folder, out, format="peft")
    ours, theirs, _, adapter = ours_and_peft(folder, out)
    assert torch.allclose(ours, theirs, atol=1e-5) and adapter["modules_to_save"] == ["encoder.layer_norm"]


def peft_native(source, folder, config):
    """An adapter of ``config`` made with PEFT's own model on ``source``, its tensors moved away from
    their start (VeRA's shared matrices too)."""
    model = peft.get_peft_model(transformers.AutoModel.from_pretrained(source), config)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if any(part in name for part in ("lora_", "ia3_l", "vera_")):
                tensor.add_(0.1 * torch.randn_like(tensor))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("config,method", [
    (dict(peft_type="lora", r=4, lora_alpha=8, target_modules=["q_proj", "fc1", "fc2"], use_dora=True), "dora"),
    (dict(peft_type="ia3", target_modules=["k_proj", "v_proj", "fc2"], feedforward_modules=["fc2"]), "ia3"),
    (dict(peft_type="vera", r=8, target_modules=["q_proj", "v_proj", "fc1"], projection_prng_key=3,
          save_projection=True), "vera"),
])
def test_import_of_peft_dora_ia3_and_vera_adapters(config, method, tiny_ast, tmp_path):
    kind = {"lora": peft.LoraConfig, "ia3": peft.IA3Config, "vera": peft.VeraConfig}[config.pop("peft_type")]
    adapter = peft_native(str(tiny_ast), tmp_path / "adapter", kind(**config))
    out = tmp_path / "petl_model"
    assert from_peft_cli.main([str(adapter), str(out), f"--backbone_source={tiny_ast}",
                               "--class_names=yes,no"]) == 0  # compared with PeftModel before writing
    written = json.loads((out / "petl_config.json").read_text())["method"]
    assert written["name"] == method
    if method == "vera":
        assert written["config"]["rank"] == 8 and written["config"]["vera_targets"] == "Wq,Wv,ffn_in"


@pytest.mark.parametrize("kind,config,reason", [
    ("VeraConfig", dict(r=4, target_modules=["q_proj"], save_projection=False), "save_projection=True"),
    ("IA3Config", dict(target_modules=["k_proj", "fc2"], feedforward_modules=["k_proj"]),
     "rescales the input of .*k_proj"),
    ("LoHaConfig", dict(r=4, target_modules=["q_proj"]), "peft_type=.LOHA"),
])
def test_import_refuses_what_our_dora_ia3_and_vera_cannot_represent(kind, config, reason, tiny_ast, tmp_path):
    with warnings.catch_warnings():  # PEFT warns about save_projection=False itself
        warnings.simplefilter("ignore")
        adapter = peft_native(str(tiny_ast), tmp_path / "adapter", getattr(peft, kind)(**config))
    with pytest.raises(PETLModelError, match=reason):
        import_peft_adapter(adapter, tmp_path / "out", tiny_ast, class_names=["a", "b"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("targets,names", [
    ("Wq,Wk,Wv,Wo", ["attention.output.dense", "key", "query", "value"]),
    # 4.x names the FFN's output projection output.dense too: a longer suffix tells it apart
    ("Wq,ffn_out", ["0.output.dense", "1.output.dense", "query"])])
def test_transformers4_names_round_trip_with_the_saved_head(targets, names, tiny_ast, tmp_path):
    folder = petl_folder("lora", tiny_ast, tmp_path, lora_targets=targets)
    out = tmp_path / "peft4"
    export_petl_model(folder, out, format="peft", peft_names="4")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["target_modules"] == names
    from safetensors.torch import load_file

    assert "base_model.model.encoder.layer.0.attention.attention.query.lora_A.weight" in load_file(
        str(out / "adapter_model.safetensors"))
    import_peft_adapter(out, tmp_path / "back")  # head and base from the export
    original, _ = load_petl_model(folder)
    back, config = load_petl_model(tmp_path / "back")
    inputs, lengths = processed(original["petl_model"].adapted_model)
    with torch.no_grad():
        expected = original["classifier"](*original["petl_model"](inputs, lengths))
        found = back["classifier"](*back["petl_model"](inputs, lengths))
    assert torch.allclose(found, expected, atol=1e-5)
    assert config["class_names"] == [f"c{i}" for i in range(31)]


@pytest.mark.parametrize("setting,reason", [
    ({"use_rslora": True}, "rsLoRA"),
    ({"target_modules": ["q_proj", "projection"]}, "not one of the projections our methods adapt"),
    ({"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "layers"},
     "some layers only"),
    ({"target_modules": ["q_proj"], "r": 50}, "no integer|not round"),
    ({"target_modules": ["q_proj"], "bias": "lora_only"}, "biases"),
    ({"target_modules": ["q_proj"], "modules_to_save": ["layers.0.layernorm_before"]}, "modules_to_save"),
])
def test_import_refuses_what_our_lora_cannot_represent(setting, reason, tiny_ast, tmp_path):
    adapter = peft_adapter(str(tiny_ast), tmp_path / "adapter", **{"target_modules": ["q_proj", "v_proj"],
                                                                   **setting})
    with pytest.raises(PETLModelError, match=reason):
        import_peft_adapter(adapter, tmp_path / "out", tiny_ast, class_names=["a", "b"])
    assert not (tmp_path / "out").exists()


def test_import_refuses_wavlm_and_pickled_weights(waveform_checkpoints, tiny_ast, tmp_path):
    adapter = peft_adapter(waveform_checkpoints["wavlm", "post_ln"], tmp_path / "wavlm",
                           target_modules=["q_proj", "v_proj"])
    with pytest.raises(PETLModelError, match="WavLM's attention unchanged"):
        import_peft_adapter(adapter, tmp_path / "out", class_names=["a", "b"])
    pickled = peft_adapter(str(tiny_ast), tmp_path / "pickled", target_modules=["q_proj"])
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(PETLModelError, match="a pickle, which is never loaded"):
        import_peft_adapter(pickled, tmp_path / "out", tiny_ast, class_names=["a", "b"])


# ==================================================================== ONNX
def onnx_probabilities(out, inputs, lengths=None):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_values": inputs.numpy()}
    if lengths is not None:
        feed["lengths"] = lengths.numpy()
    return torch.from_numpy(session.run(["probabilities"], feed)[0])


@pytest.mark.slow
def test_onnx_export_takes_features_of_any_length_and_writes_the_processor(tiny_ast, tmp_path):
    folder = petl_folder("lora", tiny_ast, tmp_path)
    out = tmp_path / "onnx"
    assert export_cli.main([str(folder), str(out), "--format=onnx"]) == 0
    side = json.loads((out / "onnx_config.json").read_text())
    assert side["input"]["type"] == "ast_fbank" and side["input"]["max_frames"] == 64
    assert side["parity"]["max_abs_difference"] <= 1e-4
    # batches of 1 and 3 of clips shorter than, as long as and longer than the trained length
    assert [(c["fraction"], c["batch"]) for c in side["parity"]["cases"]] == [
        (0.6, 1), (0.6, 3), (1.0, 1), (1.0, 3), (1.5, 1), (1.5, 3)]
    assert [c["length"] for c in side["parity"]["cases"][::2]] == [37, 64, 96]  # frames fed
    assert side["padding_value"] == pytest.approx((0 - side["input"]["mean"]) / (2 * side["input"]["std"]))
    classifier = PETLClassifier.from_folder(folder)
    wav = 0.1 * torch.randn(16000 * 2)
    full = classifier.input_processor(wav)  # [64, 128]: cut to max_frames
    expected = classifier.classify_inputs(full[None], torch.ones(1))[0]
    longer = torch.cat([full, torch.randn(40, 128)])[None]  # the graph cuts it to 64 frames
    assert torch.allclose(onnx_probabilities(out, longer), expected, atol=1e-4)


def docs_onnx_client(out, wav_path):
    """The ONNX client of docs/interop.md (torchaudio's Kaldi fbank, numpy or transformers'
    WhisperFeatureExtractor computing the features, a plain onnxruntime session; none of our code)
    run as it is written, on the export ``out`` and the file ``wav_path``: its probabilities."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "interop.md").read_text(), re.S)
    code = next(block for block in blocks if "onnxruntime.InferenceSession" in block)
    for written, path in (('"exported/fsc_adapter_onnx"', out), ('"utterance.wav"', wav_path)):
        assert code.count(written) == 1, written
        code = code.replace(written, repr(str(path)))
    namespace = {}
    exec(compile(code, "docs/interop.md", "exec"), namespace)
    return namespace["probabilities"]


@pytest.mark.parametrize("model_type", [
    "audio-spectrogram-transformer", pytest.param("wav2vec2", marks=pytest.mark.slow),
    pytest.param("data2vec-audio", marks=pytest.mark.slow), pytest.param("whisper", marks=pytest.mark.slow),
    pytest.param("beats", marks=pytest.mark.slow), pytest.param("wav2vec2-bert", marks=pytest.mark.slow)])
def test_onnx_client_of_the_docs_gets_classify_answers_on_any_clip_length(model_type, tmp_path):
    """docs/interop.md's onnxruntime client, computing the features itself, gets classify's
    probabilities on clips shorter than, as long as and longer than the trained 0.64 s (64
    frames). Before the fix the graph padded AST's normalised fbank with 0 (up to 0.11 apart)."""
    source = save_tiny(model_type, tmp_path / "base")
    folder = petl_folder("adapter", source, tmp_path)
    out = tmp_path / "onnx"
    export_petl_model(folder, out, format="onnx")
    classifier = PETLClassifier.from_folder(folder)
    trained = 400 + 63 * 160  # 64 frames of 25 ms every 10 ms: 10,480 samples (waveforms: 10,240)
    generator = np.random.default_rng(0)
    for samples in (4000, trained, 3 * trained):  # short, exact, long
        wav_path = tmp_path / f"clip_{samples}.wav"
        soundfile.write(wav_path, (0.1 * generator.standard_normal(samples)).astype(np.float32),
                        16000, subtype="FLOAT")
        found = docs_onnx_client(out, wav_path)[0]
        expected = classifier.classify_file(wav_path)[0][0].numpy()
        assert np.abs(found - expected).max() <= 1e-5, (samples, float(np.abs(found - expected).max()))
        assert found.argmax() == expected.argmax()


def test_out_dir_of_a_previous_peft_or_onnx_export_may_be_replaced(tmp_path):
    for marker in ("classifier_head.json", "onnx_config.json"):
        (tmp_path / marker).write_text("{}")
        (tmp_path / "base").mkdir(exist_ok=True)
        (tmp_path / "base" / "config.json").write_text("{}")
        export_cli.check_out_dir(tmp_path)  # a previous export: no error
        (tmp_path / marker).unlink()
    (tmp_path / "onnx_config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    with pytest.raises(PETLModelError, match="not a previous export"):
        export_cli.check_out_dir(tmp_path)


@pytest.mark.slow
def test_onnx_export_that_fails_parity_leaves_nothing(tiny_ast, tmp_path, monkeypatch):
    folder = petl_folder("linear", tiny_ast, tmp_path)
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)
    with pytest.raises(PETLModelError, match="failed the parity check"):
        export_petl_model(folder, tmp_path / "onnx", format="onnx")
    assert not (tmp_path / "onnx").exists()  # nothing: written beside it, renamed only after the check


def check_onnx(folder, out):
    """Exports ``folder`` to ONNX and compares onnxruntime with PETLClassifier on a padded batch."""
    side = export_petl_model(folder, out, format="onnx")
    assert side["parity"]["max_abs_difference"] <= 1e-4
    classifier = PETLClassifier.from_folder(folder)
    inputs, lengths = processed(classifier)
    expected = classifier.classify_inputs(inputs, lengths)[0]
    waveform = side["inputs"][-1]["name"] == "lengths"
    found = onnx_probabilities(out, inputs, lengths if waveform else None)
    assert torch.allclose(found, expected, atol=1e-4), float((found - expected).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_FILES)
def test_onnx_export_of_every_method(method, tiny_ast, tmp_path):
    check_onnx(petl_folder(method, tiny_ast, tmp_path), tmp_path / "onnx")


def test_tiny_checkpoints_cover_every_backbone_family():
    assert {FAMILIES[t] for t in TINY_MODEL_TYPES} == set(FAMILIES.values())


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_onnx_export_of_every_backbone_family(model_type, tmp_path):
    # pre-LN waveform layout: the attention mask and the conformer's padding mask are in the graph
    source = save_tiny(model_type, tmp_path / "base", pre_ln=True)
    # quiet for this test only (a level left set would hide later tests' warnings from caplog)
    package_logger = logging.getLogger("petl_modules")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)
    try:
        check_onnx(petl_folder("adapter", source, tmp_path), tmp_path / "onnx")
    finally:
        package_logger.setLevel(level)


@pytest.mark.slow
def test_onnx_export_of_a_multilabel_model_gives_its_sigmoid_scores(tiny_ast, tmp_path):
    """A multi-label model exports with its per-class sigmoid (not a softmax), and the config
    beside it carries the task, the thresholds and the evaluation protocol a deployment follows."""
    folder = petl_folder("adapter", tiny_ast, tmp_path, task="multilabel", eval_windows="sliding")
    check_onnx(folder, tmp_path / "onnx")
    side = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert side["task"] == "multilabel" and side["evaluation"]["eval_windows"] == "sliding"
