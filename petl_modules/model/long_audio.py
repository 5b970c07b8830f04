"""Long recordings: the sliding windows of a file read a chunk at a time, their features computed
once per sample where windows overlap.

``PETLModel.classify_files`` (and ``classify_file``) take every window's model input from
``file_windows``: it reads ``chunk_windows`` consecutive overlapping windows' samples in one read
(``petl_modules.model.audio.load_audio``'s partial read: memory stays flat however long the file),
and turns them into the windows' inputs with ``window_features``. The caller batches the windows
within and across files (``batch_size`` clips per forward).

Features computed once (``shared=True``): the Kaldi fbank lobes (``ASTFbank``: AST; ``BEATsFbank``:
BEATs) compute one frame per 10 ms (160 samples at 16 kHz) from its own 25 ms (400 samples), with
``snip_edges`` (no frame reaches beyond the samples), per-frame DC removal and pre-emphasis, no
dither, and an elementwise normalisation. A window starting a whole number of frame shifts into a
chunk thus has exactly the rows of the chunk's fbank that start inside it: the chunk's fbank is
computed once and sliced. That is exact (bit for bit: ``tests/test_long_audio.py``). A window that
does not start on the chunk's frame grid (the last window of a file, which ends with the file; a hop
that is not a whole number of 10 ms) gets its own fbank. Whisper's log-mel is computed per window:
its STFT is centred (the window's edges are reflected) and clamped at the window's maximum - 8.
The waveform lobes (wav2vec 2.0, HuBERT, WavLM, data2vec-audio, w2v-BERT) normalise each window
by its own mean and variance: their inputs stay per window (only the reading is shared).
"""

from petl_modules.backbones.features import ASTFbank, BEATsFbank
from petl_modules.model.audio import load_audio
from petl_modules.model.windows import clip_samples

KALDI_FRAME_SECONDS = 0.025  # the 25 ms window of a Kaldi fbank frame
KALDI_SHIFT_SECONDS = 0.010  # the 10 ms between frames
SHARED_FRAME_PROCESSORS = (ASTFbank, BEATsFbank)  # per-frame features: sliced from a chunk's


def frame_shift(processor):
    """Samples between the frames of ``processor`` when a window's features are rows of a longer
    span's (the Kaldi fbank lobes, with a clip length); None otherwise (per-window features)."""
    if not isinstance(processor, SHARED_FRAME_PROCESSORS) or clip_samples(processor) is None:
        return None
    return round(KALDI_SHIFT_SECONDS * processor.sample_rate)


def window_frames(processor, samples):
    """Frames a Kaldi fbank computes from ``samples`` samples (``snip_edges``)."""
    frame = round(KALDI_FRAME_SECONDS * processor.sample_rate)
    return 1 + (int(samples) - frame) // frame_shift(processor)


def window_features(wav, starts, processor, shared=True):
    """The model inputs of the windows of ``wav`` at ``starts`` (samples into ``wav``): each equal
    to ``processor(wav[start:start + clip])`` (see the module doc: sliced from one fbank of ``wav``
    where the processor allows and ``shared``).

    Example
    -------
    >>> import torch
    >>> fbank = ASTFbank(max_frames=100)
    >>> wav = torch.randn(fbank.samples_needed + 1600)
    >>> [torch.equal(f, fbank(wav[s:s + fbank.samples_needed]))
    ...  for s, f in zip([0, 1600], window_features(wav, [0, 1600], fbank))]
    [True, True]
    """
    clip = clip_samples(processor)
    shift = frame_shift(processor) if shared and clip is not None else None
    whole = [s for s in starts if s + clip <= wav.shape[-1]] if clip is not None else []
    aligned = {s for s in whole if shift and s % shift == 0}
    if len(aligned) < 2:  # nothing to share
        return [processor(wav[s: s + clip] if clip is not None else wav) for s in starts]
    table = processor.unpadded(wav[: max(aligned) + clip])  # [frames, mel] of the chunk
    frames = window_frames(processor, clip)
    return [table[s // shift: s // shift + frames] if s in aligned else processor(wav[s: s + clip])
            for s in starts]


def chunks(starts, clip, chunk_windows):
    """``starts`` grouped into runs of at most ``chunk_windows`` windows that overlap or touch
    (each run is read at once; windows further apart are read apart)."""
    groups = []
    for start in starts:
        if groups and len(groups[-1]) < chunk_windows and start - groups[-1][-1] <= clip:
            groups[-1].append(start)
        else:
            groups.append([start])
    return groups


def file_windows(path, processor, protocol, chunk_windows=8, shared=True):
    """Yields the model input of each window of ``path`` (a file, or a ``Clip`` of one) under
    ``protocol`` (an ``EvalProtocol``: its ``clips``), in order: runs of ``chunk_windows``
    windows read at once (``load_audio``'s partial read) and processed by ``window_features``. A
    file evaluated on one clip (the first-clip protocol, a file no longer than a clip, whole
    utterances) is read by ``Clip.read``, as training reads it (short files padded, with a
    warning)."""
    clips = protocol.clips(path, processor)
    clip = clip_samples(processor)
    if clip is None or len(clips) == 1:
        for one in clips:
            yield one.read(processor)
        return
    rate = getattr(processor, "sample_rate", 16000)
    starts = [int(one.start) for one in clips]
    for group in chunks(starts, clip, max(1, int(chunk_windows))):
        last = clips[starts.index(group[-1])]
        wav = load_audio(last.path, rate, max_samples=int(last.stop) - group[0], start=group[0])
        yield from window_features(wav, [s - group[0] for s in group], processor, shared)
