"""Reading audio files: any format soundfile reads, mixed to mono, resampled to 16 kHz.

torchaudio 2.11 needs torchcodec to load audio, so we read with soundfile (as SpeechBrain's
``read_audio`` does) and resample with torchaudio. ``load_audio(path, max_samples=n, start=s)`` reads
only the part of the file that samples ``s .. s + n`` come from (plus the resampling kernel's
reach), so memory does not grow with the file; training (first clip or random crops), testing
(first clip or sliding windows) and ``classify`` read every clip of a file
(``petl_modules.model.clip.Clip``) that way, so they see the same samples (equal to resampling the whole file, up to float rounding).
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
def resampled_length(frames, rate, sample_rate=SAMPLE_RATE):
    """Samples at ``sample_rate`` of ``frames`` frames at ``rate`` (torchaudio's output length)."""
    if int(rate) == int(sample_rate):
        return int(frames)
    return math.ceil(int(frames) * int(sample_rate) / int(rate))


def span_to_read(rate, max_samples, start=0, sample_rate=SAMPLE_RATE):
    """Which frames of a file at ``rate`` give samples ``start .. start + max_samples`` at
    ``sample_rate`` exactly: ``(first frame, frames to read or None for all, resampled samples
    to drop before start)``.

    At another rate the read starts a few whole resampling periods (``rate / gcd`` input frames,
    ``sample_rate / gcd`` output samples) before ``start``, so that the kernel sees the same input
    around every kept sample as when the whole file is resampled.
    """
    start = int(start)
    if int(rate) == int(sample_rate):
        return start, None if max_samples is None else int(max_samples), 0
    common = math.gcd(int(rate), int(sample_rate))
    period_in, period_out = int(rate) // common, int(sample_rate) // common
    period = max(0, start // period_out - math.ceil(RESAMPLING_MARGIN / period_in))
    first = period * period_in
    frames = None
    if max_samples is not None:
        # The samples they come from, plus the reach of the resampling kernel (a few dozen samples).
        frames = math.ceil((start + int(max_samples)) * int(rate) / int(sample_rate)) \
            + RESAMPLING_MARGIN - first
    return first, frames, start - period * period_out


def audio_length(path, sample_rate=SAMPLE_RATE):
    """Samples of ``path`` at ``sample_rate``, from its header (nothing else is read).

    Raises
    ------
    AudioError
        Missing or unreadable file, naming it.
    """
    source = _source(path)
    try:
        info = sf.info(source)
    except Exception as err:  # soundfile.LibsndfileError and friends
        raise _unreadable(path, err) from None
    return resampled_length(info.frames, info.samplerate, sample_rate)


def _source(path):
    """What soundfile opens: the path of an existing file (else ``AudioError``), or a file-like
    object as it is (e.g. a clip read from a tar shard, rewound; its ``str`` names it in errors)."""
    if hasattr(path, "read"):
        path.seek(0)
        return path
    _check_exists(path)
    return str(path)


def _check_exists(path):
    if not Path(path).is_file():
        raise AudioError(f"Audio file not found: {path}. Check the path (put the file back, or "
                         "delete the manifests to prepare the data again).")


def _unreadable(path, err):
    reason = getattr(err, "error_string", None) or str(err).strip() or type(err).__name__
    reason = str(reason).rstrip(". ")
    return AudioError(
        f"Cannot read audio file {path}: {reason}. Check that it is a valid audio file "
        f"(replace it with a good copy), {SKIP_HINT}."
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
            f"{first}); it would turn every weight into NaN. Replace the file with a good copy, "
            f"{SKIP_HINT}."
        )


def load_audio(path, sample_rate=SAMPLE_RATE, max_samples=None, start=0):
    """Reads ``path`` as a mono float32 waveform at ``sample_rate``.

    Arguments
    ---------
    path : str or Path or file-like
        Any file soundfile reads (wav 8-bit unsigned to 32-bit float, flac, ...), mono or
        multichannel; or a file-like object holding one (a clip of a tar shard).
    sample_rate : int
        Target rate; other rates are resampled (see ``resample``).
    max_samples : int, optional
        Return at most this many samples, reading only the part of the file they come from (plus
        the resampling kernel's reach): ``load_audio(path, sample_rate)[:max_samples]`` up to
        float rounding (exactly, at ``sample_rate``).
    start : int or callable
        The first sample (at ``sample_rate``) to return; a callable gets the file's length in
        samples at ``sample_rate`` (from its header) and returns it (a random crop). The result is
        ``load_audio(path, sample_rate)[start:start + max_samples]``, read as above.

    Returns
    -------
    torch.Tensor
        ``[S]`` float32 in [-1, 1] (``S <= max_samples`` when given).

    Raises
    ------
    AudioError
        Naming the file, what is wrong with it, and the fix.
    """
    source = _source(path)
    try:
        with sf.SoundFile(source) as stream:
            rate = stream.samplerate
            if callable(start):
                start = start(resampled_length(stream.frames, rate, sample_rate))
            first, frames, skip = span_to_read(rate, max_samples, start, sample_rate)
            if first:
                stream.seek(min(first, stream.frames))
            data = stream.read(-1 if frames is None else frames, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile.LibsndfileError and friends
        raise _unreadable(path, err) from None
    if data.shape[0] == 0:
        raise AudioError(f"Audio file {path} is empty (zero samples). Replace it, {SKIP_HINT}.")
    check_finite(data, path)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    wav = resample(wav, rate, sample_rate)[skip:]
    return wav if max_samples is None else wav[: int(max_samples)]


_warned_short = set()  # files already reported as too short (one warning per file and process)


def load_input(path, input_processor, start=0, stop=None):
    """The model input of one audio file, or of one clip of it: what the data pipeline hands to
    the batch.

    Reads only the part of the file that ``input_processor`` uses (its ``samples_needed`` from
    ``start``; the rest of a long file is never read), pads a clip shorter than the backbone's minimum input
    (``min_samples``) with zeros and a warning naming the file, then runs the processor.

    Arguments
    ---------
    path : str or Path
        An audio file (any format ``petl_modules.model.audio.load_audio`` reads).
    input_processor : callable
        The lobe's ``input_processor`` (``ASTFbank``, ``Waveform``).
    start : int or callable
        Where the clip starts (``load_audio``): 0 (the first clip), a window's first sample, or a
        random crop of the whole file (a function of its length).
    stop : int, optional
        With a whole-number ``start``: the sample (at the processor's rate) where the audio used
        ends, e.g. the end of a segment of a long file or of a window.

    ``petl_modules.model.clip.Clip.read`` calls it with a clip's ``path``, ``start`` and ``stop``:
    training, evaluation, the backbone output cache and classify read every clip that way.

    Returns
    -------
    torch.Tensor
        The processor's output (``[max_frames, mel]`` or ``[S]``).

    Raises
    ------
    petl_modules.model.audio.AudioError
        Missing, unreadable, empty file or non-finite samples, naming the file.
    """
    wav = load_audio(path, getattr(input_processor, "sample_rate", 16000),
                     max_samples=getattr(input_processor, "samples_needed", None), start=start)
    if stop is not None:
        wav = wav[: max(1, int(stop) - int(start))]
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
