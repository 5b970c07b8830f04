"""Input features, computed per utterance inside DataLoader workers (SpeechBrain dynamic items).

Nothing is extracted up front: the time to the first batch does not depend on the dataset size.
Each backbone family owns one input processor; the lobe builds it (``Backbone.input_processor``)
and the data pipeline calls it on every waveform. Processors are small picklable objects so that
DataLoader workers can carry them.
"""

import torch
import torchaudio

# AudioSet statistics used by the AST checkpoints (transformers ``ASTFeatureExtractor`` defaults).
AST_MEAN = -4.2677393
AST_STD = 4.5689974


class ASTFbank:
    """Kaldi-compatible log-mel filterbank, as the AST feature extractor computes it.

    128 bins, 25 ms Hanning window, 10 ms shift, htk_compat, no dither, no energy; padded with zeros
    or cut to ``max_frames``; then normalised as ``(x - mean) / (2 * std)``.

    Arguments
    ---------
    max_frames : int
        Number of 10 ms frames the backbone sees (400 for FSC, 1024 for AudioSet).
    num_mel_bins : int
        Mel bins (the checkpoint's ``num_mel_bins``).
    sample_rate : int
        Rate of the incoming waveforms.
    mean, std : float
        Normalisation statistics (AudioSet by default).

    Example
    -------
    >>> fbank = ASTFbank(max_frames=100)
    >>> fbank(torch.randn(16000)).shape
    torch.Size([100, 128])
    """

    def __init__(self, max_frames, num_mel_bins=128, sample_rate=16000, mean=AST_MEAN, std=AST_STD):
        self.max_frames = int(max_frames)
        self.num_mel_bins = int(num_mel_bins)
        self.sample_rate = int(sample_rate)
        self.mean = float(mean)
        self.std = float(std)

    def __call__(self, wav):
        """``[S]`` waveform -> ``[max_frames, num_mel_bins]`` normalised features."""
        fbank = torchaudio.compliance.kaldi.fbank(
            wav.reshape(1, -1).float(),
            sample_frequency=self.sample_rate,
            num_mel_bins=self.num_mel_bins,
            window_type="hanning",
            htk_compat=True,
            use_energy=False,
            dither=0.0,
            frame_shift=10.0,
        )
        fbank = fbank[: self.max_frames]
        missing = self.max_frames - fbank.shape[0]
        if missing > 0:
            fbank = torch.nn.functional.pad(fbank, (0, 0, 0, missing))
        return (fbank - self.mean) / (2 * self.std)

    def config(self):
        """The settings that rebuild this processor (for saved models and caches)."""
        return {
            "type": "ast_fbank",
            "max_frames": self.max_frames,
            "num_mel_bins": self.num_mel_bins,
            "sample_rate": self.sample_rate,
            "mean": self.mean,
            "std": self.std,
        }


class Waveform:
    """Raw 16 kHz waveform for wav2vec 2.0-family encoders, as their feature extractor prepares it.

    Cut to ``clip_samples`` (when given), then, if ``normalize``, zero mean and unit variance over
    the utterance's samples (``(x - mean) / sqrt(var + 1e-7)``, as transformers'
    ``Wav2Vec2FeatureExtractor``). Padding is left to the lobe: a batch is zero-padded, and padded
    to ``clip_samples`` when a clip length is set, where the valid lengths are still known.

    Arguments
    ---------
    clip_samples : int or None
        Samples kept from the start of each utterance (None: the whole utterance).
    normalize : bool
        The checkpoint's ``do_normalize``.
    sample_rate : int
        Rate of the incoming waveforms (the checkpoint's ``sampling_rate``).

    Example
    -------
    >>> wave = Waveform(clip_samples=8000)
    >>> out = wave(torch.randn(16000) * 3 + 1)
    >>> out.shape, round(float(out.mean()), 4), round(float(out.std(unbiased=False)), 3)
    (torch.Size([8000]), 0.0, 1.0)
    """

    def __init__(self, clip_samples=None, normalize=True, sample_rate=16000):
        self.clip_samples = None if clip_samples is None else int(clip_samples)
        if self.clip_samples is not None and self.clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive or None, got {clip_samples}.")
        self.normalize = bool(normalize)
        self.sample_rate = int(sample_rate)

    def __call__(self, wav):
        """``[S]`` waveform -> ``[min(S, clip_samples)]`` (normalised) waveform."""
        wav = wav.reshape(-1).float()
        if self.clip_samples is not None:
            wav = wav[: self.clip_samples]
        if self.normalize:
            wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)
        return wav

    def config(self):
        """The settings that rebuild this processor (for saved models and caches)."""
        return {
            "type": "waveform",
            "clip_samples": self.clip_samples,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
        }
