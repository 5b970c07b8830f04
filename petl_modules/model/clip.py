"""A clip of a recording: the one idea behind segments of long files, random training crops and
evaluation windows.

A ``Clip`` is a recording (a path, or a file-like object such as a member of a tar shard), the
sample it starts at and the sample it stops at (None: the file's end), at the input processor's
rate. Every place that reads audio for a model builds one and reads it with ``Clip.read`` (one
reader, ``petl_modules.model.audio.load_input``: only the samples the processor uses):

- a whole file is ``Clip(path)`` (the model reads its first clip);
- a segment of a long file (a manifest's ``seg_start``, ``seg_end`` and ``duration``) is
  ``Clip.of_segment``;
- a random training crop is a clip within a clip: ``clip.crop(draw)`` (``draw(length)`` gives
  the offset; ``petl_modules.training.windows.TrainCrop`` draws it from seed, epoch and id);
- the sliding evaluation windows of a clip are clips: ``clip.windows(...)``
  (``petl_modules.model.windows.EvalProtocol.clips``).

Example
-------
>>> Clip("a.wav", 16000, 40000).windows(16000, 8000, 16000)
[Clip(path='a.wav', start=16000, stop=32000), Clip(path='a.wav', start=24000, stop=40000)]
>>> Clip("a.wav", 16000, 40000).crop(lambda length: length - 16000)
Clip(path='a.wav', start=24000, stop=40000)
"""

import functools
import math
from typing import Any, NamedTuple, Optional

from petl_modules.model.audio import audio_length, load_input
from petl_modules.model.windows import window_starts


class Clip(NamedTuple):
    """``path`` from sample ``start`` (int; or a function of the file's length in samples, read
    from its header when the clip is read: a random crop of a whole file) to ``stop`` (None: the
    file's end), at the processor's rate."""

    path: Any
    start: Any = 0
    stop: Optional[int] = None

    @classmethod
    def of_segment(cls, path, seg_start=None, seg_end=None, duration=None, rate=16000):
        """The clip of a manifest row: the whole file when ``seg_start`` and ``seg_end`` are both
        empty (None, "" or NaN), else the segment from ``seg_start`` seconds (empty: 0) lasting
        ``duration`` seconds (at least one sample)."""
        if _empty(seg_start) and _empty(seg_end):
            return cls(path)
        first = round(float(0 if _empty(seg_start) else seg_start) * rate)
        return cls(path, first, first + max(1, round(float(duration) * rate)))

    def length(self, rate=16000):
        """Samples of the clip (a whole file's: from its header)."""
        total = audio_length(self.path, rate) if self.stop is None else int(self.stop)
        return total - int(self.start)

    def crop(self, draw):
        """A clip within this one, ``draw(length)`` samples after its start, to its stop (the
        reader keeps the processor's ``samples_needed`` of it). A whole file draws on its
        length when it is read (its header is read once)."""
        if self.stop is not None:
            return self._replace(start=int(self.start) + draw(int(self.stop) - int(self.start)))
        if self.start == 0:
            return self._replace(start=draw)
        return self._replace(start=functools.partial(_shifted, int(self.start), draw))

    def windows(self, clip, hop, rate=16000):
        """The sliding windows over this clip (``window_starts``): clips of ``clip`` samples (None:
        the whole clip) every ``hop``, the last ending where this one does."""
        first, total = int(self.start), self.length(rate)
        return [Clip(self.path, first + start, first + (total if clip is None else min(total, start + clip)))
                for start in window_starts(total, clip, hop)]

    def read(self, processor):
        """The model input of the clip: ``processor`` run on its samples (``load_input``)."""
        return load_input(self.path, processor, start=self.start, stop=self.stop)

    def of(self, waveform):
        """The clip's samples of a ``[S]`` waveform already in memory."""
        return waveform[int(self.start): self.stop]


def _empty(value):
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _shifted(first, draw, total):
    return first + draw(total - first)
