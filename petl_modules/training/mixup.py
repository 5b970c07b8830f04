"""Mixup of training clips (Zhang et al., ICLR 2018; AST trains the full AudioSet with it).

A mixed example is ``lam * x_i + (1 - lam) * x_j`` for a partner clip ``j``, trained towards
``lam * y_i + (1 - lam) * y_j``: multi-label runs mix their multi-hot targets, single-label runs
train on the mixed soft targets (cross-entropy with class probabilities). ``lam`` is drawn from
``Beta(mixup_alpha, mixup_alpha)`` for a share ``mixup_prob`` of the examples (the others keep
``lam = 1``). Options of every recipe (``petl_modules/training/recipe.yaml``):

- ``mixup: null`` (off) | ``features`` | ``waveform``:
  ``features`` mixes the backbone's inputs within each training batch, the partner being another
  example of the batch (``BatchMixup``; the inputs are fbank features for AST and the normalised
  waveform for the wav2vec 2.0 family); ``waveform`` mixes the audio before the features are
  computed, as AST does, the partner being any training clip, drawn from (seed, epoch, clip id)
  alone (``WaveformMixup``), so a resumed run or another number of DataLoader workers draws the
  same partners;
- ``mixup_alpha`` (default 10, AST's), ``mixup_prob`` (default 0.5, AST's).

Validation, test and the choice of the best epoch always see the clips unmixed.
"""

import hashlib

import numpy as np
import torch

MIXUPS = (None, "features", "waveform")


def mixup_options(options):
    """``(kind, alpha, prob)`` of a run's options; kind None when mixup is off."""
    return (options.get("mixup"), float(options.get("mixup_alpha", 10.0)),
            float(options.get("mixup_prob", 0.5)))


def _lambdas(n, alpha, prob, generator=None):
    """``[n]`` mixing weights: Beta(alpha, alpha) draws for a share ``prob``, 1 for the others."""
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if generator is None:
        lam = beta.sample((n,))
        keep = torch.rand(n) >= prob
    else:  # numpy generator (data pipeline)
        lam = torch.from_numpy(generator.beta(alpha, alpha, size=n)).float()
        keep = torch.from_numpy(generator.random(n) >= prob)
    return torch.where(keep, torch.ones_like(lam), lam)


class BatchMixup:
    """``mixup: features``: mixes the examples of a training batch with a permutation of it.

    Draws come from torch's global generator (restored by the checkpoints, like SpecAugment's).
    """

    def __init__(self, alpha=10.0, prob=0.5):
        self.alpha, self.prob = float(alpha), float(prob)

    def draw(self, batch_size):
        """``(lam [B], partner [B])`` for a batch."""
        return _lambdas(batch_size, self.alpha, self.prob), torch.randperm(batch_size)

    @staticmethod
    def mix(x, mixing):
        """``lam * x + (1 - lam) * x[partner]`` along the batch dimension of ``x`` ``[B, ...]``."""
        lam, partner = mixing
        lam = lam.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return lam * x + (1 - lam) * x[partner.to(x.device)]

    def mix_inputs(self, inputs, lengths, mixing):
        """Mixed ``inputs`` ``[B, T, ...]`` and their relative ``lengths`` (the longer of the two)."""
        lam, partner = mixing
        mixed = self.mix(inputs, mixing)
        longer = torch.maximum(lengths, lengths[partner.to(lengths.device)])
        return mixed, torch.where(lam.to(lengths.device) < 1, longer, lengths)


def soft_targets(batch, n_classes, multilabel):
    """``[B, C]`` float targets of a batch: its multi-hot ``targets``, or one-hot labels."""
    if multilabel:
        return batch.targets.data.float()
    labels = batch.label_index.data.view(-1)
    return torch.nn.functional.one_hot(labels, int(n_classes)).float()


class WaveformMixup:
    """``mixup: waveform``: every training clip is mixed, before its features are computed, with
    a partner among the training clips; partner and ``lam`` are a function of (seed, epoch, clip
    id) alone. The Brain sets the epoch before each training epoch (``set_epoch``).

    Arguments
    ---------
    ids : list of str
        The training clips' ids (the partners' pool).
    seed : int
    alpha, prob : float
        ``mixup_alpha``, ``mixup_prob``.
    """

    def __init__(self, ids, seed, alpha=10.0, prob=0.5):
        self.ids, self.seed, self.alpha, self.prob, self.epoch = list(ids), int(seed), alpha, prob, 1

    def set_epoch(self, epoch, batches_done=0):
        self.epoch = int(epoch)

    def __call__(self, uid):
        """``(partner id, lam)`` of clip ``uid`` at the current epoch."""
        digest = hashlib.sha256(f"mixup/{self.seed}/{self.epoch}/{uid}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        lam = float(_lambdas(1, self.alpha, self.prob, rng)[0])
        return self.ids[int(rng.integers(len(self.ids)))], lam


def mix_waveforms(own, partner, lam):
    """``lam * own + (1 - lam) * partner`` of two ``[S]`` waveforms, the shorter zero-padded."""
    if lam >= 1.0:
        return own
    length = max(own.shape[0], partner.shape[0])
    own = torch.nn.functional.pad(own, (0, length - own.shape[0]))
    partner = torch.nn.functional.pad(partner, (0, length - partner.shape[0]))
    return lam * own + (1.0 - lam) * partner


class RawClip:
    """An input processor that returns the clip's waveform itself, with the real processor's
    ``samples_needed``, ``min_samples`` and ``sample_rate``: ``load_input(path, RawClip(p))`` reads
    exactly the samples ``load_input(path, p)`` would hand to ``p``."""

    def __init__(self, processor):
        self.processor = processor
        for name in ("samples_needed", "min_samples", "sample_rate"):
            if hasattr(processor, name):
                setattr(self, name, getattr(processor, name))

    def __call__(self, wav):
        return wav
