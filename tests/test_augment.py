"""SpecAugment that fits the input (petl_modules/training/augment.py): torchaudio's masks on AST features,
a time mask on the samples of waveform backbones, clear errors otherwise, and an ESC-50 run on a
wav2vec2 checkpoint with the dataset's augmentation."""

import math
import re
from pathlib import Path

import pytest
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from speechbrain.augment.freq_domain import SpectrogramDrop

from petl_modules.backbones import Backbone
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.synthetic import make_dataset
from petl_modules.training.augment import SpecAugment, augment

from conftest import read_results, run_train

REPO = Path(__file__).resolve().parents[1]
ESC50_SHAPE = (500, 128)  # [T, F] of an ESC-50 AST input


def reference_masks(features, freq_mask=24, time_mask=80):
    """The reference's masking, example by example: torchaudio's transforms on ``[1, F, T]``."""
    freqm = torchaudio.transforms.FrequencyMasking(freq_mask)
    timem = torchaudio.transforms.TimeMasking(time_mask)
    out = []
    for example in features:
        spec = timem(freqm(example.transpose(0, 1).unsqueeze(0)))
        out.append(spec.squeeze(0).transpose(0, 1))
    return torch.stack(out)


def masked_widths(masked):
    """``[N, T, F]`` masked ones -> (frequency widths [N], time widths [N]) of the zero bands."""
    zero = masked == 0
    freq = zero.all(dim=1).sum(dim=1)  # bins zero over every frame
    time = zero.all(dim=2).sum(dim=1)  # frames zero over every bin
    return freq, time


def test_spectrogram_masks_are_torchaudios_drawn_per_example():
    features = torch.randn(6, *ESC50_SHAPE)
    torch.manual_seed(7)
    ours = SpecAugment(freq_mask=24, time_mask=80)(features, family="ast")
    torch.manual_seed(7)
    expected = reference_masks(features)
    assert torch.equal(ours, expected)
    # One band of each per example, value 0, drawn independently for each example.
    freq, time = masked_widths(SpecAugment()(torch.ones(64, *ESC50_SHAPE), family="ast"))
    assert (freq < 24).all() and (time < 80).all()
    assert len(set(zip(freq.tolist(), time.tolist()))) > 32


@pytest.mark.slow  # many draws
def test_masked_fraction_is_torchaudios_not_spectrogram_drops():
    """16.2% of the cells on the ESC-50 shape (SpectrogramDrop, which cuts masks at the end,
    masks 15.3%); widths uniform on [0, max) as FrequencyMasking/TimeMasking draw them."""
    torch.manual_seed(0)
    augmentation = SpecAugment()
    freq, time = [], []
    for _ in range(10):
        f, t = masked_widths(augmentation(torch.ones(100, *ESC50_SHAPE), family="ast"))
        freq.append(f)
        time.append(t)
    freq, time = torch.cat(freq).double(), torch.cat(time).double()
    fraction = (1 - (1 - freq / 128) * (1 - time / 500)).mean().item()
    # Exact expectation: widths floor(U * max), start uniform where the mask fits.
    expected = 1 - (1 - (23 / 2) / 128) * (1 - (79 / 2) / 500)
    assert fraction == pytest.approx(expected, abs=0.004)
    assert abs(fraction - 0.153) > 0.005
    for widths, top in ((freq, 24), (time, 80)):
        assert widths.min() == 0 and widths.max() == top - 1  # never top or wider
        assert widths.mean().item() == pytest.approx((top - 1) / 2, rel=0.05)


def test_masks_come_from_torchs_global_generator():
    augmentation = SpecAugment()
    features = torch.randn(3, *ESC50_SHAPE)
    state = torch.get_rng_state()
    first = augmentation(features, family="ast")
    torch.set_rng_state(state)  # what a resumed run's RandomState restores
    assert torch.equal(augmentation(features, family="ast"), first)
    assert not torch.equal(augmentation(features, family="ast"), first)


def test_waveforms_get_one_time_mask_within_their_valid_samples():
    waveforms = torch.ones(3, 32000)
    lengths = torch.tensor([1.0, 0.5, 0.25])
    torch.manual_seed(3)
    masked = SpecAugment(freq_mask=24, time_mask=80)(waveforms, lengths, family="wav2vec2")
    assert masked.shape == waveforms.shape
    # The same draws as torchaudio's time masking of up to 80 x 10 ms of samples, per example.
    torch.manual_seed(3)
    for row, valid in zip(masked, (32000, 16000, 8000)):
        expected = torchaudio.functional.mask_along_axis(torch.ones(1, valid), 12800, 0.0, axis=1)[0]
        assert torch.equal(row[:valid], expected)
        assert (row[valid:] == 1).all()  # padding untouched
        zeros = (row == 0).nonzero().flatten()
        if len(zeros):
            assert zeros[-1] - zeros[0] + 1 == len(zeros) < 12800  # one contiguous span
    off = SpecAugment(waveform="off")(waveforms, lengths, family="hubert")
    assert torch.equal(off, waveforms)


@pytest.mark.parametrize("family", ["ast", "wav2vec2"])
def test_brain_call_fits_the_backbone_family(family, tiny_ast, tiny_wav2vec2):
    source = tiny_ast if family == "ast" else tiny_wav2vec2
    model = AdaptedBackbone(Backbone(source, max_frames=64, clip_seconds=1.0), trainable=["biases"])
    lobe = model.adapted_model
    inputs = torch.stack([lobe.input_processor(torch.randn(16000)) for _ in range(4)])
    lengths = torch.ones(4)
    torch.manual_seed(1)
    masked = augment(SpecAugment(), inputs, lengths, model)
    assert masked.shape == inputs.shape and (masked == 0).any()
    if family == "ast":
        assert inputs.dim() == 3
        freq, time = masked_widths(torch.where(masked == 0, 0.0, 1.0))
        assert ((freq > 0) | (time > 0)).any()
    else:
        assert inputs.dim() == 2
        assert ((masked == 0).sum(dim=1) < 12800).all()
    model.train()
    hidden, _ = model(masked, lengths)
    assert torch.isfinite(hidden).all()


def test_input_of_another_kind_is_a_clear_error(tiny_ast, tiny_wav2vec2):
    ast = AdaptedBackbone(Backbone(tiny_ast, max_frames=64), trainable=["biases"])
    with pytest.raises(ValueError, match=r"features \[B, T, F\] from the ast backbone .*--augmentation=null"):
        augment(SpecAugment(), torch.randn(2, 16000), None, ast)
    # Any other augmentation (here the former SpectrogramDrop) that cannot take waveforms: the
    # error names the option and the backbone, not a bare traceback from inside it.
    wav2vec2 = AdaptedBackbone(Backbone(tiny_wav2vec2), trainable=["biases"])
    drop = torch.nn.Sequential(SpectrogramDrop(drop_length_high=24, drop_count_low=1,
                                               drop_count_high=1, dim=2))
    with pytest.raises(ValueError, match=r"'augmentation'.*wav2vec2 backbone.*--augmentation=null"):
        augment(drop, torch.randn(2, 16000), None, wav2vec2)
    with pytest.raises(ValueError, match="--waveform_augmentation='noise'.*time_mask, off"):
        SpecAugment(waveform="noise")
    with pytest.raises(ValueError, match="--freq_mask must be a whole number"):
        SpecAugment(freq_mask=-1)


@pytest.mark.parametrize("dataset", ["ESC50/esc50.yaml", "UrbanSound8K/urbansound8k.yaml"])
def test_dataset_yamls_build_the_fitting_specaugment(dataset):
    text = (REPO / "recipes" / dataset).read_text()
    hparams = load_hyperpyyaml(text, overrides={"time_mask": 60})
    augmentation = hparams["augmentation"]
    assert isinstance(augmentation, SpecAugment)
    assert (augmentation.freq_mask, augmentation.time_mask, augmentation.waveform) == (24, 60, "time_mask")
    assert load_hyperpyyaml(text, overrides={"waveform_augmentation": "off"})["augmentation"].waveform == "off"


@pytest.mark.slow
def test_esc50_on_a_wav2vec2_checkpoint_trains_with_the_waveform_augmentation(tiny_wav2vec2, tmp_path):
    data = make_dataset("ESC50", tmp_path / "data", per_class=1, seconds=1.0)
    out = tmp_path / "out"
    proc = run_train("ESC50", "linear", data, tiny_wav2vec2, out, "--fold=1", "--max_frames=100")
    results = read_results(out)
    assert results["backbone"] and len(results["folds"]) == 1
    log = (out / "fold_1" / "train_log.txt").read_text()
    losses = [float(v) for v in re.findall(r"train loss: ([-+0-9.e]+|nan|inf)", log)]
    assert losses and all(math.isfinite(v) for v in losses), log
    assert "SpecAugment" in (out / "fold_1" / "hyperparams.yaml").read_text()
    assert "Traceback" not in proc.stdout


def test_a_short_clip_is_masked_like_its_padded_ast_input_not_silenced():
    """The waveform mask is drawn over the clip every utterance is padded to (as AST's over
    max_frames), so a 0.3 s clip among 4 s clips is rarely touched, never wholly silenced."""
    torch.manual_seed(0)
    augment = SpecAugment(time_mask=80)
    short = torch.ones(1, 4800)  # 0.3 s of 16 kHz
    fractions = []
    for _ in range(300):
        out = augment(short, torch.ones(1), family="wav2vec2", clip_samples=64000)
        fractions.append(float((out == 0).float().mean()))
    assert max(fractions) < 1.0
    assert sum(fractions) / len(fractions) < 0.15
