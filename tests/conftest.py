"""Shared fixtures: tiny random checkpoints saved with save_pretrained, synthetic datasets, and a
runner for the real recipe command lines. Nothing here touches the network."""

import atexit
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before huggingface_hub is imported: it reads these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Saving a model folder records its local base checkpoint in the user's cache
# (petl_modules.model.bases): the tests' records go to a folder of their own, removed at exit.
if "PETL_AST_HOME" not in os.environ:
    os.environ["PETL_AST_HOME"] = tempfile.mkdtemp(prefix="petl_ast_home_")
    atexit.register(shutil.rmtree, os.environ["PETL_AST_HOME"], True)

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from petl_modules.backbones.wav2vec2 import WAVEFORM_MODELS  # noqa: E402
from petl_modules.methods import METHODS  # noqa: E402
from petl_modules.synthetic import make_dataset  # noqa: E402
from petl_modules.tiny import tiny_ast_config, tiny_waveform_config

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))


# ==================================================================== the real-Slurm check
# Tests marked `slurm` submit jobs to a real Slurm (tests/slurm/start_slurm.sh starts one, as
# root). They run only when asked: `pytest --slurm` or PETL_SLURM_TESTS=1 (tests/slurm/check.sh
# does both), so plain `pytest` and `pytest -m "not slow"` stay as they are.
def pytest_addoption(parser):
    parser.addoption("--slurm", action="store_true",
                     help="also run the tests marked slurm (a real single-node Slurm: tests/slurm/)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slurm") or os.environ.get("PETL_SLURM_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="real Slurm: run tests/slurm/check.sh (or pytest --slurm)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)

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
def tiny_ast_with_dropout(tmp_path_factory):
    """The tiny AST with dropout, so that fine-tuning it draws random numbers at every step."""
    folder = tmp_path_factory.mktemp("tiny_ast_dropout")
    torch.manual_seed(0)
    config = tiny_ast_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    transformers.ASTModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def other_ast(tmp_path_factory):
    """Another tiny AST with the tiny AST's shape and different weights."""
    folder = tmp_path_factory.mktemp("other_ast")
    torch.manual_seed(1)
    transformers.ASTModel(transformers.ASTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_length=128)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ast_base_folder(tmp_path_factory):
    """The AST-base shape (transformers.ASTConfig() defaults), random weights, saved with
    save_pretrained (~5 s once); loading a lobe from it is fast. For parameter counts."""
    folder = tmp_path_factory.mktemp("ast_base")
    torch.manual_seed(0)
    transformers.ASTModel(transformers.ASTConfig()).save_pretrained(folder)
    return folder


# wav2vec2-family layouts: base models are post-LN with a group-norm CNN, large ones pre-LN with a
# layer-norm CNN (do_stable_layer_norm, feat_extract_norm).
WAVEFORM_LAYOUTS = {"post_ln": (False, "group"), "pre_ln": (True, "layer")}
WAVEFORM_CHECKPOINTS = [(t, layout) for t in WAVEFORM_MODELS for layout in WAVEFORM_LAYOUTS]
# Tensors with a zero gradient by construction, not by a defect: a bias right before a BatchNorm
# in training mode (the conformer adapter's depthwise conv, as the reference; the paper's parameter
# counts include it) is removed again by the batch mean. Its gradient is zero up to rounding, so
# whether it is exactly zero (and whether the tensor moves) depends on the order of the sums.
ZERO_GRADIENT_BY_CONSTRUCTION = ("*.depthwise.bias",)


def zero_gradient_by_construction(name):
    """Whether trainable tensor ``name`` gets no gradient by construction (see above)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in ZERO_GRADIENT_BY_CONSTRUCTION)


# Every registered method (each has its method file, hparams/<name>.yaml: test_method_configs):
# the lists of methods in tests come from the registry.
METHOD_FILES = sorted(METHODS)


@pytest.fixture(scope="session")
def waveform_checkpoints(tmp_path_factory):
    """Tiny random wav2vec2 / HuBERT / WavLM checkpoints (hidden 32, 2 layers) in both layouts,
    saved with save_pretrained: ``{(model_type, layout): folder}``."""
    folders = {}
    for model_type, layout in WAVEFORM_CHECKPOINTS:
        folder = tmp_path_factory.mktemp(f"{model_type}_{layout}")
        torch.manual_seed(0)
        config = tiny_waveform_config(model_type, *WAVEFORM_LAYOUTS[layout])
        WAVEFORM_MODELS[model_type][1](config).save_pretrained(folder)
        folders[model_type, layout] = str(folder)
    return folders


# Every registered backbone family, each wav2vec2-family model in both layer layouts: names of
# ``tiny_backbones`` (test_matrix's test_every_registered_model_type_is_in_the_matrix keeps it whole).
TINY_BACKBONES = (["ast"] + [f"{model_type}-{layout}" for model_type, layout in WAVEFORM_CHECKPOINTS]
                  + ["data2vec-audio", "whisper"])


def tiny_method_options(method_file, backbone):
    """Options a method file needs on the tiny checkpoints of ``backbone`` (a TINY_BACKBONES name):
    their hidden sizes, 64 (AST) and 32 (wav2vec2 family), leave no bottleneck at a method file's
    default reduction rate (96, 128: a configuration error), so 16; full_ft on the wav2vec2
    family unfreezes the top 3 layers (family default) of checkpoints that have 2, so the top one."""
    keys = set(METHODS[Path(method_file).stem].options())
    options = {"reduction_rate": 16} if "reduction_rate" in keys else {}
    if "unfrozen_layers" in keys and backbone != "ast":
        options["unfrozen_layers"] = 1
    return options


@pytest.fixture(scope="session")
def tiny_backbones(tiny_ast, waveform_checkpoints, tiny_data2vec_audio, tiny_whisper):
    """``{TINY_BACKBONES name: folder}`` of the tiny random checkpoints."""
    folders = {"ast": str(tiny_ast), "data2vec-audio": str(tiny_data2vec_audio),
               "whisper": str(tiny_whisper)}
    folders.update({f"{t}-{layout}": f for (t, layout), f in waveform_checkpoints.items()})
    return folders


@pytest.fixture(scope="session")
def tiny_wav2vec2(waveform_checkpoints):
    """A tiny random wav2vec2 in the base models' layout (post-LN, group-norm CNN); its folder."""
    return waveform_checkpoints["wav2vec2", "post_ln"]


@pytest.fixture(scope="session")
def wav2vec2_base_folder(tmp_path_factory):
    """The wav2vec2-base shape (Wav2Vec2Config() defaults: 94,371,712 parameters), random
    weights, saved with save_pretrained (~4 s once). For parameter counts."""
    folder = tmp_path_factory.mktemp("wav2vec2_base")
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).save_pretrained(folder)
    return str(folder)


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


@pytest.fixture(scope="session")
def tiny_data2vec_audio(tmp_path_factory):
    """A tiny random data2vec-audio (hidden 32, 2 layers, 5 positional convolutions of kernel 19)
    saved with save_pretrained, with data2vec-audio-base's preprocessor_config.json (normalised
    input, attention mask); its folder."""
    from petl_modules.tiny import tiny_data2vec_audio_config

    folder = tmp_path_factory.mktemp("data2vec_audio")
    torch.manual_seed(0)
    transformers.Data2VecAudioModel(tiny_data2vec_audio_config()).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A tiny random Whisper (encoder d_model 64, 2 layers, 100 positions: a 2 s full input) saved
    as the hub's checkpoints are (``WhisperForConditionalGeneration`` + preprocessor_config.json);
    returns its folder."""
    from petl_modules.tiny import tiny_whisper_config, tiny_whisper_feature_extractor

    folder = tmp_path_factory.mktemp("tiny_whisper")
    torch.manual_seed(0)
    config = tiny_whisper_config()
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    tiny_whisper_feature_extractor(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def whisper_base_folder(tmp_path_factory):
    """The whisper-base encoder shape (d_model 512, 6 layers, 8 heads, FFN 2048, 80 mel bins, 1500
    positions), random weights, the encoder alone saved with save_pretrained (~2 s once)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = tmp_path_factory.mktemp("whisper_base")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8,
                                        encoder_ffn_dim=2048, num_mel_bins=80, max_source_positions=1500)
    WhisperEncoder(config).save_pretrained(folder)
    return str(folder)
