"""Long recordings (petl_modules/training/windows.py): random training crops seeded by (seed,
epoch, utterance), sliding evaluation windows over the whole file, pooled; the PETL model folder
records the protocol and classify follows it, reading the windows in batches."""

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules.backbones.features import Waveform
from petl_modules.classify import PETLClassifier
from petl_modules.model.audio import audio_length, load_audio, load_input
from petl_modules.model.folder import read_config
from petl_modules.synthetic import make_dataset
from petl_modules.training.cache import CacheConfigError, check_cacheable
from petl_modules.training.compose import ConfigError, compose_hparams, load_hparams
from petl_modules.training.pretrained import (
    CONFIG_FILE,
    FORMAT_VERSION,
    PETLModelError,
    load_petl_model,
    save_petl_model,
)
from petl_modules.training.windows import (
    WINDOW_RESULTS_FILE,
    EvalProtocol,
    TrainCrop,
    WindowScores,
    clip_samples,
    crop_start,
    pool_windows,
    window_starts,
)

from conftest import REPO, read_results
from test_distributed_resume_tracking import (  # the resume test's machinery
    assert_same_run,
    run_killed_and_resumed,
)

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


def noise_wav(path, seconds, rate=16000, seed=0):
    data = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype("float32")
    sf.write(str(path), data, rate, subtype="FLOAT")
    return path


def build(method, source, tmp_path, **overrides):
    options = dict(data_folder=str(tmp_path), output_folder=str(tmp_path / "out"),
                   backbone_source=str(source), max_frames=64, **overrides)
    return load_hparams(compose_hparams(REPO / "hparams" / f"{method}.yaml", FSC_YAML, options))


# ==================================================================== crops
def test_random_crop_depends_on_seed_epoch_and_utterance_only():
    utterances = [f"utt{i}" for i in range(50)]
    first = [crop_start(10, 1, u, 100, 10_000) for u in utterances]
    assert first == [crop_start(10, 1, u, 100, 10_000) for u in utterances]
    later = [crop_start(10, 2, u, 100, 10_000) for u in utterances]
    other_seed = [crop_start(11, 1, u, 100, 10_000) for u in utterances]
    assert sum(a != b for a, b in zip(first, later)) >= 48
    assert sum(a != b for a, b in zip(first, other_seed)) >= 48
    assert all(0 <= s <= 9_900 for s in first + later + other_seed)
    assert len(set(first)) >= 45  # spread over the file, not one place
    assert crop_start(10, 1, "utt0", 100, 100) == crop_start(10, 1, "utt0", 100, 40) == 0


def test_train_crop_reads_its_clip_from_the_file_at_the_epochs_start(tmp_path):
    path = noise_wav(tmp_path / "long.wav", 3.0)
    processor = Waveform(clip_samples=8000, normalize=False)
    crop = TrainCrop(seed=10, clip=clip_samples(processor))
    whole = load_audio(path)
    starts = []
    for epoch in (1, 2):
        crop.set_epoch(epoch)
        start = crop_start(10, epoch, "utt", 8000, 48000)
        assert torch.equal(load_input(path, processor, start=crop("utt")), whole[start: start + 8000])
        starts.append(start)
    assert starts[0] != starts[1]


def test_training_loader_reads_each_epochs_crop_also_when_resumed_mid_epoch(tmp_path):
    import speechbrain as sb
    from speechbrain.dataio.encoder import CategoricalEncoder

    from petl_modules.training.brain import ClassificationBrain
    from petl_modules.training.recipe import add_pipelines

    path = noise_wav(tmp_path / "long.wav", 1.0)
    whole = load_audio(path)
    dataset = DynamicItemDataset({"utt": {"wav": str(path), "label": "a"}})
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(["a"])
    processor = Waveform(clip_samples=4000, normalize=False)
    add_pipelines({"train": dataset}, processor, encoder, train_crop=TrainCrop(10, 4000))
    brain = ClassificationBrain(modules={"head": torch.nn.Linear(1, 1)}, hparams={"seed": 10},
                                run_opts={"device": "cpu", "noprogressbar": True})
    loader = brain.make_dataloader(dataset, sb.Stage.TRAIN, batch_size=1)
    for epoch, step in ((1, 0), (2, 0), (3, 5)):  # epoch 3: resumed after its batch 5
        brain.step = step
        brain.on_stage_start(sb.Stage.TRAIN, epoch)
        (batch,) = list(loader)
        start = crop_start(10, epoch, "utt", 4000, 16000)
        assert torch.equal(batch.inputs.data[0], whole[start: start + 4000])


@pytest.mark.parametrize("rate", [44100, 22050, 8000])
def test_clip_read_at_another_rate_is_the_slice_of_the_whole_resampled_file(rate, tmp_path):
    path = noise_wav(tmp_path / f"r{rate}.wav", 2.0, rate=rate)
    whole = load_audio(path)
    assert audio_length(path) == whole.shape[0]
    for start in (0, 1, 7_919, whole.shape[0] - 5_000):
        clip = load_audio(path, max_samples=5_000, start=start)
        assert clip.shape[0] == 5_000
        assert torch.allclose(clip, whole[start: start + 5_000], atol=1e-6)


# ==================================================================== windows and pooling
@pytest.mark.parametrize("total,expected", [
    (300, [0]),  # shorter than a window: one (padded) window
    (400, [0]),  # exactly one window
    (401, [0, 1]),  # one sample more: a last window ends with the file
    (1000, [0, 200, 400, 600]),  # an exact multiple of the hop: the grid ends with the file
    (1100, [0, 200, 400, 600, 700]),  # the last partial window is covered by one ending at the end
])
def test_sliding_windows_cover_the_whole_file(total, expected):
    starts = window_starts(total, 400, 200)
    assert starts == expected
    covered = set()
    for start in starts:
        covered.update(range(start, min(total, start + 400)))
    assert covered == set(range(total))
    assert all(start + 400 <= total for start in starts) or starts == [0]


def test_window_hop_defaults_to_half_a_clip_and_follows_the_option():
    processor = Waveform(clip_samples=16000)
    assert EvalProtocol("sliding").hop(processor) == 8000
    assert EvalProtocol("sliding", hop_seconds=0.25).hop(processor) == 4000
    with pytest.raises(ValueError, match="window_hop_seconds"):
        EvalProtocol("sliding", hop_seconds=0)


def test_pooling_is_the_mean_or_the_maximum_of_the_window_probabilities():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(pool_windows(probabilities, "mean"), torch.tensor([0.4, 0.15, 0.45]))
    assert torch.equal(pool_windows(probabilities, "max"), torch.tensor([0.7, 0.2, 0.8]))


def test_window_scores_pool_the_windows_of_each_file_across_batches(tmp_path):
    scores = WindowScores()
    scores.add(["a", "a", "b"], [0, 8, 0], [16, 24, 16],
               torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]), torch.tensor([0, 0, 1]))
    scores.add(["b", "c"], [8, 0], [20, 10], torch.tensor([[0.6, 0.4], [0.3, 0.7]]),
               torch.tensor([1, 0]))
    ids, pooled, labels = scores.pooled("mean")
    assert ids == ["a", "b", "c"] and labels.tolist() == [0, 1, 0]
    assert torch.allclose(pooled, torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]]))
    scores.write_csv(tmp_path / "w.csv", ["no", "yes"], sample_rate=8)
    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [(r["utterance"], r["window"], r["start_s"], r["end_s"]) for r in rows][:3] == [
        ("a", "0", "0.000", "2.000"), ("a", "1", "1.000", "3.000"), ("b", "0", "0.000", "2.000")]
    assert rows[3]["window"] == "1" and rows[3]["prediction"] == "no" and rows[3]["label"] == "yes"


# ==================================================================== options
@pytest.mark.parametrize("option,message", [
    ({"train_crop": "middle"}, "--train_crop='middle' is not one of first|random"),
    ({"eval_windows": True}, "--eval_windows=True is not one of first|sliding"),
    ({"window_pooling": "median"}, "is not one of mean|max"),
    ({"window_hop_seconds": 0}, "--window_hop_seconds=0 is out of range"),
    ({"window_results": True}, "add --eval_windows=sliding"),
])
def test_wrong_long_recording_options_are_refused_naming_them(option, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("+", r"\+")):
        compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML,
                        dict(data_folder=str(tmp_path), **option))


def test_recipes_keep_the_first_clip_protocol_unless_their_yaml_says_otherwise(tmp_path):
    import ruamel.yaml

    checked = 0
    for dataset_yaml in sorted(REPO.glob("recipes/*/*.yaml")):
        if any(k in dataset_yaml.read_text() for k in ("train_crop", "eval_windows")):
            continue  # a recipe for long recordings (its yaml switches them on)
        text = compose_hparams(REPO / "hparams" / "linear.yaml", dataset_yaml,
                               {"data_folder": str(tmp_path)}, family="ast")
        tree = ruamel.yaml.YAML().load(text)
        assert (tree["train_crop"], tree["eval_windows"]) == ("first", "first"), dataset_yaml
        checked += 1
    assert checked >= 5  # the papers' recipes


def test_linear_probing_cache_refuses_random_crops(tiny_ast, tmp_path):
    hparams = build("linear", tiny_ast, tmp_path, cache_backbone_outputs=True, train_crop="random")
    with pytest.raises(CacheConfigError, match="train_crop=random.*--train_crop=first"):
        check_cacheable(hparams)


def test_linear_probing_cache_holds_one_vector_per_window(tiny_ast, tmp_path):
    from speechbrain.dataio.encoder import CategoricalEncoder

    from petl_modules.training.cache import head_input, use_backbone_cache
    from petl_modules.training.recipe import add_pipelines
    from petl_modules.training.windows import window_dataset

    hparams = build("linear", tiny_ast, tmp_path, cache_backbone_outputs=True, eval_windows="sliding",
                    num_workers=0, manifest_folder=str(tmp_path / "manifests"))
    files = {"a": noise_wav(tmp_path / "a.wav", 1.0, seed=1), "b": noise_wav(tmp_path / "b.wav", 0.3, seed=2)}
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(["x", "y"])
    processor = hparams["backbone"].input_processor
    protocol = EvalProtocol.from_options(hparams)
    files_dataset = DynamicItemDataset({k: {"wav": str(p), "label": "x"} for k, p in files.items()})
    plain = {"test": window_dataset(files_dataset, processor, protocol)}
    cached = {"test": window_dataset(files_dataset, processor, protocol)}
    add_pipelines(plain, processor, encoder)
    add_pipelines(cached, processor, encoder)
    cache_file = use_backbone_cache(hparams, cached)
    assert sorted(torch.load(cache_file, weights_only=True)["wavs"]) == sorted(
        [str(files["a"]), f"{files['a']}@5240", f"{files['a']}@5520", str(files["b"])])
    model, head = hparams["petl_model"].eval(), hparams["classifier"].eval()
    with torch.no_grad():
        for window, vector in zip(plain["test"], cached["test"]):
            assert (window["utterance"], window["window_start"]) == (vector["utterance"], vector["window_start"])
            expected = head(*model(window["inputs"][None]))
            torch.testing.assert_close(head(head_input(model, vector["cached"][None])), expected,
                                       rtol=1e-5, atol=1e-5)


# ==================================================================== the model folder and classify
@pytest.fixture(scope="module")
def sliding_folder(tmp_path_factory, tiny_ast):
    """A (pretend-trained) LoRA folder of a run evaluated with sliding windows, hop 0.3 s."""
    tmp = tmp_path_factory.mktemp("sliding")
    hparams = build("lora", tiny_ast, tmp, reduction_rate=16, eval_windows="sliding",
                    window_hop_seconds=0.3)
    torch.manual_seed(3)
    with torch.no_grad():
        for module in hparams["modules"].values():
            for param in module.parameters():
                if param.requires_grad:
                    param.add_(0.3 * torch.randn_like(param))
    save_petl_model(tmp / "petl_model", hparams, [f"c{i}" for i in range(31)])
    return tmp / "petl_model"


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """Files shorter than a clip, of a few clips, at 16 kHz and 44.1 kHz."""
    folder = tmp_path_factory.mktemp("audio")
    return [noise_wav(folder / "short.wav", 0.3, seed=1), noise_wav(folder / "mid.wav", 1.0, seed=2),
            noise_wav(folder / "long.wav", 2.05, seed=3),
            noise_wav(folder / "cd.wav", 1.3, rate=44100, seed=4)]


def window_by_window(classifier, path, pooling="mean"):
    """The pooled probabilities of ``path``, every window classified alone."""
    processor = classifier.input_processor
    starts = window_starts(audio_length(path), clip_samples(processor),
                           classifier.protocol.hop(processor))
    probabilities = [classifier.classify_inputs(*batch_pad_right([load_input(path, processor, s)]))[0]
                     for s in starts]
    return pool_windows(torch.cat(probabilities), pooling), len(starts)


def test_model_folder_records_the_protocol_and_classify_pools_the_windows(sliding_folder, audio_files):
    config = json.loads((sliding_folder / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION == 4
    assert config["evaluation"] == {"eval_windows": "sliding", "window_hop_seconds": 0.3,
                                    "window_pooling": "mean"}
    classifier = PETLClassifier.from_folder(sliding_folder)
    assert classifier.protocol.config() == config["evaluation"]
    expected = [window_by_window(classifier, path) for path in audio_files]
    assert [count for _, count in expected] == [1, 3, 6, 4]
    found, errors = classifier.classify_files(audio_files, batch_size=3)  # batches across files
    assert not errors and [r["file"] for r in found] == [str(p) for p in audio_files]
    for row, (probabilities, _) in zip(found, expected):
        assert torch.allclose(row["probabilities"], probabilities, atol=1e-6)
    for path, (probabilities, _) in zip(audio_files, expected):
        assert torch.allclose(classifier.classify_file(path, batch_size=2)[0][0], probabilities, atol=1e-6)
    waves = [load_audio(path) for path in audio_files[:3]]
    out_prob = classifier.classify_waveforms(waves, batch_size=2)[0]
    assert torch.allclose(out_prob, torch.stack([p for p, _ in expected[:3]]), atol=1e-6)


def test_classify_holds_at_most_a_batch_of_windows(sliding_folder, audio_files, monkeypatch):
    classifier = PETLClassifier.from_folder(sliding_folder)
    alive, peak = [0], [0]
    windows, classify = classifier.file_windows, classifier.classify_inputs

    def counted_windows(path, chunk_windows=8):
        for features in windows(path, chunk_windows):
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            yield features

    def counted_classify(inputs, lengths):
        alive[0] -= inputs.shape[0]
        return classify(inputs, lengths)

    monkeypatch.setattr(classifier, "file_windows", counted_windows)
    monkeypatch.setattr(classifier, "classify_inputs", counted_classify)
    found, _ = classifier.classify_files([audio_files[2]] * 3, batch_size=4)  # 18 windows
    assert len(found) == 3 and peak[0] == 4 and alive[0] == 0


def test_max_pooling_and_an_invalid_protocol_in_a_folder(sliding_folder, audio_files, tmp_path):
    folder = tmp_path / "max"
    shutil.copytree(sliding_folder, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["evaluation"]["window_pooling"] = "max"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    classifier = PETLClassifier.from_folder(folder)
    expected, _ = window_by_window(classifier, audio_files[2], pooling="max")
    assert torch.allclose(classifier.classify_files([audio_files[2]])[0][0]["probabilities"], expected,
                          atol=1e-6)
    config["evaluation"]["eval_windows"] = "every"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PETLModelError, match="evaluation: eval_windows='every'"):
        load_petl_model(folder, check=False)


def test_folder_of_format_version_2_classifies_the_first_clip_as_before(sliding_folder, audio_files,
                                                                       tiny_ast, tmp_path):
    folder = tmp_path / "v2"
    shutil.copytree(sliding_folder, folder)
    view = read_config(folder)  # the folder's model as format_version 2 wrote it: no evaluation
    v2 = {"format_version": 2, "backbone_source": str(tiny_ast), "parameters": [], "buffers": [],
          **{key: view[key] for key in ("family", "model_type", "fingerprint", "method", "options",
                                        "input", "pooling", "class_names")}}
    (folder / CONFIG_FILE).write_text(json.dumps(v2))
    classifier = PETLClassifier.from_folder(folder)
    assert not classifier.protocol.sliding
    found, _ = classifier.classify_files(audio_files, batch_size=2)
    modules = classifier.mods
    processor = classifier.input_processor
    inputs, lengths = batch_pad_right([load_input(path, processor) for path in audio_files])
    with torch.no_grad():
        first_clip = torch.softmax(modules["classifier"](*modules["petl_model"](inputs, lengths)), -1)
    assert torch.allclose(torch.stack([r["probabilities"] for r in found]), first_clip, atol=1e-6)


# ==================================================================== a recipe end to end
@pytest.fixture(scope="module")
def long_fsc(tmp_path_factory):
    """The synthetic FSC with 2 s utterances: 6 windows of the 0.64 s clip (64 frames) each."""
    return make_dataset("FSC", tmp_path_factory.mktemp("long_fsc"), per_class=1, seconds=2.0)


LONG_RUN = ["--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_steps=3",
            "--train_crop=random", "--eval_windows=sliding", "--window_results=True"]


@pytest.mark.slow
def test_random_crops_and_sliding_windows_resume_bit_identically_and_classify_reproduces_the_test(
        long_fsc, tiny_ast_with_dropout, tmp_path):
    # Killed in the middle of epoch 2 and resumed: the same crops, the same log and weights.
    _, out, _ = run_killed_and_resumed("FSC", "full_ft", long_fsc, tiny_ast_with_dropout, tmp_path,
                                       *LONG_RUN)
    assert_same_run(out, tmp_path / "uninterrupted")

    # Per-window results: every window of every test file, pooled into the test accuracy.
    with open(out / "manifests" / "test.csv") as stream:
        split = [(r["wav"].replace("$data_root", str(long_fsc)), r["label"]) for r in csv.DictReader(stream)]
    with open(out / WINDOW_RESULTS_FILE) as stream:
        windows = list(csv.DictReader(stream))
    assert len(windows) == 6 * len(split)
    accuracy = read_results(out)["test_accuracy"]
    by_file = {}
    for row in windows:
        by_file.setdefault(row["utterance"], []).append(row)
    names = list(windows[0])[7:]
    pooled_right = sum(
        names[int(np.argmax(np.mean([[float(r[n]) for n in names] for r in rows], axis=0)))] == rows[0]["label"]
        for rows in by_file.values())
    assert pooled_right / len(split) == pytest.approx(accuracy)

    # classify follows the recorded protocol and reproduces the test accuracy.
    classifier = PETLClassifier.from_folder(out / "petl_model")
    assert classifier.protocol.sliding
    found, errors = classifier.classify_files([path for path, _ in split], batch_size=5)
    assert not errors
    assert sum(r["label"] == label for r, (_, label) in zip(found, split)) / len(split) \
        == pytest.approx(accuracy)
