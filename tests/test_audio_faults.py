"""Audio input faults: non-finite samples, clips shorter than the backbone's minimum, long files
read only as far as the model looks, and ``classify`` keeping every good file's result.

Everything runs in-process on generated files and tiny random checkpoints (``tiny_ast``,
``tiny_wav2vec2``); the classify tests save a linear-probe PETL model folder without training.
"""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from petl_modules import classify as classify_cli
from petl_modules.backbones import Backbone
from petl_modules.backbones.features import ASTFbank, Waveform
from petl_modules.classify import PETLClassifier
from petl_modules.model import audio as audio_module
from petl_modules.model.audio import AudioError, load_audio, load_input
from petl_modules.training.compose import compose_hparams, load_hparams
from petl_modules.training.prepare import DataError, write_manifests
from petl_modules.training.pretrained import save_petl_model

from conftest import REPO

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"
CLASSES = [f"c{i}" for i in range(31)]


# ==================================================================== helpers
def noise(seconds, rate=16000, seed=0, channels=1):
    """``[S]`` (or ``[S, channels]``) float32 noise at a level real recordings have."""
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate),) if channels == 1 else (int(seconds * rate), channels)
    return (0.1 * rng.standard_normal(shape)).astype("float32")


def write(path, data, rate=16000, subtype="FLOAT"):
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def write_long(path, seconds, rate=16000, head_seconds=10):
    """A 16-bit wav of ``seconds``: ``head_seconds`` of noise, then silence (block by block)."""
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as stream:
        stream.write((noise(head_seconds, rate) * 32767).astype("int16"))
        left = int(seconds * rate) - int(head_seconds * rate)
        block = np.zeros(600 * rate, dtype="int16")
        while left > 0:
            stream.write(block[: min(left, block.size)])
            left -= block.size
    return path


class CountingSoundFile(sf.SoundFile):
    """``soundfile.SoundFile`` that records the frames each ``read`` returns."""

    frames_read = []

    def read(self, *args, **kwargs):
        data = super().read(*args, **kwargs)
        CountingSoundFile.frames_read.append(len(data))
        return data


@pytest.fixture
def count_reads(monkeypatch):
    CountingSoundFile.frames_read = []
    monkeypatch.setattr(audio_module.sf, "SoundFile", CountingSoundFile)
    return CountingSoundFile.frames_read


def linear_model_folder(tiny_ast, folder, max_frames=64):
    """A PETL model folder (linear probe, 31 classes) on ``tiny_ast``, saved without training."""
    options = dict(data_folder=str(folder / "data"), output_folder=str(folder / "out"),
                   backbone_source=str(tiny_ast), max_frames=max_frames)
    text = compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML, options)
    hparams = load_hparams(text)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in hparams["classifier"].parameters():
            param.normal_(std=0.5)
    save_petl_model(folder / "petl_model", hparams, CLASSES)
    return folder / "petl_model"


@pytest.fixture(scope="module")
def model_dir(tiny_ast, tmp_path_factory):
    return linear_model_folder(tiny_ast, tmp_path_factory.mktemp("audio_faults_model"))


@pytest.fixture(scope="module")
def classifier(model_dir):
    return PETLClassifier.from_folder(model_dir)


def reject_nan(text):
    raise ValueError(f"non-standard JSON constant {text}")


# ==================================================================== non-finite samples
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_file_is_refused_naming_the_file_and_the_fix(value, tmp_path):
    data = noise(1.0)
    data[5000] = value
    path = write(tmp_path / "bad.wav", data)
    with pytest.raises(AudioError) as error:
        load_audio(path)
    message = str(error.value)
    assert str(path) in message and "NaN" in message and "sample 5000" in message
    assert "Replace the file" in message and "--skip_bad_files=True" in message
    with pytest.raises(AudioError, match="non-finite"):  # the data pipeline's path too
        load_input(path, ASTFbank(max_frames=64))


def test_non_finite_stereo_44k_file_is_refused_before_resampling(tmp_path):
    data = noise(0.5, rate=44100, channels=2)
    data[100, 1] = np.nan
    path = write(tmp_path / "bad.wav", data, rate=44100)
    with pytest.raises(AudioError, match="non-finite samples .*first at sample 100"):
        load_audio(path)


def test_preparation_lists_non_finite_float_files_when_skipping(tmp_path):
    data_folder = tmp_path / "release"
    data_folder.mkdir()
    write(data_folder / "good.wav", noise(0.5))
    write(data_folder / "pcm.wav", noise(0.5), subtype="PCM_16")
    bad = noise(0.5)
    bad[10] = np.inf
    write(data_folder / "inf.wav", bad)
    rows = {"train": [{"ID": name, "wav": f"{name}.wav", "label": "a"} for name in ("good", "pcm", "inf")]}
    with pytest.raises(DataError, match="inf.wav: non-finite samples"):
        write_manifests(tmp_path / "strict", rows, data_folder, {})
    counts = write_manifests(tmp_path / "skip", rows, data_folder, {}, skip_bad_files=True)
    assert counts == {"train": 2}
    skipped = (tmp_path / "skip" / "skipped_files.txt").read_text()
    assert "inf.wav: non-finite samples (NaN or Inf)" in skipped and "good.wav" not in skipped


# ==================================================================== short and empty clips
def test_processors_say_their_minimum_and_how_much_audio_they_use():
    fbank = ASTFbank(max_frames=100)
    assert fbank.min_samples == 400  # one 25 ms window at 16 kHz
    assert fbank.samples_needed == 400 + 99 * 160  # 100 frames, 10 ms shift
    assert Waveform(clip_samples=8000).min_samples == 400  # the wav2vec2 CNN's receptive field
    assert Waveform(clip_samples=8000).samples_needed == 8000
    assert Waveform(clip_samples=None).samples_needed is None


def test_10ms_clip_is_padded_with_one_warning_naming_the_file(tmp_path, caplog):
    path = write(tmp_path / "click.wav", noise(0.01))  # 160 samples
    fbank = ASTFbank(max_frames=64)
    with caplog.at_level(logging.WARNING, logger="petl_modules.model.audio"):
        features = load_input(path, fbank)
        again = load_input(path, fbank)  # the next epoch: no second warning
    assert features.shape == (64, 128) and torch.isfinite(features).all()
    assert torch.equal(features, again)
    warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1 and "padded with zeros" in warnings[0] and "400 samples" in warnings[0]
    # The padded clip = the clip followed by silence.
    padded = torch.cat([load_audio(path), torch.zeros(240)])
    assert torch.equal(features, fbank(padded))


def test_short_clips_reach_both_backbones_without_a_crash(tiny_ast, tiny_wav2vec2, tmp_path):
    lobes = [Backbone(source, max_frames=64, clip_seconds=clip).eval()
             for source, clip in ((tiny_ast, 0.64), (tiny_wav2vec2, None))]
    for seconds in (0.001, 0.01, 0.02):
        path = write(tmp_path / f"short_{seconds}.wav", noise(seconds))
        for lobe in lobes:
            inputs = load_input(path, lobe.input_processor)
            with torch.no_grad():
                hidden, _ = lobe(inputs.unsqueeze(0), torch.ones(1))
            assert hidden.shape[1] >= 1 and torch.isfinite(hidden).all()


def test_zero_length_file_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path / "empty.wav", np.zeros(0, dtype="float32"))
    with pytest.raises(AudioError) as error:
        load_input(path, Waveform(clip_samples=None))
    assert str(path) in str(error.value) and "empty (zero samples)" in str(error.value)
    assert "--skip_bad_files=True" in str(error.value)


# ==================================================================== reading only what is used
def test_one_hour_file_is_read_as_far_as_a_10s_file(tmp_path, count_reads):
    long_file = write_long(tmp_path / "hour.wav", 3600)
    short_file = write_long(tmp_path / "ten.wav", 10)
    assert sf.info(str(long_file)).frames == 3600 * 16000
    for processor in (ASTFbank(max_frames=800), Waveform(clip_samples=8 * 16000)):
        count_reads.clear()
        from_long = load_input(long_file, processor)
        assert count_reads == [processor.samples_needed]  # one read, of the samples used only
        from_short = load_input(short_file, processor)
        assert count_reads == [processor.samples_needed] * 2
        assert torch.equal(from_long, from_short)


def test_partial_read_at_44k_reads_only_a_small_margin(tmp_path, count_reads):
    path = write_long(tmp_path / "hour_44k.wav", 600, rate=44100, head_seconds=3)
    fbank = ASTFbank(max_frames=400)  # 4.0 s of 16 kHz audio
    load_input(path, fbank)
    seconds_read = count_reads[0] / 44100
    assert 4.0 < seconds_read < 4.0 + 0.03  # 25 ms of the last window, and the kernel's reach


@pytest.mark.parametrize("rate", [44100, 8000])
@pytest.mark.parametrize("kind", ["ast", "waveform"])
def test_partial_read_gives_the_samples_of_the_whole_file(rate, kind, tmp_path):
    # Stereo at 44.1 kHz (mixed down), mono at 8 kHz; 7 s, the model uses the first 1-2 s.
    path = write(tmp_path / f"{rate}.wav", noise(7.0, rate=rate, seed=rate, channels=2 if rate == 44100 else 1),
                 rate=rate)
    processor = ASTFbank(max_frames=123) if kind == "ast" else Waveform(clip_samples=16000 + 4321)
    whole = load_audio(path)
    part = load_audio(path, max_samples=processor.samples_needed)
    assert part.shape[0] == processor.samples_needed
    # torchaudio's convolution rounds differently with the input's length: ~1e-7
    assert torch.allclose(part, whole[: processor.samples_needed], atol=1e-6, rtol=0)
    # The log of the mel energies magnifies those ~1e-7 where a band's energy is small: 1.2e-4
    # seen on an AMD EPYC at 8 kHz (on the normalised fbank, whose values span about -1.3..1.5).
    assert torch.allclose(load_input(path, processor), processor(whole), atol=1e-3, rtol=0)
    for n in (1, 401, 16000, 16001, 50_000):  # any cut, including stride boundaries
        assert torch.allclose(load_audio(path, max_samples=n), whole[:n], atol=1e-6, rtol=0)
    assert torch.equal(load_input(path, processor), load_input(path, processor))


def test_partial_read_at_the_models_rate_is_exact(tmp_path):
    path = write(tmp_path / "16k.wav", noise(3.0, seed=3), rate=16000)
    whole = load_audio(path)
    assert torch.equal(load_audio(path, max_samples=16001), whole[:16001])


# ==================================================================== classify
def fault_files(folder):
    """``(good files, {bad file: what its error must say})`` covering every kind of fault."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [write(folder / "good0.wav", noise(0.8, seed=1)),
            write(folder / "good1_44k.wav", noise(0.8, rate=44100, seed=2), rate=44100),
            write(folder / "click_10ms.wav", noise(0.01, seed=3)),  # padded, classified
            write(folder / "good2.wav", noise(0.8, seed=4), subtype="PCM_16")]
    nan = noise(0.8)
    nan[3] = np.nan
    inf = noise(0.8)
    inf[7] = np.inf
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    bad = {write(folder / "nan.wav", nan): "non-finite",
           write(folder / "inf.wav", inf): "non-finite",
           write(folder / "empty.wav", np.zeros(0, dtype="float32")): "empty",
           folder / "broken.wav": "Cannot read audio file",
           folder / "missing.wav": "not found"}
    return good, bad


def test_classify_keeps_the_good_files_and_lists_the_bad_ones(model_dir, classifier, tmp_path, capsys):
    good, bad = fault_files(tmp_path / "audio")
    files = [good[0], *list(bad)[:2], good[1], good[2], *list(bad)[2:], good[3]]
    code = classify_cli.main([str(model_dir), *map(str, files), "--json", "--top_k=2",
                              "--batch_size=3"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = json.loads(out, parse_constant=reject_nan)  # valid JSON: no NaN / Infinity
    assert [r["file"] for r in rows] == [str(f) for f in good]
    for row, path in zip(rows, good):
        prob, _, _, label = classifier.classify_file(path)
        assert row["label"] == label[0] and row["score"] == pytest.approx(float(prob.max()), abs=1e-6)
        assert len(row["top_k"]) == 2
    for path, says in bad.items():
        line = next(line for line in err.splitlines() if line.startswith(f"Error: could not classify {path}:"))
        assert says in line
    assert f"{len(bad)} of {len(files)} file(s) could not be classified" in err


def test_classify_retries_a_failed_batch_file_by_file(classifier, tmp_path, monkeypatch):
    good, _ = fault_files(tmp_path / "audio")
    silent = write(tmp_path / "silent.wav", np.zeros(16000, dtype="float32"))
    expected = {r["file"]: r["label"] for r in classifier.classify_files(good)[0]}
    real = classifier.classify_inputs

    def failing(inputs, lengths):  # a processing fault that only the silent file triggers
        if any(bool(x.max() == x.min()) for x in inputs):
            raise RuntimeError("simulated failure in the forward pass")
        return real(inputs, lengths)

    monkeypatch.setattr(classifier, "classify_inputs", failing)
    files = [good[0], silent, *good[1:]]
    found, errors = classifier.classify_files(files, batch_size=8)
    assert {r["file"]: r["label"] for r in found} == expected
    assert errors == [(str(silent), "RuntimeError: simulated failure in the forward pass")]


def test_classify_reports_non_finite_scores_as_a_file_error(model_dir, tmp_path, monkeypatch, capsys):
    good, _ = fault_files(tmp_path / "audio")
    real = PETLClassifier.classify_inputs

    def poisoned(self, inputs, lengths):  # a model that gives NaN for the second file
        out_prob, score, index, labels = real(self, inputs, lengths)
        if inputs.shape[0] > 1:
            out_prob[1] = float("nan")
        return out_prob, score, index, labels

    monkeypatch.setattr(PETLClassifier, "classify_inputs", poisoned)
    code = classify_cli.main([str(model_dir), *map(str, good[:3]), "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = json.loads(out, parse_constant=reject_nan)
    assert [r["file"] for r in rows] == [str(good[0]), str(good[2])]
    assert f"could not classify {good[1]}: the model gave non-finite scores" in err
