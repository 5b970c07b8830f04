"""Several tasks on one frozen backbone: every method whose backbone stays frozen, stacked with
the others on AST and on wav2vec2 (both layer layouts), gives each task its model's own outputs;
what cannot share the backbone is refused with the reason."""

import inspect
import json

import pytest
import soundfile
import torch

from petl_modules import classify as classify_cli
from petl_modules.classify import PETLClassifier
from petl_modules.methods import METHODS
from petl_modules.model.folder import read_config
from petl_modules.training.pretrained import (
    PETLModelError,
    save_petl_model,
)

from conftest import METHOD_FILES
from test_after_training import build, pretend_trained, tiny_options, waveforms


def trains_backbone(method):
    """Whether the method trains backbone tensors beyond LayerNorms (BitFit's biases, full
    fine-tuning's layers), read off the ``trainable`` specs its config's ``build`` gives."""
    text = inspect.getsource(METHODS[method].build)
    return any(spec in text for spec in ('"biases"', "top_layers", '"all"'))


FROZEN = [m for m in METHOD_FILES if not trains_backbone(m)]
CHANGING = [m for m in METHOD_FILES if trains_backbone(m)]
# Variants that take the other code paths: a sequential adapter before its sublayer (run on its own
# rows), Houlsby bottlenecks, Convpass experts, shallow prompts (another sequence length), LoRA
# on every projection.
VARIANTS = [("adapter", {"seq_or_par": "sequential", "placement": "before", "apply_residual": True}),
            ("adapter", {"adapter_type": "Houlsby", "adapter_block": "bottleneck"}),
            ("soft_moa", {"adapter_block": "convpass", "adapter_type": "Houlsby"}),
            ("prompt_tuning", {"deep_prompt": False, "prompt_len": 4}),
            ("lora", {"lora_targets": "Wq,Wk,Wv,Wo"}),
            # the FFN's projections; (IA)3 rescales the input of the FFN's output projection (run on
            # its task's rows) and the output of the others (shared)
            ("lora", {"lora_targets": "Wq,ffn_in,ffn_out"}),
            ("dora", {"lora_targets": "Wo,ffn_out"}),
            ("ia3", {"ia3_targets": "Wq,Wk,Wv,Wo,ffn_in,ffn_out"}),
            ("vera", {"vera_targets": "Wq,Wv,ffn_in", "rank": 16})]


def make_folder(method, source, tmp_path, seed, thresholds=None, **options):
    """A pretend-trained petl_model/ folder of ``method`` on ``source`` (``thresholds``: of a
    multi-label model)."""
    folder = tmp_path / f"{method}_{seed}"
    torch.manual_seed(seed)
    hparams, _ = build(method, source, folder, **tiny_options(method, **options))
    pretend_trained(hparams, hparams["backbone"].input_processor)
    classes = [f"{method}{seed}-{i}" for i in range(31)]
    save_petl_model(folder / "petl_model", hparams, classes, thresholds)
    return str(folder / "petl_model")


def check_outputs(folders):
    """Every task on every file, then a mixed batch, against each model alone (1e-5)."""
    several = PETLClassifier.from_folders(folders)
    wavs, mixed = waveforms(3), waveforms(len(folders), seed=5)
    every = several.classify_waveforms(wavs)
    names = list(reversed(folders))
    rows = several.classify_mixed(mixed, names)
    for folder in folders:
        one = PETLClassifier.from_folder(folder)
        assert torch.allclose(every[folder][0], one.classify_waveforms(wavs)[0], atol=1e-5), folder
        expected = one.classify_waveforms(mixed)[0]
        for k, (name, row) in enumerate(zip(names, rows)):
            if name == folder:
                assert row["task"] == name
                assert torch.allclose(row["probabilities"], expected[k], atol=1e-5), folder
    return several


@pytest.fixture(scope="module")
def ast_folders(tiny_ast, tmp_path_factory):
    """Three tasks on the tiny AST that take the three paths of a router and two sequence
    lengths: LoRA (reads the frozen output), a sequential adapter before its sublayer (runs the
    sublayer on its own rows), shallow prompts (more tokens: another stack)."""
    tmp = tmp_path_factory.mktemp("multitask")
    return [make_folder("lora", tiny_ast, tmp, 0), make_folder("adapter", tiny_ast, tmp, 1, **VARIANTS[0][1]),
            make_folder("prompt_tuning", tiny_ast, tmp, 2, **VARIANTS[3][1])]


def test_tasks_on_one_backbone_give_their_models_outputs(ast_folders):
    check_outputs(ast_folders)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ast", "wav2vec2_post_ln", "wav2vec2_pre_ln"])
def test_every_frozen_backbone_method_gives_its_own_outputs_on_one_backbone(family, tiny_ast,
                                                                           waveform_checkpoints,
                                                                           tmp_path):
    source = {"ast": str(tiny_ast), "wav2vec2_post_ln": waveform_checkpoints["wav2vec2", "post_ln"],
              "wav2vec2_pre_ln": waveform_checkpoints["wav2vec2", "pre_ln"]}[family]
    tasks = [(m, {}) for m in FROZEN] + VARIANTS
    check_outputs([make_folder(m, source, tmp_path, seed, **opts)
                   for seed, (m, opts) in enumerate(tasks)])


@pytest.mark.slow
def test_the_methods_beyond_the_papers_join_the_shared_pass(tiny_ast, tmp_path):
    """DoRA, (IA)3 (both paths), VeRA and the weighted layer sum, with a LoRA task, on one backbone."""
    tasks = [("lora", {}), ("dora", {}), ("ia3", {}), ("vera", {"rank": 16}), ("layer_sum", {})]
    check_outputs([make_folder(m, tiny_ast, tmp_path, seed, **opts) for seed, (m, opts) in enumerate(tasks)])


def test_one_backbone_is_kept_for_all_tasks(ast_folders, tiny_ast, tmp_path):
    several = PETLClassifier.from_folders(ast_folders)
    total = sum(p.numel() for p in several.parameters())
    backbone = sum(p.numel() for p in build("linear", tiny_ast, tmp_path, max_frames=64)[0]
                   ["backbone"].parameters())
    assert total == backbone + sum(c["trained_params"] for c in several.configs)


@pytest.mark.parametrize("method", CHANGING)
def test_methods_that_train_the_backbone_are_refused_with_the_reason(method, ast_folders, tiny_ast,
                                                                    tmp_path):
    folders = [ast_folders[0], make_folder(method, tiny_ast, tmp_path, 1)]
    with pytest.raises(PETLModelError, match=f"'{method}' model .* trains backbone tensors"):
        PETLClassifier.from_folders(folders)


def test_other_bases_inputs_and_wavlm_lora_are_refused_with_the_reason(ast_folders, tiny_ast,
                                                                       other_ast,
                                                                       waveform_checkpoints,
                                                                       tmp_path):
    lora = ast_folders[0]
    with pytest.raises(PETLModelError, match="same base checkpoint"):
        PETLClassifier.from_folders([lora, make_folder("linear", other_ast, tmp_path, 1)])
    with pytest.raises(PETLModelError, match="input settings"):
        PETLClassifier.from_folders([lora, make_folder("linear", tiny_ast, tmp_path, 2,
                                                       max_frames=80)])
    with pytest.raises(PETLModelError, match="build the backbone differently"):
        PETLClassifier.from_folders([lora, make_folder("linear", tiny_ast, tmp_path, 3,
                                                       position_embeddings="zeros")])
    wavlm = waveform_checkpoints["wavlm", "post_ln"]
    with pytest.raises(PETLModelError, match="WavLM"):
        PETLClassifier.from_folders([make_folder("linear", wavlm, tmp_path, 4),
                                     make_folder("lora", wavlm, tmp_path, 5)])
    with pytest.raises(PETLModelError, match="changes WavLM's attention projections \\(IA3\\)"):
        PETLClassifier.from_folders([make_folder("linear", wavlm, tmp_path, 6),
                                     make_folder("ia3", wavlm, tmp_path, 7)])
    PETLClassifier.from_folders([make_folder("linear", wavlm, tmp_path, 8),  # its FFN is called: shared
                                 make_folder("ia3", wavlm, tmp_path, 9, ia3_targets="ffn_in,ffn_out")])


def test_classify_cli_gives_every_file_every_tasks_answer(ast_folders, tmp_path, capsys):
    folders = ast_folders[:2]
    files = []
    for k, wav in enumerate(waveforms(2)):
        files.append(str(tmp_path / f"{k}.wav"))
        soundfile.write(files[-1], wav.numpy(), 16000)
    argv = [a for f in folders for a in ("--model", f)] + ["--json", "--top_k=2", "--", *files]
    assert classify_cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == files
    for folder in folders:
        one = PETLClassifier.from_folder(folder)
        for row, path in zip(rows, files):
            expected = one.classify_file(path)[0][0]
            assert row["tasks"][folder]["label"] == one.labels[int(expected.argmax())]
            assert row["tasks"][folder]["score"] == pytest.approx(float(expected.max()), abs=1e-5)
            assert len(row["tasks"][folder]["top_k"]) == 2
    assert classify_cli.main(["--model", folders[0], "--model", str(tmp_path / "nope"), "--",
                              files[0]]) == 2
    assert "not an existing folder" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_multitask_benchmark_reports_its_ratios(tmp_path):
    from test_bench import load_bench

    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--quick", "--suite=multitask", "--threads=1", "--steps=1", "--warmup=0"])
    finally:
        torch.set_num_threads(threads)
    assert {r["key"] for r in out["results"]} == {"one", "separate", "every", "mixed"}
    for key in ("multitask_every_task_vs_one_task", "multitask_every_task_vs_separate_models",
                "multitask_mixed_batch_vs_one_task", "multitask_weights_vs_one_model"):
        assert out["ratios"][key] > 0, key
    # Four separate models hold four backbones; one backbone holds every task.
    assert out["ratios"]["separate_models_weights_vs_one_model"] > 3.5
    assert out["ratios"]["multitask_weights_vs_one_model"] < 1.5


def write_wavs(tmp_path, count=3, seconds=2.0):
    """Files long enough for several 64-frame windows."""
    paths = []
    for k, wav in enumerate(waveforms(count, seconds=seconds, seed=9)):
        path = tmp_path / f"clip{k}.wav"
        soundfile.write(str(path), wav.numpy(), 16000)
        paths.append(str(path))
    return paths


def test_multilabel_and_sliding_window_tasks_follow_their_models(tiny_ast, tmp_path):
    """A multi-label task keeps its sigmoid and thresholds, and tasks tested with sliding windows
    pool their windows as each model alone does (classify_files, the command line's path)."""
    sliding = dict(eval_windows="sliding", window_pooling="max")
    thresholds = [0.3 + 0.01 * i for i in range(31)]
    labels = make_folder("lora", tiny_ast, tmp_path, 1, thresholds, task="multilabel", **sliding)
    single = make_folder("adapter", tiny_ast, tmp_path, 2, **sliding)
    config = read_config(labels)
    assert config["task"] == "multilabel" and config["evaluation"]["eval_windows"] == "sliding"
    assert config["thresholds"] == thresholds
    files = write_wavs(tmp_path)
    several = PETLClassifier.from_folders([labels, single])
    found, errors = several.classify_files(files, batch_size=4)
    assert not errors and len(found) == len(files)
    for folder in (labels, single):
        alone, alone_errors = PETLClassifier.from_folder(folder).classify_files(files, batch_size=3)
        assert not alone_errors
        for row, expected in zip(found, alone):
            task = row["tasks"][folder]
            assert torch.allclose(task["probabilities"], expected["probabilities"], atol=1e-5)
            assert task["labels"] == expected["labels"]
    multi = found[0]["tasks"][labels]["probabilities"]
    assert not torch.isclose(multi.sum(), torch.tensor(1.0))  # sigmoid scores, not a softmax
    with pytest.raises(PETLModelError, match="sliding windows"):
        several.classify_waveforms(waveforms(1))


def test_tasks_of_different_evaluation_protocols_are_refused(tiny_ast, tmp_path):
    first = make_folder("lora", tiny_ast, tmp_path, 1)
    windows = make_folder("lora", tiny_ast, tmp_path, 2, eval_windows="sliding")
    with pytest.raises(PETLModelError, match="different evaluation protocols"):
        PETLClassifier.from_folders([first, windows])
