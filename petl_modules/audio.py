"""Reading audio files: any format soundfile reads, mixed to mono, resampled to 16 kHz.

torchaudio 2.11 needs torchcodec to load audio, so we read with soundfile (as SpeechBrain's
``read_audio`` does). Resampling is torchaudio's windowed-sinc interpolation (Hann window, 6 zero
crossings, rolloff 0.99), computed here in fixed-size blocks so that the first ``n`` output samples
never depend on how much of the file was read: ``load_audio(path, max_samples=n)`` reads only what
those samples need and gives exactly ``load_audio(path)[:n]``, whatever the file's length and rate.
"""

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 16000
LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc on each side (torchaudio's default)
ROLLOFF = 0.99  # cut-off as a fraction of the lower Nyquist frequency (torchaudio's default)
BLOCK_SECONDS = 1.0  # output per resampling block

SKIP_HINT = "or rerun preparation with --skip_bad_files=True to leave it out"


class AudioError(RuntimeError):
    """A file that cannot be used as audio (missing, unreadable, empty, non-finite samples)."""


# ==================================================================== resampling
class _Resampler:
    """Windowed-sinc resampling from ``orig_freq`` to ``new_freq``, in blocks of fixed shape.

    The kernel is torchaudio's ``sinc_interp_hann``: after dividing both rates by their gcd
    (``o`` in, ``n`` out), every ``o`` input samples give ``n`` output samples, each a dot product
    of ``2 * width + o`` input samples with one of ``n`` kernels. The convolution runs over blocks
    of ``steps`` such strides, every block with the same input shape, so each output sample is
    computed the same way whether the file was read in full or in part.
    """

    def __init__(self, orig_freq, new_freq):
        gcd = math.gcd(int(orig_freq), int(new_freq))
        self.orig, self.new = int(orig_freq) // gcd, int(new_freq) // gcd
        base = min(self.orig, self.new) * ROLLOFF
        self.width = math.ceil(LOWPASS_FILTER_WIDTH * self.orig / base)
        # In float32, as torchaudio computes it for float32 waveforms (same kernel, same values).
        idx = torch.arange(-self.width, self.width + self.orig, dtype=torch.float32) / self.orig
        t = (torch.arange(0, -self.new, -1, dtype=torch.float32)[:, None] / self.new + idx) * base
        t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
        window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
        t = t * math.pi
        sinc = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
        self.kernel = (sinc * (window * (base / self.orig)))[:, None, :]  # [n, 1, K]
        self.steps = max(1, math.ceil(BLOCK_SECONDS * int(new_freq) / self.new))
        self.block_in = (self.steps - 1) * self.orig + self.kernel.shape[-1]

    def output_length(self, input_length):
        """Output samples of ``input_length`` input samples (as torchaudio: ``ceil(S * n / o)``)."""
        return math.ceil(input_length * self.new / self.orig)

    def input_needed(self, output_samples):
        """Input samples that determine the first ``output_samples`` outputs exactly: up to the end
        of the last block they fall in, plus the kernel's reach beyond it."""
        blocks = math.ceil(output_samples / (self.steps * self.new))
        return blocks * self.steps * self.orig + self.width

    def __call__(self, wav):
        """``[S]`` float32 -> ``[ceil(S * n / o)]`` float32."""
        length = self.output_length(wav.shape[0])
        blocks = max(1, math.ceil(length / (self.steps * self.new)))
        total = (blocks - 1) * self.steps * self.orig + self.block_in
        padded = torch.nn.functional.pad(wav, (self.width, total - self.width - wav.shape[0]))
        out = []
        for b in range(blocks):
            start = b * self.steps * self.orig
            segment = padded[start: start + self.block_in].reshape(1, 1, -1)
            block = torch.nn.functional.conv1d(segment, self.kernel, stride=self.orig)  # [1, n, steps]
            out.append(block[0].t().reshape(-1))
        return torch.cat(out)[:length]


_RESAMPLERS = {}


def resampler(orig_freq, new_freq):
    """The (cached) ``_Resampler`` from ``orig_freq`` to ``new_freq``."""
    key = (int(orig_freq), int(new_freq))
    if key not in _RESAMPLERS:
        _RESAMPLERS[key] = _Resampler(*key)
    return _RESAMPLERS[key]


def resample(wav, orig_freq, new_freq=SAMPLE_RATE):
    """Resamples a ``[S]`` waveform (torchaudio's sinc_interp_hann, computed in blocks).

    Example
    -------
    >>> resample(torch.zeros(44100), 44100).shape
    torch.Size([16000])
    """
    if int(orig_freq) == int(new_freq):
        return wav
    return resampler(orig_freq, new_freq)(wav.float())


# ==================================================================== reading
def frames_to_read(rate, max_samples, sample_rate=SAMPLE_RATE):
    """Frames of a file at ``rate`` that give its first ``max_samples`` samples at ``sample_rate``
    exactly (None: all)."""
    if max_samples is None:
        return None
    if int(rate) == int(sample_rate):
        return int(max_samples)
    return resampler(rate, sample_rate).input_needed(int(max_samples))


def _unreadable(path, err):
    reason = getattr(err, "error_string", None) or str(err).strip() or type(err).__name__
    reason = str(reason).rstrip(". ")
    return AudioError(
        f"Cannot read audio file {path}: {reason}. Check that it is a valid audio file "
        f"(re-extract it from the dataset release), {SKIP_HINT}."
    )


def check_finite(data, path):
    """Raises ``AudioError`` naming ``path`` when ``data`` (array or tensor) holds NaN or Inf."""
    values = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        per_frame = finite.reshape(finite.shape[0], -1).all(axis=1) if values.ndim else finite
        first = int(np.flatnonzero(~per_frame)[0]) if values.ndim else 0
        raise AudioError(
            f"Audio file {path} holds non-finite samples ({bad} NaN/Inf, the first at sample "
            f"{first}); it would turn every weight into NaN. Replace the file (re-extract it from "
            f"the dataset release), {SKIP_HINT}."
        )


def load_audio(path, sample_rate=SAMPLE_RATE, max_samples=None):
    """Reads ``path`` as a mono float32 waveform at ``sample_rate``.

    Arguments
    ---------
    path : str or Path
        Any file soundfile reads (wav 8-bit unsigned to 32-bit float, flac, ...), mono or multichannel.
    sample_rate : int
        Target rate; other rates are resampled (see ``resample``).
    max_samples : int, optional
        Return at most this many samples, reading only the part of the file they come from (plus
        the resampling kernel's reach): exactly ``load_audio(path, sample_rate)[:max_samples]``.

    Returns
    -------
    torch.Tensor
        ``[S]`` float32 in [-1, 1] (``S <= max_samples`` when given).

    Raises
    ------
    AudioError
        Naming the file, what is wrong with it, and the fix.
    """
    if not Path(path).is_file():
        raise AudioError(f"Audio file not found: {path}. Rerun preparation (delete the manifests) "
                         "or restore the file from the dataset release.")
    try:
        with sf.SoundFile(str(path)) as stream:
            rate = stream.samplerate
            frames = frames_to_read(rate, max_samples, sample_rate)
            data = stream.read(-1 if frames is None else frames, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile.LibsndfileError and friends
        raise _unreadable(path, err) from None
    if data.shape[0] == 0:
        raise AudioError(f"Audio file {path} is empty (zero samples). Replace it, {SKIP_HINT}.")
    check_finite(data, path)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    wav = resample(wav, rate, sample_rate)
    return wav if max_samples is None else wav[: int(max_samples)]
