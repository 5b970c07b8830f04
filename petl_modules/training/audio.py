"""Reading audio files: any format soundfile reads, mixed to mono, resampled to 16 kHz.

torchaudio 2.11 needs torchcodec to load audio, so we read with soundfile (as SpeechBrain's
``read_audio`` does) and resample with torchaudio. ``load_audio(path, max_samples=n)`` reads only
the part of the file the first ``n`` samples come from (plus the resampling kernel's reach), so
memory does not grow with the file; training, testing and ``classify`` read every file that way, so
they see the same samples (equal to resampling the whole file up to float rounding, ~1e-7).
"""

import logging
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

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
        raise AudioError(f"Audio file not found: {path}. Check the path (for a dataset: restore "
                         "the file from its release, or delete the manifests to prepare again).")
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


_warned_short = set()  # files already reported as too short (one warning per file and process)


def load_input(path, input_processor):
    """The model input of one audio file: what the data pipeline hands to the batch.

    Reads only the part of the file that ``input_processor`` uses (its ``samples_needed``; the
    rest of a long file is never read), pads a clip shorter than the backbone's minimum input
    (``min_samples``) with zeros and a warning naming the file, then runs the processor.

    Arguments
    ---------
    path : str or Path
        An audio file (any format ``petl_modules.training.audio.load_audio`` reads).
    input_processor : callable
        The lobe's ``input_processor`` (``ASTFbank``, ``Waveform``).

    Returns
    -------
    torch.Tensor
        The processor's output (``[max_frames, mel]`` or ``[S]``).

    Raises
    ------
    petl_modules.training.audio.AudioError
        Missing, unreadable, empty file or non-finite samples, naming the file.
    """
    wav = load_audio(path, getattr(input_processor, "sample_rate", 16000),
                     max_samples=getattr(input_processor, "samples_needed", None))
    min_samples = getattr(input_processor, "min_samples", 0)
    if wav.shape[0] < min_samples:
        key = str(path)
        if key not in _warned_short:
            _warned_short.add(key)
            rate = getattr(input_processor, "sample_rate", 16000)
            logger.warning(
                f"Audio file {path} is shorter ({wav.shape[0]} samples, "
                f"{1000 * wav.shape[0] / rate:.1f} ms) than the backbone's minimum input "
                f"({min_samples} samples, {1000 * min_samples / rate:.0f} ms): padded with zeros. "
                "Replace or remove the file if it is not meant to be this short."
            )
        wav = torch.nn.functional.pad(wav, (0, min_samples - wav.shape[0]))
    return input_processor(wav)
