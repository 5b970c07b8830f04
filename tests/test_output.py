"""What a user reads: no third-party line that says nothing about the run (SpeechBrain's
torchvision warning, torch's ONNX torchvision operators, SpeechBrain's start lines once per
folder), progress bars named with the fold, epoch and split, and a confusion-matrix figure with
counts, a colour bar, a title and labels that do not overlap."""

import importlib.util
import subprocess
import sys

import matplotlib
import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.epoch_loop import EpochCounter

from petl_modules.training import metrics
from petl_modules.training.brain import ClassificationBrain
from petl_modules.training.compose import compose_hparams, load_hparams

from conftest import REPO

matplotlib.use("Agg")


def run_python(script, tmp_path, *args):
    """``python script.py args`` from the repository root: its stdout and stderr together."""
    path = tmp_path / "script.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


@pytest.mark.slow  # runs Python in a subprocess (~5 s): kept out of the unit tier
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="the warnings are about torchvision missing")
def test_the_torchvision_warnings_of_speechbrain_and_the_onnx_exporter_are_not_shown(tmp_path):
    output = run_python(
        "import logging\n"
        "import petl_modules\n"
        "import speechbrain.utils.train_logger\n"
        "from torch.onnx._internal.exporter._registration import ONNXRegistry\n"
        "ONNXRegistry.from_torchlib()\n"  # what every export builds
        "logging.getLogger('speechbrain.utils.train_logger').warning('another warning')\n",
        tmp_path)
    assert "torchvision" not in output
    assert "another warning" in output  # the loggers' other lines still show


@pytest.mark.slow  # runs Python in a subprocess (~5 s): kept out of the unit tier
def test_speechbrains_start_lines_show_once_and_each_experiment_folder_once(tmp_path):
    output = run_python(
        "import sys\n"
        "import petl_modules\n"
        "import speechbrain as sb\n"
        "for folder in sys.argv[1:]:\n"
        "    sb.create_experiment_directory(folder)\n",
        tmp_path, tmp_path / "out", tmp_path / "out", tmp_path / "out" / "fold_1")
    assert output.count("Applied quirks") == output.count("Excluded quirks") == 1
    assert output.count("Beginning experiment!") == 1
    assert output.count(f"Experiment folder: {tmp_path / 'out'}\n") == 1
    assert output.count(f"Experiment folder: {tmp_path / 'out' / 'fold_1'}\n") == 1
    # the log file of each folder is still written
    assert (tmp_path / "out" / "log.txt").is_file() and (tmp_path / "out" / "fold_1" / "log.txt").is_file()


def test_progress_bars_are_named_with_fold_epoch_and_split(tiny_ast, tmp_path, capsys):
    hparams = load_hparams(compose_hparams(
        REPO / "hparams" / "linear.yaml", REPO / "recipes" / "ESC50" / "esc50.yaml",
        {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
         "backbone_source": str(tiny_ast), "number_of_epochs": 2, "max_frames": 64}))
    hparams["fold"] = 3
    brain = ClassificationBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                                hparams=hparams, checkpointer=hparams["checkpointer"])
    generator = torch.Generator().manual_seed(0)
    batches = [{"id": str(k), "inputs": torch.randn(64, 128, generator=generator),
                "label_index": torch.tensor([k % 50])} for k in range(4)]
    loader = torch.utils.data.DataLoader(batches, batch_size=2, collate_fn=PaddedBatch)
    brain.fit(EpochCounter(2), loader, loader, progressbar=True)
    brain.evaluate(loader, max_key="valid_acc", progressbar=True)
    bars = capsys.readouterr().err
    for name in ("fold 3, epoch 1/2, train", "fold 3, epoch 1/2, valid", "fold 3, epoch 2/2, train",
                 "fold 3, epoch 2/2, valid", "fold 3, test"):
        assert f"{name}: 100%" in bars, name
    import speechbrain.core

    assert speechbrain.core.tqdm.__module__.startswith("tqdm")  # SpeechBrain's own again


def test_confusion_matrix_figure_has_counts_colour_bar_title_and_labels_that_do_not_overlap(tmp_path):
    names = [f"class_{k:02d}_with_a_long_name" for k in range(50)]
    confusion = [[0] * 50 for _ in range(50)]
    for k in range(50):
        confusion[k][k] = 7 + k % 3
        confusion[k][(k + 1) % 50] = 1 + k % 2
    figure = metrics.confusion_figure(confusion, names, title="ESC50 linear, fold 1")
    matrix_axes, colour_bar = figure.axes
    assert matrix_axes.get_title().startswith("ESC50 linear, fold 1")
    assert "test accuracy" in matrix_axes.get_title()
    assert colour_bar.get_label() == "<colorbar>"
    # one count in each non-empty cell, at the cell's place; zeros left blank
    counts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
              for t in matrix_axes.texts if t.get_text()}
    assert counts == {(i, j): str(v) for i, row in enumerate(confusion) for j, v in enumerate(row) if v}
    assert [t.get_text() for t in matrix_axes.get_xticklabels()] == names
    assert [t.get_text() for t in matrix_axes.get_yticklabels()] == names
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for labels in (matrix_axes.get_xticklabels(), matrix_axes.get_yticklabels()):
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    assert min(t.get_fontsize() for t in matrix_axes.texts) >= 6
    csv_path, png_path = metrics.write_confusion_matrix(tmp_path, confusion, names, title="t")
    assert png_path.stat().st_size > 0 and csv_path.read_text().startswith("true \\ predicted,")
