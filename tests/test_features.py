"""AST input features equal torchaudio's Kaldi fbank and the transformers AST feature extractor."""

import numpy as np
import pytest
import torch
import torchaudio
import transformers

from petl_modules.backbones.features import AST_MEAN, AST_STD, ASTFbank, WhisperLogMel
from petl_modules.synthetic import write_wav
from petl_modules.model.audio import load_audio


@pytest.fixture
def wave():
    torch.manual_seed(0)
    return 0.1 * torch.randn(16000 * 2)


def test_fbank_equals_torchaudio_kaldi_fbank_normalised(wave):
    ours = ASTFbank(max_frames=150)(wave)
    kaldi = torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0), sample_frequency=16000, num_mel_bins=128, window_type="hanning",
        htk_compat=True, use_energy=False, dither=0.0, frame_shift=10,
    )[:150]
    assert ours.shape == (150, 128)
    torch.testing.assert_close(ours, (kaldi - AST_MEAN) / (2 * AST_STD))


@pytest.mark.parametrize("max_frames", [64, 400])  # cut and zero-padded
def test_fbank_equals_transformers_ast_feature_extractor(wave, max_frames):
    extractor = transformers.ASTFeatureExtractor(max_length=max_frames)
    expected = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"][0]
    ours = ASTFbank(max_frames=max_frames)(wave)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_fbank_pads_short_audio_with_the_normalised_zero(wave):
    feats = ASTFbank(max_frames=300)(wave[:8000])  # 0.5 s -> 48 frames, the rest padding
    assert feats.shape == (300, 128)
    assert torch.allclose(feats[100:], torch.full_like(feats[100:], (0 - AST_MEAN) / (2 * AST_STD)))



@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.0])  # shorter than, as long as, longer than 1 s
def test_fbank_padding_of_unpadded_features_is_the_processors(wave, seconds):
    """What an ONNX client feeds (the normalised fbank of the whole clip), cut or padded with
    ``pad_frames``, is exactly the processor's output: a padded frame is the normalised zero."""
    fbank = ASTFbank(max_frames=98)  # 1 s: 400 + 97 * 160 samples
    clip = wave[: round(16000 * seconds)]
    unpadded = fbank.unpadded(clip)
    assert unpadded.shape == (1 + (clip.shape[0] - 400) // 160, 128)
    assert fbank.padding_value == pytest.approx((0 - AST_MEAN) / (2 * AST_STD)) and fbank.padding_value > 0.46
    assert torch.equal(fbank.pad_frames(unpadded[None], 98)[0], fbank(clip))


def test_whisper_padding_of_fewer_frames_is_the_extractors_silence_but_at_the_boundary():
    """Whisper's processor pads the waveform; features of a shorter clip padded to the clip with
    ``pad_frames`` equal them except in the 2 padded frames whose STFT window still holds the
    clip's last samples."""
    processor = WhisperLogMel(32000)  # 2 s, 200 frames
    generator = torch.Generator().manual_seed(0)
    time = torch.arange(8000) / 16000
    wav = 0.3 * torch.sin(2 * torch.pi * 440 * time) * torch.exp(-3 * time)
    wav = wav + 0.01 * torch.randn(8000, generator=generator)  # never reaches the clamp floor
    short = processor.extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    short = short[0].T[:50]  # the extractor pads to 30 s: the first 50 frames are the clip's
    padded = processor.pad_frames(short[None], processor.frames)[0]
    differing = (padded - processor(wav)).abs().amax(dim=1) > 1e-5
    assert differing.nonzero().flatten().tolist() == [50, 51]


@pytest.mark.parametrize("rate,channels,subtype", [
    (16000, 1, "PCM_16"), (44100, 2, "PCM_24"), (8000, 1, "PCM_U8"), (48000, 2, "FLOAT"),
])
def test_load_audio_gives_mono_16k_for_any_format(tmp_path, rate, channels, subtype):
    t = np.arange(rate) / rate
    path = tmp_path / "x.wav"
    write_wav(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype, channels)
    wav = load_audio(path)
    assert wav.dim() == 1 and wav.dtype == torch.float32
    assert abs(wav.numel() - 16000) <= 1
    assert 0.4 < wav.abs().max() < 0.6
