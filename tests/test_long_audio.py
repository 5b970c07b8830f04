"""Long recordings (petl_modules/model/long_audio.py): windows read a chunk at a time, the Kaldi
fbank lobes' windows sliced from one fbank per chunk; equal to the window-by-window path."""

import numpy as np
import pytest
import soundfile as sf
import torch

from petl_modules.backbones.features import ASTFbank, BEATsFbank, Waveform, WhisperLogMel
from petl_modules.methods import method_config
from petl_modules.model import long_audio
from petl_modules.model.long_audio import chunks, file_windows, frame_shift, window_features
from petl_modules.model.petl_model import PETLModel
from petl_modules.model.windows import EvalProtocol, clip_samples


def noise_file(path, seconds, rate=16000, seed=0):
    data = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype("float32")
    sf.write(str(path), data, rate, subtype="FLOAT")
    return path


def one_by_one(path, processor, protocol):
    """Every window read on its own (the path before long_audio)."""
    return [clip.read(processor) for clip in protocol.clips(path, processor)]


@pytest.mark.parametrize("processor", [ASTFbank(max_frames=64), BEATsFbank(clip_samples=12000)],
                         ids=["ast", "beats"])
def test_fbank_windows_sliced_from_one_fbank_are_exact(processor):
    clip = clip_samples(processor)
    wav = 0.1 * torch.randn(clip + 9 * 1600 + 77, generator=torch.Generator().manual_seed(0))
    starts = [0, 1600, 3200, 4800, 9 * 1600, wav.shape[0] - clip]  # the last one off the 10 ms grid
    calls = []
    unpadded = processor.unpadded
    processor.unpadded = lambda w: calls.append(w.shape[0]) or unpadded(w)
    try:
        found = window_features(wav, starts, processor)
    finally:
        del processor.unpadded
    assert calls == [9 * 1600 + clip, clip]  # one fbank for the 5 aligned windows, the last one's own
    for start, features in zip(starts, found):
        assert torch.equal(features, processor(wav[start: start + clip]))  # bit for bit


@pytest.mark.parametrize("processor", [Waveform(clip_samples=8000), WhisperLogMel(clip_samples=8000)],
                         ids=["waveform", "whisper"])
def test_per_window_lobes_keep_per_window_features(processor):
    assert frame_shift(processor) is None
    wav = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    for start, features in zip([0, 4000, 12000], window_features(wav, [0, 4000, 12000], processor)):
        assert torch.equal(features, processor(wav[start: start + 8000]))


def test_chunks_group_overlapping_windows_only():
    assert chunks([0, 5, 10, 15, 20, 23], 10, 3) == [[0, 5, 10], [15, 20, 23]]
    assert chunks([0, 30, 60], 10, 8) == [[0], [30], [60]]  # gaps: read apart


@pytest.mark.parametrize("rate", [16000, 44100])
def test_file_windows_equal_window_by_window_and_read_a_chunk_at_a_time(tmp_path, rate, monkeypatch):
    path = noise_file(tmp_path / "long.wav", 3.3, rate)
    processor = ASTFbank(max_frames=64)
    protocol = EvalProtocol("sliding", hop_seconds=0.2)
    expected = one_by_one(path, processor, protocol)
    reads = []
    load = long_audio.load_audio
    monkeypatch.setattr(long_audio, "load_audio", lambda *a, **k: reads.append(k["max_samples"]) or load(*a, **k))
    found = list(file_windows(path, processor, protocol, chunk_windows=4))
    assert len(found) == len(expected) == 15 and len(reads) == 4  # 14 on the grid + the last
    assert max(reads) == processor.samples_needed + 3 * 3200  # memory: 4 windows, whatever the file
    for features, window in zip(found, expected):
        if rate == 16000:
            assert torch.equal(features, window)
        else:  # a chunk resampled at once vs each window: float rounding of the resampling
            assert torch.allclose(features, window, atol=1e-4)


@pytest.fixture(scope="module")
def sliding_model(tiny_ast):
    torch.manual_seed(0)
    return PETLModel.create(tiny_ast, method_config("lora", {"reduction_rate": 16}), ["a", "b", "c"],
                            evaluation=EvalProtocol("sliding", 0.3), max_frames=64)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_classify_with_shared_features_equals_window_by_window(sliding_model, tmp_path, precision,
                                                               monkeypatch):
    files = [noise_file(tmp_path / f"{k}.wav", s, seed=k) for k, s in enumerate([0.3, 2.0, 4.1])]
    model = sliding_model.set_speed(precision)
    monkeypatch.setattr(model, "share_window_features", False)
    before, errors = model.classify_files(files, batch_size=3)  # batches across files
    assert not errors
    monkeypatch.setattr(model, "share_window_features", True)
    after, _ = model.classify_files(files, batch_size=3)
    for old, new in zip(before, after):
        assert torch.equal(old["probabilities"], new["probabilities"])  # the same inputs, bit for bit
    one = model.classify_file(files[2], batch_size=2)[0][0]
    assert torch.allclose(one, after[2]["probabilities"], atol=1e-6)  # other batches: fp ordering
    sliding_model.set_speed("fp32")


@pytest.mark.slow
def test_classify_int8_with_shared_features_equals_window_by_window(sliding_model, tmp_path, monkeypatch):
    from petl_modules.sharing.int8 import use_int8

    monkeypatch.setenv("PETL_AST_HOME", str(tmp_path / "home"))
    files = [noise_file(tmp_path / f"{k}.wav", s, seed=k) for k, s in enumerate([1.0, 4.1])]
    model = use_int8(sliding_model)
    try:
        monkeypatch.setattr(model, "share_window_features", False)
        before, _ = model.classify_files(files, batch_size=4)
        monkeypatch.setattr(model, "share_window_features", True)
        after, _ = model.classify_files(files, batch_size=4)
    finally:
        sliding_model.set_speed("fp32")
    for old, new in zip(before, after):
        assert torch.equal(old["probabilities"], new["probabilities"])
