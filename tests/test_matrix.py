"""Every recipe x every backbone family and layer layout x every method file, in one process.

Each case calls ``recipes/<DATASET>/train.py``'s ``main(argv)`` as a user's command line would
run it: two training steps (SpeechBrain's ``--debug --debug_batches=2 --debug_epochs=1``, batches
of 2), validation, test with the best checkpoint, on the tiny generated copy of the dataset
(``petl_modules.synthetic``, one clip per class) and a tiny random checkpoint (``conftest``). It
checks that the run finishes (a ``sys.exit`` of the recipe fails the case with its message), that
every training loss and the test loss are finite, that results.json names the run's method,
dataset and checkpoint type and counts exactly the tensors that train, that every trainable tensor
is handed to the optimiser, and that each one gets a non-zero gradient in at least one of the two
steps: with identity initialisation a tensor before a zero up-projection gets no gradient on the
first step by construction (weight decay alone changes every tensor, so "changed" would prove
nothing).

Recipes, backbones and method files are listed from the folders, so a new one joins the matrix.
Cheap cases: data generated and manifests prepared once per dataset (shared ``manifest_folder``),
one fold, 64 AST frames / 0.64 s of waveform, no DataLoader workers, one torch thread, and
SpeechBrain's environment description (``pip freeze`` and ``git`` subprocesses, twice per run)
stubbed out. The 315 cases took 78 s on a shared 2-core machine.

Settings the tiny data and checkpoints need (each one explained where it is set): a bottleneck
reduction rate that leaves a bottleneck, a number of unfrozen layers the 2-layer checkpoints have,
and a SpecAugment time mask shorter than the clips.
"""

import functools
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import ruamel.yaml
import speechbrain.utils.logger
import torch

from petl_modules.synthetic import make_dataset
from petl_modules.training.brain import ClassificationBrain

from conftest import REPO, TINY_BACKBONES as BACKBONES, tiny_method_options, zero_gradient_by_construction

pytestmark = pytest.mark.slow

RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/train.py"))
METHODS = sorted(p.stem for p in (REPO / "hparams").glob("*.yaml"))
# config.json model_type, if not the backbone name up to its layout suffix
MODEL_TYPES = {"ast": "audio-spectrogram-transformer", "data2vec-audio": "data2vec-audio",
               "wav2vec2-bert": "wav2vec2-bert"}
# What results.json records when it is not the registry's key: one-file checkpoints have no
# config.json, hence no model_type.
RESULTS_MODEL_TYPES = {"beats": None}

# The run: two optimiser steps of two clips, two validation and two test batches, one fold.
SMALL_RUN = [
    "--batch_size=2", "--num_workers=0", "--max_frames=64", "--clip_seconds=0.64",
    "--number_of_epochs=1", "--debug", "--debug_batches=2", "--debug_epochs=1",
    "--ckpt_interval_minutes=0",
]
# ESC-50 / UrbanSound8K SpecAugment: a time mask of up to 80 frames (0.8 s) is longer than the
# 0.5 s clips; on waveforms it often silences a whole clip, and a random tiny checkpoint (zero
# biases) maps silence to exactly zero activations, so some tensors get no gradient in two steps.
# A 0.2 s mask keeps the augmentation in every step without blanking the clip.
SHORT_TIME_MASK = "--time_mask=20"


@functools.lru_cache(maxsize=None)
def _yaml_keys(path):
    with open(path) as stream:
        return set(ruamel.yaml.YAML().load(stream))


def load_recipe(name):
    """Imports ``recipes/<name>/train.py`` by path, as module ``petl_recipe_<name>`` (recipes are
    not a package; each train.py puts its own folder on sys.path for its prepare module)."""
    module_name = f"petl_recipe_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = REPO / "recipes" / name / "train.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    # Its prepare module must be its own, whatever other recipe folders sit on sys.path.
    owners = {getattr(v, "__module__", None) for v in vars(module).values() if callable(v)}
    for owner in sorted(o for o in owners if o and o.endswith("_prepare")):
        found = Path(sys.modules[owner].__file__).resolve().parent
        assert found == path.parent, f"{name}/train.py imported {owner} from {found}"
    return module


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The matrix runs with one intra-op thread: on tensors this small a second OpenMP thread only
    waits, and on a busy 2-core machine it made each case about 10 times slower (2.2 s, 0.18 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    """``{recipe: (data_folder, manifest_folder)}``: one generated release per dataset (one clip
    per class and split, 0.5 s) and one manifest folder, prepared by the first case that runs."""
    root = tmp_path_factory.mktemp("matrix_data")
    data = {}
    for recipe in RECIPES:
        folder = make_dataset(recipe, root / recipe, per_class=1, seconds=0.5)
        data[recipe] = (folder, root / "manifests" / recipe)
    return data


class GradientRecorder:
    """Wraps ``ClassificationBrain.fit_batch`` and ``optimizers_step`` to record, per run, the
    training losses, the trainable tensors of the Brain's modules, the tensors the optimiser
    holds, and which trainable tensors ever had a non-zero gradient at an optimiser step."""

    def __init__(self, monkeypatch):
        self.losses, self.trainable, self.optimised, self.nonzero = [], set(), set(), set()
        self.steps = self.trainable_numel = 0
        fit_batch = ClassificationBrain.fit_batch
        optimizers_step = ClassificationBrain.optimizers_step
        recorder = self

        def recording_fit_batch(brain, batch):
            loss = fit_batch(brain, batch)
            recorder.losses.append(float(loss))
            return loss

        def recording_optimizers_step(brain):
            recorder.steps += 1
            params = dict(brain.modules.named_parameters())
            recorder.trainable = {n for n, p in params.items() if p.requires_grad}
            recorder.trainable_numel = sum(params[n].numel() for n in recorder.trainable)
            held = {id(p) for group in brain.optimizer.param_groups for p in group["params"]}
            recorder.optimised = {n for n, p in params.items() if id(p) in held}
            for name in recorder.trainable:
                grad = params[name].grad
                if grad is not None and bool(torch.any(grad != 0)):
                    recorder.nonzero.add(name)
            return optimizers_step(brain)

        monkeypatch.setattr(ClassificationBrain, "fit_batch", recording_fit_batch)
        monkeypatch.setattr(ClassificationBrain, "optimizers_step", recording_optimizers_step)


def matrix_argv(recipe, backbone, method, matrix_data, tiny_backbones, output_folder):
    data_folder, manifest_folder = matrix_data[recipe]
    method_file = REPO / "hparams" / f"{method}.yaml"
    argv = [
        str(method_file), f"--data_folder={data_folder}",
        f"--backbone_source={tiny_backbones[backbone]}", f"--output_folder={output_folder}",
        f"--manifest_folder={manifest_folder}", *SMALL_RUN,
    ]
    argv += [f"--{key}={value}" for key, value in tiny_method_options(method_file, backbone).items()]
    dataset_keys = _yaml_keys(next((REPO / "recipes" / recipe).glob("*.yaml")))
    if "folds" in dataset_keys:
        argv.append("--fold=1")
    if "time_mask" in dataset_keys:
        argv.append(SHORT_TIME_MASK)
    return argv


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_backbone_method_trains_every_tensor(recipe, backbone, method, matrix_data,
                                                    tiny_backbones, tmp_path, monkeypatch):
    # SpeechBrain describes the environment (pip freeze, git) in every experiment folder: seconds
    # of subprocesses per run, nothing a run's result depends on.
    monkeypatch.setattr(speechbrain.utils.logger, "get_environment_description",
                        lambda: "(environment description skipped by tests/test_matrix.py)\n")
    recorder = GradientRecorder(monkeypatch)
    argv = matrix_argv(recipe, backbone, method, matrix_data, tiny_backbones, tmp_path / "run")
    try:
        results = load_recipe(recipe).main(argv)
    except SystemExit as stop:
        pytest.fail(f"{recipe} x {backbone} x {method} stopped: {stop.code}", pytrace=False)

    (fold,) = results["folds"]
    assert results["method"] == method and results["dataset"] == recipe
    registered = MODEL_TYPES.get(backbone, backbone.split("-")[0])
    assert results["model_type"] == RESULTS_MODEL_TYPES.get(registered, registered)
    assert recorder.steps == 2 and len(recorder.losses) == 2, "expected two training steps"
    assert all(math.isfinite(x) for x in recorder.losses), f"training losses {recorder.losses}"
    assert math.isfinite(fold["test_loss"]), f"test loss {fold['test_loss']}"
    assert recorder.trainable, "nothing trains"
    assert results["trainable_params"] == recorder.trainable_numel, "reported != trained count"
    left_out = sorted(recorder.trainable - recorder.optimised)
    assert not left_out, f"trainable but not given to the optimiser: {left_out}"
    dead = sorted(n for n in recorder.trainable - recorder.nonzero if not zero_gradient_by_construction(n))
    assert not dead, f"{len(dead)} of {len(recorder.trainable)} trainable tensors never got a " \
                     f"non-zero gradient in {recorder.steps} steps: {dead}"


def test_every_registered_model_type_is_in_the_matrix():
    from petl_modules.backbones import FAMILIES

    covered = {MODEL_TYPES.get(b, b.split("-")[0]) for b in BACKBONES}
    aliases = {t for t, lobe in FAMILIES.items() if t not in covered and t in lobe.__name__.lower()}
    assert set(FAMILIES) - aliases == covered
