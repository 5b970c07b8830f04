"""After training: the PETL model folder, classify, LoRA merge and export, results table and plot.

One short LoRA recipe run on the synthetic FSC set (module fixture ``lora_run``) serves the
end-to-end tests; everything else builds models in-process from the composed yaml on tiny random
checkpoints.
"""

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from safetensors.torch import load_file
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules import export as export_cli
from petl_modules import results as results_cli
from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS
from petl_modules.classify import PETLClassifier
from petl_modules.export import HEAD_CONFIG, HEAD_WEIGHTS, export_petl_model
from petl_modules.model.folder import read_config, trained_tensor_names
from petl_modules.synthetic import class_signal
from petl_modules.training.compose import compose_hparams, load_hparams
from petl_modules.training.pretrained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PETLModelError,
    folder_size,
    load_petl_model,
    merge_petl_model,
    save_petl_model,
    unmerged_petl_modules,
)

from conftest import METHOD_FILES, REPO, read_results, run_train

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


# ==================================================================== helpers
def build(method, source, tmp_path, **overrides):
    """``(hparams, yaml_text)`` of ``hparams/<method>.yaml`` + FSC on checkpoint ``source``."""
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(source), **overrides)
    text = compose_hparams(REPO / "hparams" / f"{method}.yaml", FSC_YAML, options)
    return load_hparams(text), text


def tiny_options(method, **extra):
    """Options that make ``method`` fit a tiny backbone (hidden 64: reduction_rate 16 -> r = 4)."""
    text = (REPO / "hparams" / f"{method}.yaml").read_text()
    options = {"max_frames": 64}
    if "\nreduction_rate:" in text:
        options["reduction_rate"] = 16
    options.update(extra)
    return options


def waveforms(count=3, seconds=0.7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(16000 * (seconds + 0.1 * i)), generator=generator) for i in range(count)]


def probabilities(modules, processor, wavs):
    """Class probabilities ``[B, C]`` of ``modules`` on ``wavs``, as classify computes them."""
    inputs, lengths = batch_pad_right([processor(w) for w in wavs])
    with torch.no_grad():
        hidden, mask = modules["petl_model"](inputs, lengths)
        return torch.softmax(modules["classifier"](hidden, mask), dim=-1)


def pretend_trained(hparams, processor):
    """Moves every trained tensor away from its initial value (and BatchNorm statistics too)."""
    torch.manual_seed(3)
    modules = hparams["modules"]
    with torch.no_grad():
        for module in modules.values():
            for param in module.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn_like(param))
    for module in modules.values():
        module.train()
    probabilities(modules, processor, waveforms(4, seed=7))  # updates BatchNorm running stats
    for module in modules.values():
        module.eval()


# ==================================================================== fixtures
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, fsc_data, tiny_ast):
    """A short LoRA run on the synthetic FSC (5 epochs, lr 0.05: a non-trivial test accuracy)."""
    out = tmp_path_factory.mktemp("lora_run")
    run_train("FSC", "lora", fsc_data, tiny_ast, out, "--reduction_rate=16",
              "--number_of_epochs=5", "--lr=0.05")
    return out


def split_of(run_dir, fsc_data):
    """``[(wav path, label)]`` of the run's test manifest."""
    with open(Path(run_dir) / "manifests" / "test.csv") as stream:
        rows = list(csv.DictReader(stream))
    return [(r["wav"].replace("$data_root", str(fsc_data)), r["label"]) for r in rows]


def cli(main, *args):
    """Runs a command line's ``main`` in-process (the ``python -m`` start-up costs seconds)."""
    return main([str(a) for a in args])


# ==================================================================== 1. the PETL model folder
@pytest.mark.slow
def test_run_writes_a_petl_model_folder_of_only_the_trained_tensors(lora_run):
    results = read_results(lora_run)
    folder = lora_run / "petl_model"
    config = json.loads((folder / CONFIG_FILE).read_text())
    tensors = load_file(str(folder / WEIGHTS_FILE))
    parameters, buffers = trained_tensor_names(PETLClassifier.from_folder(folder).mods)
    assert set(tensors) == set(parameters) | set(buffers)
    assert sum(tensors[n].numel() for n in parameters) == results["trainable_params"]
    assert read_config(folder)["trained_params"] == results["trainable_params"]
    assert all(".lora_" in n or ".layernorm." in n or n.startswith("classifier.") for n in parameters)
    backbone = config["backbone"]
    assert backbone["family"] == "ast" and backbone["hub_id"] is None
    assert backbone["local_name"] == Path(results["backbone_source"]).name  # not its path
    assert config["method"] == {"name": "lora", "state": {}, "config": {
        "lora_targets": "Wq,Wv", "reduction_rate": 16, "lora_alpha": 8, "init": "identity"}}
    assert backbone["options"] == {"max_frames": 64, "position_embeddings": "adapt"}
    assert backbone["input"]["max_frames"] == 64 and backbone["input"]["type"] == "ast_fbank"
    assert config["class_names"] == results["folds"][0]["class_names"]
    assert "activate,lights,kitchen" in config["class_names"]  # FSC labels are the intents
    assert len(backbone["fingerprint"]["sha256"]) == 64
    # Only what defines the model: nothing of how it was trained (lr, epochs, paths, dataset).
    assert set(config) == {"format_version", "library", "backbone", "method", "head", "task",
                           "evaluation", "class_names"}


@pytest.mark.parametrize("method", METHOD_FILES)
def test_reloaded_petl_model_gives_the_trained_models_probabilities(method, tiny_ast, tmp_path):
    hparams, text = build(method, tiny_ast, tmp_path, **tiny_options(method))
    processor = hparams["backbone"].input_processor
    pretend_trained(hparams, processor)
    expected = probabilities(hparams["modules"], processor, waveforms())
    save_petl_model(tmp_path / "petl_model", hparams, [f"c{i}" for i in range(31)])
    modules, loaded = load_petl_model(tmp_path / "petl_model")
    assert torch.allclose(probabilities(modules, processor, waveforms()), expected, atol=1e-6)
    assert loaded["class_names"][3] == "c3"


def test_checkpoint_keeps_the_batchnorm_statistics_of_conformer_adapters(tiny_ast, tmp_path):
    """The best checkpoint (hence petl_model/) must hold the adapters' BatchNorm running stats,
    which are not requires_grad and which SpeechBrain's AdaptedModel saver left out."""
    hparams, _ = build("adapter", tiny_ast, tmp_path, **tiny_options("adapter"))
    pretend_trained(hparams, hparams["backbone"].input_processor)
    hparams["petl_model"].saver(tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    stats = [n for n in saved if n.endswith("batch_norm.running_mean")]
    assert len(stats) == 2  # one conformer adapter per layer
    fresh, _ = build("adapter", tiny_ast, tmp_path / "fresh", **tiny_options("adapter"))
    fresh["petl_model"].loader(tmp_path / "ckpt.pt", end_of_epoch=True)
    for name in stats:
        assert torch.equal(fresh["petl_model"].state_dict()[name], saved[name])
        assert not torch.equal(saved[name], torch.zeros_like(saved[name]))


@pytest.mark.slow
def test_petl_model_on_another_base_checkpoint_is_refused(lora_run, other_ast):
    with pytest.raises(PETLModelError, match="fingerprints of their weights differ"):
        load_petl_model(lora_run / "petl_model", backbone_source=other_ast)


@pytest.mark.slow
def test_petl_model_loads_on_a_local_copy_of_its_base_checkpoint(lora_run, tiny_ast, tmp_path):
    transformers.ASTModel.from_pretrained(tiny_ast).save_pretrained(tmp_path / "copy")
    original = PETLClassifier.from_folder(lora_run / "petl_model")
    copy = PETLClassifier.from_folder(lora_run / "petl_model", backbone_source=tmp_path / "copy")
    wavs = torch.nn.utils.rnn.pad_sequence(waveforms(2), batch_first=True)
    assert torch.equal(original.classify_batch(wavs)[0], copy.classify_batch(wavs)[0])


def test_petl_model_of_ast_base_conformer_adapter_is_under_3_mb(ast_base_folder, tmp_path):
    hparams, text = build("adapter", ast_base_folder, tmp_path)
    _, trained = save_petl_model(tmp_path / "petl_model", hparams, [str(i) for i in range(31)])
    assert trained == 270_720 + 1_536 + 768 * 31 + 31
    assert folder_size(tmp_path / "petl_model") < 3_000_000


# ==================================================================== 2. classify
@pytest.mark.slow
def test_classify_cli_reproduces_the_test_accuracy_and_reports_unreadable_files(lora_run, fsc_data,
                                                                               tmp_path):
    split = split_of(lora_run, fsc_data)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    missing = tmp_path / "missing.flac"
    files = [path for path, _ in split]
    proc = subprocess.run(
        [sys.executable, "-m", "petl_modules.classify", str(lora_run / "petl_model"), files[0],
         str(broken), *files[1:], str(missing), "--json", "--top_k=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert str(broken) in proc.stderr and str(missing) in proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["file"] for r in rows] == files
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"] for r in rows)
    accuracy = sum(r["label"] == label for r, (_, label) in zip(rows, split)) / len(split)
    assert accuracy == pytest.approx(read_results(lora_run)["test_accuracy"])


@pytest.mark.slow
def test_classify_reads_any_rate_channel_count_and_sample_format(lora_run, tmp_path):
    classifier = PETLClassifier.from_folder(lora_run / "petl_model")
    files = []
    for rate, channels, subtype in [(8000, 1, "PCM_16"), (22050, 1, "PCM_24"), (44100, 2, "PCM_16"),
                                    (48000, 2, "FLOAT"), (16000, 1, "PCM_U8"), (16000, 2, "PCM_24")]:
        wave = class_signal(5, 31, 1.0, sample_rate=rate, rng=np.random.default_rng(0))
        data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
        path = tmp_path / f"{rate}_{channels}ch_{subtype}.wav"
        sf.write(str(path), data, rate, subtype=subtype)
        files.append(path)
    found, errors = classifier.classify_files(files, batch_size=4)
    assert errors == [] and [r["file"] for r in found] == [str(f) for f in files]
    for row in found:
        assert row["label"] in classifier.labels
        assert float(row["probabilities"].sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_classify_batch_of_padded_waveforms_equals_files_one_by_one(lora_run, tmp_path):
    classifier = PETLClassifier.from_folder(lora_run / "petl_model")
    wavs = waveforms(3)
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lengths = torch.tensor([len(w) / padded.shape[1] for w in wavs])
    batch_prob, score, index, labels = classifier.classify_batch(padded, lengths)
    for k, wav in enumerate(wavs):
        path = tmp_path / f"{k}.wav"
        sf.write(str(path), wav.numpy(), 16000, subtype="FLOAT")
        prob, _, _, label = classifier.classify_file(path)
        assert torch.allclose(prob[0], batch_prob[k], atol=1e-6) and label == [labels[k]]
    assert torch.equal(score, batch_prob.max(dim=-1).values)


# ==================================================================== 3. merge and export
TARGETS = ["Wq", "Wk", "Wv", "Wo"]
COMBINATIONS = [",".join(c) for n in range(1, 5) for c in itertools.combinations(TARGETS, n)]


@pytest.mark.parametrize("targets", COMBINATIONS)
def test_merged_lora_gives_the_unmerged_probabilities(targets, tiny_ast, tmp_path):
    hparams, _ = build("lora", tiny_ast, tmp_path, **tiny_options("lora", lora_targets=targets, init="reference"))
    processor = hparams["backbone"].input_processor
    pretend_trained(hparams, processor)
    modules = hparams["modules"]
    before = probabilities(modules, processor, waveforms())
    merged = merge_petl_model(modules)
    assert len(merged) == 2 * len(targets.split(","))  # 2 layers
    assert unmerged_petl_modules(modules["petl_model"]) == []
    assert torch.allclose(probabilities(modules, processor, waveforms()), before, atol=1e-5)


def waveform_checkpoint(model_type, folder):
    from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS
    from petl_modules.tiny import tiny_waveform_config

    torch.manual_seed(0)
    WAVEFORM_MODELS[model_type][1](tiny_waveform_config(model_type)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", list(WAVEFORM_MODELS))
def test_merged_lora_gives_the_unmerged_probabilities_on_waveform_backbones(model_type, tmp_path):
    source = waveform_checkpoint(model_type, tmp_path / model_type)
    hparams, _ = build("lora", source, tmp_path, lora_targets="Wq,Wk,Wv,Wo", init="reference",
                       reduction_rate=8)
    processor = hparams["backbone"].input_processor
    pretend_trained(hparams, processor)
    modules = hparams["modules"]
    before = probabilities(modules, processor, waveforms())
    assert len(merge_petl_model(modules)) == 8
    assert torch.allclose(probabilities(modules, processor, waveforms()), before, atol=1e-5)


@pytest.mark.slow
def test_classify_merge_flag_gives_the_same_probabilities(lora_run):
    wavs = torch.nn.utils.rnn.pad_sequence(waveforms(3), batch_first=True)
    plain = PETLClassifier.from_folder(lora_run / "petl_model")
    merged = PETLClassifier.from_folder(lora_run / "petl_model", merge=True)
    assert len(merged.merged) == 4
    assert torch.allclose(plain.classify_batch(wavs)[0], merged.classify_batch(wavs)[0], atol=1e-5)


@pytest.mark.slow
def test_export_loads_with_automodel_and_starts_a_new_run(lora_run, fsc_data, tmp_path):
    out = tmp_path / "exported"
    assert cli(export_cli.main, lora_run / "petl_model", out) == 0
    exported = transformers.AutoModel.from_pretrained(out)
    assert isinstance(exported, transformers.ASTModel)
    merged = PETLClassifier.from_folder(lora_run / "petl_model", merge=True)
    lobe_model = merged.mods["petl_model"].adapted_model.model
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, lobe_model.state_dict()[name]), name
    side = json.loads((out / HEAD_CONFIG).read_text())
    assert side["class_names"] == merged.labels and side["merged_lora_modules"] == 4
    assert set(load_file(str(out / HEAD_WEIGHTS))) == {"head.weight", "head.bias"}
    new_run = tmp_path / "linear_on_export"
    run_train("FSC", "linear", fsc_data, out, new_run)
    assert read_results(new_run)["backbone_source"] == str(out)


def test_export_refuses_adapters_and_points_to_the_petl_model_folder(tiny_ast, tmp_path):
    hparams, text = build("adapter", tiny_ast, tmp_path, **tiny_options("adapter"))
    save_petl_model(tmp_path / "petl_model", hparams, [str(i) for i in range(31)])
    with pytest.raises(PETLModelError, match="PETL model folder") as error:
        export_petl_model(tmp_path / "petl_model", tmp_path / "exported")
    assert "petl_modules.classify" in str(error.value) and "'adapter'" in str(error.value)
    assert not (tmp_path / "exported").exists()


# ==================================================================== 4. results table and plot
def fake_results(folder, method, dataset, accuracies, options=None, trainable=1000, **extra):
    folds = [{"fold": k + 1 if len(accuracies) > 1 else None, "valid_accuracy": a, "test_accuracy": a,
              "hparams": dict(options or {})} for k, a in enumerate(accuracies)]
    data = {"dataset": dataset, "method": method, "backbone": "ast", "backbone_source": "ast-base",
            "total_params": 100_000, "trainable_params": trainable + 100,
            "trainable_params_without_head": trainable, "trainable_percent": 100 * (trainable + 100) / 1e5,
            "folds": folds, **extra}
    Path(folder).mkdir(parents=True)
    (Path(folder) / "results.json").write_text(json.dumps(data))


def test_results_table_csv_and_plot_skip_malformed_and_partial_files(tmp_path):
    runs = tmp_path / "results"
    fake_results(runs / "FSC/lora/1", "lora", "FSC", [0.80], {"seed": 1})
    fake_results(runs / "FSC/lora/2", "lora", "FSC", [0.90], {"seed": 2})
    fake_results(runs / "FSC/lora_all/1", "lora", "FSC", [0.70], {"lora_targets": "Wq,Wk,Wv,Wo"})
    fake_results(runs / "ESC50/bitfit/1", "bitfit", "ESC50", [0.5, 0.6, 0.7, 0.8, 0.9],
                 trainable=102_144, requested_folds=[1, 2, 3, 4, 5])
    fake_results(runs / "ESC50/adapter/1", "adapter", "ESC50", [0.5, 0.6],
                 requested_folds=[1, 2, 3, 4, 5])  # partial: 2 of 5 folds
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text('{"dataset": "FSC", "method": ')
    fake_results(runs / "nofolds", "linear", "FSC", [])
    out, table, png = tmp_path / "report.md", tmp_path / "results.csv", tmp_path / "plot.png"
    assert cli(results_cli.main, runs, "--out", out, "--csv", table, "--plot", png) == 0
    report = out.read_text()
    assert "| lora | 1.0K (1.00%) | — | 85.00 ± 5.00 |" in report
    assert "| lora (lora_targets=Wq,Wk,Wv,Wo) | 1.0K (1.00%) | — | 70.00 ± 0.00 |" in report
    assert "| bitfit | 102.1K (" in report and "70.00 ± 14.14 | — |" in report
    skipped = report.split("## Skipped")[1]
    for name, reason in [("broken", "not readable as JSON"), ("ESC50/adapter/1", "partial: 2 of 5"),
                         ("nofolds", "no fold results")]:
        assert f"{name}/results.json`: {reason}" in skipped
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 3 and {r["dataset"] for r in rows} == {"FSC", "ESC50"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_results_of_real_runs_are_tabulated(lora_run, tmp_path):
    assert cli(results_cli.main, lora_run, "--csv", tmp_path / "r.csv") == 0
    row = next(csv.DictReader(open(tmp_path / "r.csv")))
    # The method's options label the method (its config's fields); lr is a training setting.
    assert row["method"] == "lora (reduction_rate=16)" and row["dataset"] == "FSC"
    assert "lr=0.05" in row["settings"].split(", ")
    assert float(row["test_accuracy_mean"]) == pytest.approx(read_results(lora_run)["test_accuracy"])


def test_export_of_a_waveform_backbone_keeps_its_feature_extractor_settings(tmp_path):
    source = waveform_checkpoint("wav2vec2", tmp_path / "wav2vec2")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(source)
    hparams, text = build("lora", source, tmp_path, reduction_rate=8, init="reference")
    pretend_trained(hparams, hparams["backbone"].input_processor)
    save_petl_model(tmp_path / "petl_model", hparams, [str(i) for i in range(31)])
    export_petl_model(tmp_path / "petl_model", tmp_path / "exported")
    exported = transformers.AutoModel.from_pretrained(tmp_path / "exported")
    merge_petl_model(hparams["modules"])
    expected = hparams["petl_model"].adapted_model.model.state_dict()
    assert all(torch.equal(t, expected[n]) for n, t in exported.state_dict().items())
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "exported")
    assert extractor.do_normalize is False
