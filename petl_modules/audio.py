"""Reading audio files: any format soundfile reads, mixed to mono, resampled to 16 kHz.

torchaudio 2.11 needs torchcodec to load audio, so we read with soundfile (as SpeechBrain's
``read_audio`` does) and only use torchaudio for resampling.
"""

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000


class AudioError(RuntimeError):
    """A file that cannot be used as audio (missing, unreadable, empty)."""


def load_audio(path, sample_rate=SAMPLE_RATE):
    """Reads ``path`` as a mono float32 waveform at ``sample_rate``.

    Arguments
    ---------
    path : str or Path
        Any file soundfile reads (wav 8-bit unsigned to 32-bit float, flac, ...), mono or multichannel.
    sample_rate : int
        Target rate; other rates are resampled with torchaudio.

    Returns
    -------
    torch.Tensor
        ``[S]`` float32 in [-1, 1].

    Raises
    ------
    AudioError
        Naming the file and what is wrong with it.
    """
    if not Path(path).is_file():
        raise AudioError(f"Audio file not found: {path}. Rerun preparation (delete the manifests) "
                         "or restore the file from the dataset release.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile.LibsndfileError and friends
        reason = getattr(err, "error_string", None) or err
        raise AudioError(
            f"Cannot read audio file {path}: {reason}. Check that it is a valid audio file "
            "(re-extract it from the dataset release), or rerun preparation with "
            "--skip_bad_files=True to leave it out."
        ) from None
    if data.shape[0] == 0:
        raise AudioError(
            f"Audio file {path} is empty (zero samples). Replace it, or rerun preparation with "
            "--skip_bad_files=True to leave it out."
        )
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wav = torchaudio.functional.resample(wav, rate, sample_rate)
    return wav
