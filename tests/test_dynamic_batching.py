"""Training batches by duration (``dynamic_batching: True``, SpeechBrain's DynamicBatchSampler).

Oracles: the batches themselves (every example once per epoch, each batch within
``max_batch_seconds``, the same batches for the same seed and epoch), the padding of the batches
the Brain's training loader yields, the option checks' messages, and a run killed mid-epoch that
ends as an uninterrupted one (slow).
"""

import re
import sys

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from petl_modules.training.batching import (
    BatchingError,
    bucket_boundaries,
    check_dynamic_batching,
    duration_batch_sampler,
)
from petl_modules.training.brain import ClassificationBrain
from petl_modules.training.compose import ConfigError, compose_hparams, load_hparams, validate_options

from conftest import REPO, run_train
from test_distributed_resume_tracking import KILL_HARNESS, assert_same_run

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"


def utterances(count=60, seed=0):
    """A dataset of ``count`` utterances of 0.5-30 s (``duration``), whose ``inputs`` are zeros
    of that many 16 kHz samples and ``label_index`` 0."""
    generator = torch.Generator().manual_seed(seed)
    seconds = (0.5 + 29.5 * torch.rand(count, generator=generator)).tolist()
    data = {f"u{i}": {"duration": f"{s:.3f}", "wav": f"u{i}.wav"} for i, s in enumerate(seconds)}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("duration")
    @sb.utils.data_pipeline.provides("inputs", "label_index")
    def pipeline(duration):
        yield torch.zeros(round(float(duration) * 16000))
        yield torch.tensor([0])

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "inputs", "label_index"])
    return dataset, dict(zip(data, seconds))


class Lobe:
    """What the sampler reads of a backbone: its input processor (whole utterances, no clip)."""
    input_processor = type("Processor", (), {"samples_needed": None, "sample_rate": 16000})()


def settings(**options):
    return {"max_batch_seconds": 60.0, "num_buckets": 10, "seed": 3, "backbone": Lobe(), **options}


def test_batches_hold_every_utterance_once_within_the_seconds_per_batch():
    dataset, seconds = utterances()
    sampler = duration_batch_sampler(dataset, settings())
    ids = dataset.data_ids
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
        for batch in batches:
            longest = max(seconds[ids[i]] for i in batch)
            assert len(batch) == 1 or len(batch) * longest <= 60.0
        padded = sum(len(b) * max(seconds[ids[i]] for i in b) for b in batches)
        assert 1 - sum(seconds.values()) / padded <= 0.2  # little padding (fixed batches: ~40%)
    sampler.set_epoch(1)
    again = duration_batch_sampler(dataset, settings())
    again.set_epoch(1)
    assert list(again) == list(sampler)  # the same seed and epoch: the same batches (resuming)
    again.set_epoch(2)
    assert list(again) != list(sampler)


def test_buckets_have_equal_counts_and_the_longest_length_last():
    assert bucket_boundaries([1, 2, 3, 4, 5, 6, 7, 8], 4) == [2.75, 4.5, 6.25, 8.0]
    assert bucket_boundaries([2.0] * 5, 3) == [2.0]  # equal lengths: one bucket


def test_clips_count_up_to_their_clip_length():
    dataset, _ = utterances(10)

    class Clipped:
        input_processor = type("Processor", (), {"samples_needed": 32000, "sample_rate": 16000})()

    sampler = duration_batch_sampler(dataset, settings(backbone=Clipped(), max_batch_seconds=8.0))
    assert [len(b) for b in sampler] == [4, 4, 2]  # every clip is 2 s: 4 per batch


def test_the_brains_training_loader_batches_by_duration(tiny_wav2vec2, tmp_path):
    options = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
               "backbone_source": tiny_wav2vec2, "clip_seconds": None, "dynamic_batching": True,
               "max_batch_seconds": 60, "num_buckets": 10, "num_workers": 0}
    hparams = load_hparams(compose_hparams(REPO / "hparams" / "linear.yaml", FSC_YAML, options))
    brain = ClassificationBrain(modules=hparams["modules"], hparams=hparams,
                                run_opts={"device": "cpu", "noprogressbar": True})
    dataset, seconds = utterances()
    loader = brain.make_dataloader(dataset, sb.Stage.TRAIN, **hparams["train_loader_options"])
    assert brain.train_sampler is loader.batch_sampler  # fit sets its epoch
    brain.train_sampler.set_epoch(1)
    batches = list(loader)
    assert len({batch.inputs.data.shape[0] for batch in batches}) > 2  # sizes vary with length
    real = sum(seconds.values()) * 16000
    padded = sum(batch.inputs.data.numel() for batch in batches)
    assert sum(len(batch.id) for batch in batches) == len(dataset)
    assert 1 - real / padded <= 0.2


def test_options_are_checked_before_the_run():
    with pytest.raises(ConfigError, match="max_batch_seconds=0 is out of range: it must be > 0"):
        validate_options({"max_batch_seconds": 0})
    with pytest.raises(ConfigError, match="num_buckets=0 is out of range"):
        validate_options({"num_buckets": 0})
    with pytest.raises(ConfigError, match="dynamic_batching='yes' is not one of False|True"):
        validate_options({"dynamic_batching": "yes"})
    with pytest.raises(BatchingError, match="cache_backbone_outputs=True every training example is"):
        check_dynamic_batching({"dynamic_batching": True, "cache_backbone_outputs": True})
    check_dynamic_batching({"dynamic_batching": False, "cache_backbone_outputs": True})
    with pytest.raises(BatchingError, match="--sampling=class_balanced draws examples by class"):
        check_dynamic_batching({"dynamic_batching": True, "sampling": "class_balanced"})
    with pytest.raises(BatchingError, match="--shards streams the examples"):
        check_dynamic_batching({"dynamic_batching": True, "shards": "/data/shards"})
    check_dynamic_batching({"dynamic_batching": True, "sampling": "random", "shards": None})


def test_a_manifest_without_durations_is_refused_by_name():
    dataset = DynamicItemDataset({"a": {"wav": "a.wav"}})
    with pytest.raises(BatchingError, match="no 'duration' for 'a'"):
        duration_batch_sampler(dataset, settings())


@pytest.mark.slow
def test_run_killed_mid_epoch_with_dynamic_batches_resumes_as_uninterrupted(
        fsc_data, tiny_ast_with_dropout, tmp_path):
    """The recipe with dynamic batches: killed after the second batch past its 3rd intra-epoch
    checkpoint, rerun, it goes on from that checkpoint and ends as the uninterrupted run (the same
    batches in the same order after the DataLoader position)."""
    # 31 training clips of up to 0.64 s, about 4 per batch (2.6 s), a checkpoint every 3 steps.
    options = ["--number_of_epochs=2", "--dynamic_batching=True", "--max_batch_seconds=2.6",
               "--ckpt_interval_steps=3"]
    reference = tmp_path / "uninterrupted"
    run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, reference, *options)
    out = tmp_path / "interrupted"
    killed = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options,
                       check=False, launcher=[sys.executable, "-c", KILL_HARNESS])
    assert killed.returncode == -9 and not (out / "results.json").exists()
    resumed = run_train("FSC", "full_ft", fsc_data, tiny_ast_with_dropout, out, *options)
    assert re.search(r"epoch\(s\) done; epoch \d goes on after its batch \d+", resumed.stdout)
    assert_same_run(out, reference)


@pytest.mark.slow
def test_dynamic_batches_refused_with_the_backbone_cache(fsc_data, tiny_ast, tmp_path):
    proc = run_train("FSC", "linear", fsc_data, tiny_ast, tmp_path / "out", "--dynamic_batching=True",
                     "--cache_backbone_outputs=True", check=False)
    assert proc.returncode != 0
    assert "--cache_backbone_outputs=True every training example is one cached vector" in proc.stdout
