"""Shared fixtures: tiny random checkpoints saved with save_pretrained, synthetic datasets, and a
runner for the real recipe command lines. Nothing here touches the network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from petl_modules.backbones import tiny_ast_config
from petl_modules.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# Small recipe settings shared by the recipe tests (tiny backbone, short inputs, one epoch).
TINY_RUN = ["--number_of_epochs=1", "--batch_size=8", "--num_workers=0", "--max_frames=64"]


@pytest.fixture(scope="session")
def tiny_ast(tmp_path_factory):
    """A tiny random AST (hidden 64, 2 layers) saved with save_pretrained; returns its folder."""
    folder = tmp_path_factory.mktemp("tiny_ast")
    torch.manual_seed(0)
    transformers.ASTModel(tiny_ast_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ast_base_folder(tmp_path_factory):
    """The AST-base shape (transformers.ASTConfig() defaults), random weights, saved with
    save_pretrained (~5 s once); loading a lobe from it is fast. For parameter counts."""
    folder = tmp_path_factory.mktemp("ast_base")
    torch.manual_seed(0)
    transformers.ASTModel(transformers.ASTConfig()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def fsc_data(tmp_path_factory):
    """A synthetic Fluent Speech Commands release (31 intents) in the official layout."""
    return make_dataset("FSC", tmp_path_factory.mktemp("fsc"), per_class=1)


def run_train(recipe, method, data_folder, backbone, output_folder, *extra, check=True, launcher=None):
    """Runs ``python recipes/<recipe>/train.py hparams/<method>.yaml ...`` as a user would.

    ``launcher`` replaces ``python`` in front of the script (e.g. ``[python, -m, torch.distributed.run,
    --nproc_per_node=2]``). Returns the CompletedProcess (stdout and stderr merged in ``.stdout``).
    """
    cmd = [
        *(launcher or [sys.executable]),
        str(REPO / "recipes" / recipe / "train.py"), str(REPO / "hparams" / f"{method}.yaml"),
        f"--data_folder={data_folder}", f"--backbone_source={backbone}",
        f"--output_folder={output_folder}",
        # Options in ``extra`` replace the TINY_RUN ones (a key given twice is a yaml error).
        *[a for a in TINY_RUN if a.split("=", 1)[0] not in {e.split("=", 1)[0] for e in extra}],
        *extra,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def read_results(output_folder):
    with open(Path(output_folder) / "results.json") as stream:
        return json.load(stream)
