"""int8 inference: the ONNX graph with its linear layers quantised by onnxruntime
(``export --format=onnx --precision=int8``, ``classify --precision=int8``, several tasks).

Oracles: PyTorch fp32 on the same inputs (top-1 agreement, max |probability difference|) for a tiny
AST trained a little on generated tones (so that its answers are not a near-uniform tie), the
quantised graph's own nodes (``MatMulInteger``), and the refusals' messages. The runs over every
method file and every backbone family are slow.
"""

import json
import sys

import numpy as np
import onnx
import pytest
import soundfile
import torch

from petl_modules import classify as classify_cli
from petl_modules import export as export_cli
from petl_modules.classify import PETLClassifier
from petl_modules.export import export_petl_model
from petl_modules.methods import method_config
from petl_modules.model import PETLModel
from petl_modules.model.spec import PETLModelError
from petl_modules.sharing import onnx_export
from petl_modules.sharing.int8 import use_int8

from conftest import METHOD_FILES
from test_interop import TINY_MODEL_TYPES, petl_folder, processed, save_tiny

FREQUENCIES = (300.0, 900.0, 2000.0, 4500.0)  # one tone per class


def tones(count, seed, seconds=0.64):
    """``count`` noisy tones per class: ``(waveforms [N, S], labels [N])``."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wavs, labels = [], []
    for label, frequency in enumerate(FREQUENCIES):
        for _ in range(count):
            phase = float(torch.rand(1, generator=generator)) * 6.28
            wavs.append(0.3 * torch.sin(2 * np.pi * frequency * t + phase)
                        + 0.02 * torch.randn(len(t), generator=generator))
            labels.append(label)
    return torch.stack(wavs), torch.tensor(labels)


@pytest.fixture(scope="module")
def trained_folder(tiny_ast, tmp_path_factory):
    """A conformer-adapter model on the tiny AST trained for a few steps on ``tones``, saved."""
    torch.manual_seed(0)
    model = PETLModel.create(tiny_ast, method_config("adapter", {"reduction_rate": 8}),
                             [f"{int(f)}Hz" for f in FREQUENCIES], max_frames=64)
    wavs, labels = tones(4, seed=1)
    inputs, lengths = model.prepare_inputs(list(wavs))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=3e-3)
    model.train()
    for _ in range(20):
        hidden, mask = model.mods["petl_model"](inputs, lengths)
        loss = torch.nn.functional.cross_entropy(model.mods["classifier"](hidden, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("trained") / "petl_model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test exports into its own cache (``$PETL_AST_HOME/onnx``)."""
    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "home"))


@pytest.mark.slow  # exports and quantises a trained model (~5 s): kept out of the unit tier
def test_int8_agrees_with_fp32_on_a_trained_model_and_is_cached(trained_folder, tiny_ast, tmp_path,
                                                                   monkeypatch, capsys):
    classifier = PETLClassifier.from_folder(trained_folder, tiny_ast)
    inputs, lengths = classifier.prepare_inputs(list(tones(6, seed=2)[0]))
    fp32 = classifier.classify_inputs(inputs, lengths)[0]
    assert (fp32.argmax(-1) == tones(6, seed=2)[1]).float().mean() >= 0.75  # it learned the tones (chance: 0.25)
    assert float(fp32.max(-1).values.min()) > 0.5  # confident answers, not a near-uniform tie
    use_int8(classifier)
    int8 = classifier.classify_inputs(inputs, lengths)[0]
    assert classifier.int8.folder.parent == tmp_path / "home" / "onnx"
    assert torch.equal(int8.argmax(-1), fp32.argmax(-1))
    assert 0 < float((int8 - fp32).abs().max()) <= 0.05  # quantised (not fp32), and close
    nodes = {n.op_type for n in onnx.load(str(classifier.int8.folder / "model.onnx")).graph.node}
    assert "MatMulInteger" in nodes
    # the second run takes the graph from the cache: no export
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    again = use_int8(PETLClassifier.from_folder(trained_folder, tiny_ast))
    assert torch.equal(again.classify_inputs(inputs, lengths)[0], int8)
    # the PyTorch modules were left unmerged and unchanged by the export
    assert torch.equal(PETLClassifier.from_folder(trained_folder, tiny_ast).set_speed("fp32")
                       .classify_inputs(inputs, lengths)[0], fp32)
    # the command line, on files: the same answers as fp32, from the same cached graph
    wavs, labels = tones(1, seed=3, seconds=1.5)
    files = []
    for k, wav in enumerate(wavs):
        files.append(str(tmp_path / f"{k}.wav"))
        soundfile.write(files[-1], wav.numpy(), 16000, subtype="FLOAT")
    base = ["--backbone_source", str(tiny_ast), "--json"]
    assert classify_cli.main([str(trained_folder), *files, *base]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert classify_cli.main([str(trained_folder), *files, *base, "--precision=int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in int8] == [r["label"] for r in fp32]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(int8, fp32)) <= 0.05
    assert len(list((tmp_path / "home" / "onnx").iterdir())) == 1  # one graph in the cache


def test_export_writes_an_int8_graph_checked_by_its_agreement(trained_folder, tiny_ast, tmp_path,
                                                              capsys):
    out = tmp_path / "onnx"
    assert export_cli.main([str(trained_folder), str(out), "--format=onnx", "--precision=int8",
                            "--backbone_source", str(tiny_ast)]) == 0
    assert "ONNX int8, top-1 agreement with fp32 100%" in capsys.readouterr().out
    side = json.loads((out / "onnx_config.json").read_text())
    assert side["precision"] == "int8" and side["parity"]["precision"] == "int8"
    assert side["parity"]["rows"] == 12 and side["parity"]["top1_agreement"] == 1.0
    assert 0 < side["parity"]["max_abs_difference"] <= onnx_export.INT8_TOLERANCE
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "onnx_config.json"]
    # Opset 23: attention is one node, without the decomposition's NaN guard over every score.
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert side["opset"] == onnx_export.INT8_OPSET and "Attention" in ops and "IsNaN" not in ops


@pytest.mark.slow
def test_int8_export_that_fails_its_agreement_check_leaves_nothing(trained_folder, tiny_ast,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "INT8_TOLERANCE", -1.0)
    with pytest.raises(PETLModelError, match="failed the int8 agreement check.*top-1 agreement|"
                                             "failed the int8 agreement check"):
        export_petl_model(trained_folder, tmp_path / "onnx", tiny_ast, format="onnx",
                          precision="int8")
    assert list(tmp_path.iterdir()) == []  # no OUT_DIR, no hidden partial folder beside it


def test_int8_agreement_allows_only_near_ties_to_differ():
    class Session:
        def __init__(self, rows):
            self.rows = rows

        def run(self, names, feed):
            return [self.rows[: feed["input_values"].shape[0]].numpy()]

    class Lobe:
        input_kind, takes_lengths = "spectrogram", False
        input_processor = type("P", (), {"samples_needed": 1600, "max_frames": 4,
                                         "__call__": lambda self, w: torch.zeros(4, 2)})()

    expected = torch.tensor([[0.500, 0.495, 0.005]] * 3)
    tie = Session(torch.tensor([[0.495, 0.500, 0.005]] * 3))  # flipped where fp32 was a near tie
    result = onnx_export.int8_agreement(tie, lambda x, lengths: expected[: x.shape[0]], Lobe())
    assert result["top1_agreement"] == 0.0 and result["near_ties"] == result["rows"] == 12
    assert result["passed"]
    clear = torch.tensor([[0.50, 0.46, 0.04]] * 3)
    flipped = Session(torch.tensor([[0.46, 0.50, 0.04]] * 3))  # within the tolerance, not a tie
    result = onnx_export.int8_agreement(flipped, lambda x, lengths: clear[: x.shape[0]], Lobe())
    assert result["near_ties"] == 0 and not result["passed"]


# ==================================================================== refusals
def test_int8_without_onnxruntime_is_refused_by_name(trained_folder, tiny_ast, tmp_path,
                                                     monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    wav = tmp_path / "a.wav"
    soundfile.write(wav, tones(1, seed=4)[0][0].numpy(), 16000)
    assert classify_cli.main([str(trained_folder), str(wav), "--precision=int8",
                              "--backbone_source", str(tiny_ast)]) == 2
    assert "--precision=int8 needs onnxruntime" in capsys.readouterr().err
    assert export_cli.main([str(trained_folder), str(tmp_path / "out"), "--format=onnx",
                            "--precision=int8", "--backbone_source", str(tiny_ast)]) == 2
    assert "needs onnxruntime, which is not installed" in capsys.readouterr().err
    with pytest.raises(PETLModelError, match="needs onnxruntime"):
        use_int8(PETLClassifier.from_folder(trained_folder, tiny_ast))


def test_int8_of_a_model_that_cannot_export_names_its_method_and_family(trained_folder, tiny_ast,
                                                                         tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("this operator has no ONNX symbolic")

    monkeypatch.setattr(onnx_export, "export_graph", refuse)
    classifier = PETLClassifier.from_folder(trained_folder, tiny_ast)
    with pytest.raises(PETLModelError, match=r"ONNX export \(int8\) of the 'adapter' model \(ast "
                                             r"family\).*failed: RuntimeError: this operator"):
        use_int8(classifier)
    assert classifier.int8 is None and classifier.precision == "fp32"  # never a silent fp32 run
    assert [p.name for p in (tmp_path / "home" / "onnx").iterdir()] == []  # nothing half-written


def test_int8_refuses_other_devices_compile_and_other_formats(trained_folder, tiny_ast, tmp_path,
                                                              capsys):
    classifier = PETLClassifier.from_folder(trained_folder, tiny_ast)
    with pytest.raises(PETLModelError, match="--compile applies to PyTorch's modules only"):
        use_int8(classifier, compile=True)
    classifier.device = "cuda"
    with pytest.raises(PETLModelError, match="runs onnxruntime on the CPU; --device=cuda"):
        use_int8(classifier)
    with pytest.raises(PETLModelError, match="use petl_modules.sharing.int8.use_int8"):
        classifier.set_speed(precision="int8")
    with pytest.raises(PETLModelError, match="applies to --format=onnx only"):
        export_petl_model(trained_folder, tmp_path / "out", tiny_ast, precision="int8")


# ==================================================================== several tasks
@pytest.mark.slow
def test_several_tasks_in_int8_give_each_models_int8_answer(tiny_ast, tmp_path):
    folders = [petl_folder(m, tiny_ast, tmp_path, name=m) for m in ("lora", "adapter")]
    tasks = PETLClassifier.from_folders(folders)
    inputs, lengths = processed(tasks)
    fp32 = tasks.classify_inputs(inputs, lengths)
    use_int8(tasks)
    int8 = tasks.classify_inputs(inputs, lengths)
    mixed = tasks.classify_mixed([torch.zeros(8000), torch.zeros(9000)], [folders[1], folders[0]])
    for folder in folders:
        alone = use_int8(PETLClassifier.from_folder(folder))
        name = str(folder)
        assert torch.equal(int8[name][0], alone.classify_inputs(inputs, lengths)[0])
        assert float((int8[name][0] - fp32[name][0]).abs().max()) <= 0.05
    assert [row["task"] for row in mixed] == [str(folders[1]), str(folders[0])]


# ==================================================================== every method and family
@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_FILES)
def test_int8_export_of_every_method(method, tiny_ast, tmp_path):
    side = export_petl_model(petl_folder(method, tiny_ast, tmp_path), tmp_path / "onnx",
                             format="onnx", precision="int8")
    assert side["parity"]["top1_agreement"] + side["parity"]["near_ties"] / 12 == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_int8_classify_of_every_backbone_family(model_type, tmp_path):
    source = save_tiny(model_type, tmp_path / "base", pre_ln=True)
    classifier = PETLClassifier.from_folder(petl_folder("adapter", source, tmp_path))
    inputs, lengths = processed(classifier)
    fp32 = classifier.classify_inputs(inputs, lengths)[0]
    int8 = use_int8(classifier).classify_inputs(inputs, lengths)[0]
    assert float((int8 - fp32).abs().max()) <= onnx_export.INT8_TOLERANCE
