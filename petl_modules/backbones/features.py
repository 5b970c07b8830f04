"""Input features, computed per utterance inside DataLoader workers (SpeechBrain dynamic items).

Nothing is extracted up front: the time to the first batch does not depend on the dataset size.
Each backbone family owns one input processor; the lobe builds it (``Backbone.input_processor``)
and the data pipeline calls it on every waveform. Processors are small picklable objects so that
DataLoader workers can carry them.

Each processor says how much audio it uses: ``samples_needed`` (samples from the start of an
utterance; None: all) and ``min_samples`` (the backbone's shortest input; shorter clips are padded
with zeros). ``load_input(path, processor)`` reads only ``samples_needed`` samples of a file
(``petl_modules.model.audio.load_audio``'s partial read), pads short clips with a warning naming the
file, and returns the processor's output: the data pipeline and ``classify`` call it per file.
"""

import logging

import numpy
import torch
import torchaudio
import transformers

logger = logging.getLogger(__name__)

# The input statistics the AST checkpoints were trained with (transformers ``ASTFeatureExtractor`` defaults).
AST_MEAN = -4.2677393
AST_STD = 4.5689974
# BEATs' own normalisation of its fbank (``speechbrain.lobes.models.beats.BEATs.preprocess``).
BEATS_MEAN = 15.41663
BEATS_STD = 6.55582
# The wav2vec 2.0 / HuBERT / WavLM CNN (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) needs 400
# samples (25 ms at 16 kHz) for its first output frame.
WAVEFORM_MIN_SAMPLES = 400

def pad_to_minimum(wav, min_samples):
    """``[S]`` waveform right-padded with zeros to at least ``min_samples`` samples."""
    missing = int(min_samples) - wav.shape[-1]
    return torch.nn.functional.pad(wav, (0, missing)) if missing > 0 else wav


class ASTFbank:
    """Kaldi-compatible log-mel filterbank, as the AST feature extractor computes it.

    128 bins, 25 ms Hanning window, 10 ms shift, htk_compat, no dither, no energy; padded with zeros
    or cut to ``max_frames``; then normalised as ``(x - mean) / (2 * std)`` (so padded frames are
    ``padding_value``, not 0).

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

    @property
    def min_samples(self):
        """Samples of one 25 ms window: shorter input is padded with zeros to this length."""
        return round(0.025 * self.sample_rate)

    @property
    def samples_needed(self):
        """Samples from the start of an utterance that the ``max_frames`` frames use (25 ms
        window, 10 ms shift); later samples never change the features."""
        return self.min_samples + (self.max_frames - 1) * round(0.010 * self.sample_rate)

    def __call__(self, wav):
        """``[S]`` waveform -> ``[max_frames, num_mel_bins]`` normalised features.

        Only the first ``samples_needed`` samples are used; input shorter than one window
        (``min_samples``) is padded with zeros.
        """
        features = self.unpadded(wav.reshape(-1)[: self.samples_needed])
        return self.pad_frames(features[None], self.max_frames)[0]

    def unpadded(self, wav):
        """``[S]`` waveform -> ``[frames, num_mel_bins]`` normalised features of all of it, one
        frame per 10 ms (what an ONNX client computes and feeds; any number of frames)."""
        wav = pad_to_minimum(wav.reshape(-1), self.min_samples)
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
        return self.normalise(fbank)

    def normalise(self, fbank):
        """Log-mel fbank -> the backbone's input scale ``(x - mean) / (2 * std)``."""
        return (fbank - self.mean) / (2 * self.std)

    @property
    def padding_value(self):
        """A padded frame after normalisation: the fbank is padded with zeros BEFORE it is
        normalised (as transformers' ``ASTFeatureExtractor``), so a padded frame is not 0 but
        ``(0 - mean) / (2 * std)`` (0.467 with the AudioSet statistics)."""
        zero = numpy.float32(0.0)  # float32 arithmetic, as normalise on a tensor (also when traced)
        return float((zero - numpy.float32(self.mean)) / numpy.float32(2 * self.std))

    def pad_frames(self, features, frames):
        """``[B, T, mel]`` normalised features cut or padded (``padding_value``) to ``[B, frames,
        mel]``: the processor's own padding, also traced into the ONNX graph."""
        return torch.nn.functional.pad(features, (0, 0, 0, frames - features.shape[1]),
                                       value=self.padding_value)  # a negative pad cuts

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
    min_samples : int
        The encoder's shortest input (its CNN's receptive field): shorter input is padded with
        zeros to this length before normalisation.

    Example
    -------
    >>> wave = Waveform(clip_samples=8000)
    >>> out = wave(torch.randn(16000) * 3 + 1)
    >>> out.shape, abs(round(float(out.mean()), 4)), round(float(out.std(unbiased=False)), 3)
    (torch.Size([8000]), 0.0, 1.0)
    """

    def __init__(self, clip_samples=None, normalize=True, sample_rate=16000,
                 min_samples=WAVEFORM_MIN_SAMPLES):
        self.clip_samples = None if clip_samples is None else int(clip_samples)
        if self.clip_samples is not None and self.clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive or None, got {clip_samples}.")
        self.normalize = bool(normalize)
        self.sample_rate = int(sample_rate)
        self.min_samples = int(min_samples)

    @property
    def samples_needed(self):
        """Samples from the start of an utterance that are used (None: all of them)."""
        return self.clip_samples

    def __call__(self, wav):
        """``[S]`` waveform -> ``[max(min(S, clip_samples), min_samples)]`` (normalised) waveform."""
        wav = wav.reshape(-1).float()
        if self.clip_samples is not None:
            wav = wav[: self.clip_samples]
        wav = pad_to_minimum(wav, self.min_samples)
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


class WhisperLogMel:
    """Whisper's log-mel spectrogram, computed by transformers' ``WhisperFeatureExtractor`` per
    utterance on a clip of ``clip_samples`` (zero-padded or cut to it), not on 30 s.

    The settings are the checkpoint's ``preprocessor_config.json`` (``feature_size`` mel bins,
    ``hop_length``, ``n_fft``, ``sampling_rate``, ``padding_value``, ``dither``); the extractor
    pads the waveform with ``padding_value`` to the clip (``padding='max_length'``) instead of to
    its ``chunk_length``, then computes the spectrogram, clamps it at its maximum - 8 and scales it
    as ``(x + 4) / 4``, exactly as for a 30 s input. Every utterance thus has ``frames =
    clip_samples // hop_length`` frames (10 ms each at 16 kHz): the same silence padding Whisper
    was trained with, shorter.

    Arguments
    ---------
    clip_samples : int
        Samples of the clip (the lobe's ``clip_seconds``; 30 s for the full input).
    feature_size, sampling_rate, hop_length, n_fft, padding_value, dither
        ``WhisperFeatureExtractor`` settings (its defaults: the ``openai/whisper-*`` ones up to
        ``-large-v2``; ``-large-v3`` has 128 mel bins).

    Example
    -------
    >>> logmel = WhisperLogMel(clip_samples=16000)
    >>> logmel(torch.randn(8000)).shape  # 1 s: 100 frames of 80 mel bins
    torch.Size([100, 80])
    """

    def __init__(self, clip_samples, feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400,
                 padding_value=0.0, dither=0.0):
        self.clip_samples = int(clip_samples)
        if self.clip_samples < int(hop_length):
            raise ValueError(f"clip_samples={clip_samples} is shorter than one frame ({hop_length} samples).")
        self.settings = dict(feature_size=int(feature_size), sampling_rate=int(sampling_rate),
                             hop_length=int(hop_length), n_fft=int(n_fft),
                             padding_value=float(padding_value), dither=float(dither))
        self.extractor = transformers.WhisperFeatureExtractor(**self.settings)

    @classmethod
    def from_extractor(cls, extractor, clip_samples):
        """The processor of a checkpoint's ``WhisperFeatureExtractor`` (its settings, our clip)."""
        return cls(clip_samples, extractor.feature_size, extractor.sampling_rate, extractor.hop_length,
                   extractor.n_fft, extractor.padding_value, getattr(extractor, "dither", 0.0))

    @property
    def sample_rate(self):
        return self.settings["sampling_rate"]

    @property
    def num_mel_bins(self):
        return self.settings["feature_size"]

    @property
    def frames(self):
        """Frames of every output (the extractor drops the STFT's last frame)."""
        return self.clip_samples // self.settings["hop_length"]

    @property
    def samples_needed(self):
        """Samples from the start of an utterance that are used: the clip."""
        return self.clip_samples

    @property
    def min_samples(self):
        """One STFT window: shorter input is padded (with a warning) before the clip padding."""
        return self.settings["n_fft"]

    def __call__(self, wav):
        """``[S]`` waveform -> ``[frames, feature_size]`` log-mel features (time first, as
        ``ASTFbank``; the lobe transposes them to Whisper's ``[mel, frames]``)."""
        wav = wav.reshape(-1)[: self.clip_samples].float().numpy()
        features = self.extractor(
            wav, sampling_rate=self.sample_rate, padding="max_length", max_length=self.clip_samples,
            truncation=True, return_attention_mask=False, return_tensors="pt",
        ).input_features[0]
        return features.transpose(0, 1).contiguous().float()

    @staticmethod
    def pad_frames(features, frames):
        """``[B, T, mel]`` features cut or padded to ``[B, frames, mel]`` (ONNX inputs of another
        length than the clip's). The processor pads the waveform with silence, whose log-mel the
        extractor clamps to its floor: ``max(log10 maximum - 8, -10)``, scaled ``(x + 4) / 4``,
        i.e. ``max(features' maximum - 2, -1.5)``, the padding here. It differs from the
        extractor's padding only in the first two padded frames (their STFT window still holds the
        clip's last samples).
        Exact input: the features of ``clip_samples``, as ``__call__`` computes them."""
        missing = frames - features.shape[1]
        padded = torch.nn.functional.pad(features, (0, 0, 0, missing))  # a negative pad cuts
        floor = (features.amax(dim=(1, 2), keepdim=True) - 2.0).clamp(min=-1.5)
        is_padding = (torch.arange(frames, device=features.device) >= features.shape[1])[None, :, None]
        return torch.where(is_padding, floor, padded)

    def config(self):
        """The settings that rebuild this processor (for saved models and caches)."""
        return {"type": "whisper_log_mel", "clip_samples": self.clip_samples, **self.settings}


class BEATsFbank:
    """BEATs' input, as SpeechBrain's ``BEATs.preprocess`` computes it (it is called here): the
    waveform scaled to 16-bit range (``x * 2**15``), a Kaldi fbank (128 bins, 25 ms Povey window,
    10 ms shift), normalised as ``(x - 15.41663) / (2 * 6.55582)``.

    Cut to ``clip_samples`` (when given) before the fbank; not padded: a batch is padded with zeros
    (``batch_pad_right``) and the lobe masks the padded frames out (the relative lengths), so an
    utterance is seen the same way alone or in any batch. Clips shorter than one 16-frame patch
    (``min_samples``, 175 ms) are padded with zeros first.

    Arguments
    ---------
    clip_samples : int or None
        Samples kept from the start of each utterance (None: the whole utterance).
    patch_frames : int
        Frames of one patch (the checkpoint's ``input_patch_size``, 16).
    sample_rate : int
        16000 (BEATs' fbank is for 16 kHz audio).

    Example
    -------
    >>> fbank = BEATsFbank(clip_samples=16000)
    >>> fbank(torch.randn(32000)).shape  # 1 s: 98 frames of 128 bins
    torch.Size([98, 128])
    """

    num_mel_bins = 128

    def __init__(self, clip_samples=None, patch_frames=16, sample_rate=16000):
        self.clip_samples = None if clip_samples is None else int(clip_samples)
        if self.clip_samples is not None and self.clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive or None, got {clip_samples}.")
        self.patch_frames = int(patch_frames)
        self.sample_rate = int(sample_rate)

    @property
    def samples_needed(self):
        """Samples from the start of an utterance that are used (None: all of them)."""
        return self.clip_samples

    @property
    def min_samples(self):
        """Samples of one patch (``patch_frames`` frames of 25 ms every 10 ms)."""
        return 400 + (self.patch_frames - 1) * 160

    def __call__(self, wav):
        """``[S]`` waveform -> ``[frames, 128]`` normalised fbank (``BEATs.preprocess``)."""
        wav = wav.reshape(-1).float()
        if self.clip_samples is not None:
            wav = wav[: self.clip_samples]
        return self.unpadded(pad_to_minimum(wav, self.min_samples))

    def unpadded(self, wav):
        """``[S]`` waveform -> ``[frames, 128]`` normalised fbank of all of it, one frame per 10 ms
        (``petl_modules.model.long_audio`` slices windows' frames from it)."""
        from speechbrain.lobes.models.beats import BEATs

        # preprocess reads nothing of the model: its fbank and normalisation, exactly
        return BEATs.preprocess(None, wav.reshape(-1).float()[None], BEATS_MEAN, BEATS_STD)[0]

    def config(self):
        """The settings that rebuild this processor (for saved models and caches)."""
        return {"type": "beats_fbank", "clip_samples": self.clip_samples, "num_mel_bins": 128,
                "sample_rate": self.sample_rate, "scale": 2 ** 15, "mean": BEATS_MEAN, "std": BEATS_STD,
                "patch_frames": self.patch_frames}
