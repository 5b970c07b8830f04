"""Reading audio files: any format soundfile reads, mixed to mono, resampled to 16 kHz.

torchaudio 2.11 needs torchcodec to load audio, so we read with soundfile (as SpeechBrain's
``read_audio`` does) and resample with torchaudio. ``load_audio(path, max_samples=n)`` reads only
the part of the file the first ``n`` samples come from (plus the resampling kernel's reach), so
memory does not grow with the file; training, testing and ``classify`` read every file that way, so
they see the same samples (equal to resampling the whole file up to float rounding, ~1e-7).
"""

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
RESAMPLING_MARGIN = 256  # input frames read beyond those the kept samples come from

SKIP_HINT = "or rerun preparation with --skip_bad_files=True to leave it out"


class AudioError(RuntimeError):
    """A file that cannot be used as audio (missing, unreadable, empty, non-finite samples)."""


# ==================================================================== resampling
def resample(wav, orig_freq, new_freq=SAMPLE_RATE):
    """Resamples a ``[S]`` waveform with torchaudio (windowed sinc).

    Example
    -------
    >>> resample(torch.zeros(44100), 44100).shape
    torch.Size([16000])
    """
    if int(orig_freq) == int(new_freq):
        return wav
    return torchaudio.functional.resample(wav.float(), int(orig_freq), int(new_freq))


# ==================================================================== reading
def frames_to_read(rate, max_samples, sample_rate=SAMPLE_RATE):
    """Frames of a file at ``rate`` that give its first ``max_samples`` samples at ``sample_rate``
    exactly (None: all)."""
    if max_samples is None:
        return None
    if int(rate) == int(sample_rate):
        return int(max_samples)
    # The samples they come from, plus the reach of the resampling kernel (a few dozen samples).
    return math.ceil(int(max_samples) * int(rate) / int(sample_rate)) + RESAMPLING_MARGIN


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
        the resampling kernel's reach): ``load_audio(path, sample_rate)[:max_samples]`` up to
        float rounding (exactly, at ``sample_rate``).

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
