"""Training-time augmentation that fits the backbone's input.

``SpecAugment`` is the datasets' augmentation (ESC-50, UrbanSound8K: ``augmentation`` in the
dataset yaml). What it does depends on the backbone's input kind, read from the lobe
(``Backbone.input_kind``):

- spectrogram backbones (e.g. AST, inputs ``[B, T, F]``): one frequency mask of up to ``freq_mask``
  bins and one time mask of up to ``time_mask`` frames per example, drawn independently for each
  example with torchaudio's ``FrequencyMasking`` / ``TimeMasking`` themselves, on ``[1, F, T]``
  as the reference did, masked value 0 (the normalised features' mean);
- waveform backbones (e.g. wav2vec2, HuBERT, WavLM, inputs ``[B, S]``): no frequency mask (their CNN
  has no mel axis); one time mask of up to ``time_mask`` frames of 10 ms, as samples
  (80 frames = 0.8 s), drawn by torchaudio's masking function over the clip every utterance is
  padded to (``clip_seconds``; as AST's over ``max_frames``) and set to 0 (silence: the waveform is
  zero-mean).

Every draw comes from torch's global CPU generator (as torchaudio's), which the checkpoints save
and restore (``petl_modules.training.checkpointing.RandomState``): a resumed run masks as an uninterrupted
one.

``augment`` is what the Brain calls: it passes the lobe to augmentations of this module and turns
a failure of any other callable (e.g. a SpeechBrain augmentation from a user's yaml) into an error
that names the ``augmentation`` option and the backbone.
"""

import torch
import torchaudio

from petl_modules.backbones import FAMILIES

FRAME_SECONDS = 0.01  # the time mask is counted in AST frames (10 ms shift)
WAVEFORM_MODES = ("time_mask", "off")


def backbone_lobe(model):
    """The backbone lobe inside ``model`` (an ``AdaptedBackbone``, maybe DDP-wrapped), or None."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "adapted_model", model)


def describe(lobe):
    """``"the <family> backbone '<source>'"`` for error messages."""
    family = getattr(lobe, "family", None) or type(lobe).__name__
    source = getattr(lobe, "source", None)
    return f"the {family} backbone" + (f" '{source}'" if source else "")


def family_input_kind(family):
    """The ``input_kind`` of the lobes of ``family`` or of a registered ``model_type`` (e.g.
    ``ast`` -> ``spectrogram``, ``hubert`` -> ``waveform``)."""
    kinds = {lobe.input_kind for model_type, lobe in FAMILIES.items()
             if family in (lobe.family, model_type)}
    if len(kinds) != 1:
        known = sorted({lobe.family for lobe in FAMILIES.values()})
        raise ValueError(f"Unknown backbone family {family!r}: known families are {known}.")
    return kinds.pop()


class SpecAugment(torch.nn.Module):
    """SpecAugment as the reference (torchaudio masks, one of each per example), by input kind.

    Arguments
    ---------
    freq_mask : int
        Spectrograms: frequency mask width drawn uniformly in [0, freq_mask) bins (0: none).
    time_mask : int
        Time mask width drawn uniformly in [0, time_mask) frames of 10 ms (0: none).
    waveform : str
        Waveform backbones: ``time_mask`` (default; a time mask of the same duration on the
        samples) or ``off`` (waveforms pass unchanged).

    Example
    -------
    >>> augment = SpecAugment(freq_mask=24, time_mask=80)
    >>> fbank = torch.randn(2, 500, 128)
    >>> augment(fbank, input_kind="spectrogram").shape
    torch.Size([2, 500, 128])
    >>> augment(torch.randn(2, 16000), input_kind="waveform").shape
    torch.Size([2, 16000])
    """

    def __init__(self, freq_mask=24, time_mask=80, waveform="time_mask"):
        super().__init__()
        for name, value in (("freq_mask", freq_mask), ("time_mask", time_mask)):
            if int(value) != value or value < 0:
                raise ValueError(f"--{name} must be a whole number >= 0, got {value!r}.")
        if waveform not in WAVEFORM_MODES:
            raise ValueError(
                f"--waveform_augmentation={waveform!r} is not known: use one of {', '.join(WAVEFORM_MODES)}."
            )
        self.freq_mask = int(freq_mask)
        self.time_mask = int(time_mask)
        self.waveform = waveform
        self.frequency_masking = torchaudio.transforms.FrequencyMasking(self.freq_mask)
        self.time_masking = torchaudio.transforms.TimeMasking(self.time_mask)

    def forward(self, inputs, lengths=None, family=None, sample_rate=16000, backbone="the backbone",
                clip_samples=None, input_kind=None):
        """``inputs`` ``[B, T, F]`` features or ``[B, S]`` waveforms -> the same shape, masked.

        ``lengths [B]`` (relative) keep a waveform's padding unmasked; ``clip_samples`` is the
        span its time mask is drawn over (see ``mask_waveforms``); ``input_kind``
        (``spectrogram`` | ``waveform``, the lobe's) says what the inputs are (None: the kind of
        the lobes of ``family``, e.g. ``ast``; neither: from the rank); ``backbone`` names the
        backbone in errors.
        """
        if input_kind is None and family is not None:
            input_kind = family_input_kind(family)
        if input_kind not in (None, "spectrogram", "waveform"):
            raise ValueError(f"input_kind must be 'spectrogram' or 'waveform', got {input_kind!r}.")
        waveform = input_kind == "waveform" or (input_kind is None and inputs.dim() == 2)
        if waveform and inputs.dim() == 2:
            return self.mask_waveforms(inputs, lengths, sample_rate, clip_samples)
        if not waveform and inputs.dim() == 3:
            return self.mask_spectrograms(inputs)
        expected = "waveforms [B, S]" if waveform else "features [B, T, F]"
        raise ValueError(
            f"augmentation (SpecAugment) expected {expected} from {backbone}, got a tensor of "
            f"shape {list(inputs.shape)}. Use --augmentation=null to train without augmentation."
        )

    def mask_spectrograms(self, features):
        """``[B, T, F]`` -> ``[B, T, F]``: per example a frequency then a time mask (value 0)."""
        masked = []
        for example in features:
            spec = example.transpose(0, 1).unsqueeze(0)  # [1, F, T], as the reference
            spec = self.time_masking(self.frequency_masking(spec))
            masked.append(spec.squeeze(0).transpose(0, 1))
        return torch.stack(masked)

    def mask_waveforms(self, waveforms, lengths=None, sample_rate=16000, clip_samples=None):
        """``[B, S]`` -> ``[B, S]``: per example a time mask of up to ``time_mask`` x 10 ms of
        samples, set to 0. As AST's mask is drawn over its ``max_frames`` input (padding
        included), the mask is drawn over the clip every utterance is padded to (``clip_samples``,
        the lobe's); with whole utterances (None) over the example's valid samples
        (``lengths [B]`` relative; None: all). A short clip is thus masked as much as its AST
        features would be, not silenced."""
        width = round(self.time_mask * FRAME_SECONDS * sample_rate)
        if self.waveform == "off" or width < 1:
            return waveforms
        total = waveforms.shape[1]
        if lengths is None:
            valid = [total] * waveforms.shape[0]
        else:
            valid = torch.round(lengths.detach().float().cpu() * total).long().clamp(0, total).tolist()
        masked = waveforms.clone()
        for row, samples in zip(masked, valid):
            span = max(samples, int(clip_samples)) if clip_samples else samples
            if samples > 0:
                # [1, span] with the samples on the last axis: torchaudio's time axis.
                clip = torch.nn.functional.pad(row[:samples], (0, span - samples)).unsqueeze(0)
                row[:samples] = torchaudio.functional.mask_along_axis(
                    clip, width, 0.0, axis=1).squeeze(0)[:samples]
        return masked


def augment(augmentation, inputs, lengths, model):
    """The Brain's call: ``inputs`` (``[B, T, F]`` or ``[B, S]``) augmented for ``model``'s lobe.

    A ``SpecAugment`` gets the lobe's input kind and sample rate; any other callable gets the inputs
    alone, and an error it raises is re-raised naming the ``augmentation`` option and the backbone.
    """
    lobe = backbone_lobe(model)
    name = describe(lobe)
    if isinstance(augmentation, SpecAugment):
        processor = getattr(lobe, "input_processor", None)
        return augmentation(inputs, lengths, input_kind=getattr(lobe, "input_kind", None),
                            sample_rate=getattr(processor, "sample_rate", 16000), backbone=name,
                            clip_samples=getattr(lobe, "clip_samples", None))
    try:
        return augmentation(inputs)
    except (ValueError, RuntimeError, TypeError, IndexError) as err:
        raise ValueError(
            f"The augmentation ('augmentation' in the yaml: {type(augmentation).__name__}) failed "
            f"on the inputs of {name}, of shape {list(inputs.shape)}: {err}. Give an augmentation "
            "for this input kind, or --augmentation=null to train without one."
        ) from err
