"""Helpers shared by the wav2vec2-family tests (tests/test_*wav2vec2*.py)."""

import torch

from petl_modules.backbones.features import Waveform


def padded_batch(durations, seed=0):
    """Zero-padded normalised waveforms ``[B, S]`` of ``durations`` (s) + relative lengths."""
    generator = torch.Generator().manual_seed(seed)
    processor = Waveform()
    waves = [processor(torch.randn(int(16000 * d), generator=generator)) for d in durations]
    longest = max(w.numel() for w in waves)
    batch = torch.stack([torch.nn.functional.pad(w, (0, longest - w.numel())) for w in waves])
    return batch, torch.tensor([w.numel() / longest for w in waves])
