"""The data pipelines of a run's datasets: one input pipeline, whatever clip a row stands for, and
the label pipeline.

Every row is a clip of a recording (``petl_modules.model.clip.Clip``, ``windows.row_clip``): its
file's first clip, a segment of a long file, or one of the sliding windows of a validation or
test file (``windows.window_dataset``). Training takes a random clip within it at every epoch
(``train_crop: random``, ``windows.TrainCrop``) and may mix its audio with a partner clip's
(``mixup: waveform``, ``mixup.WaveformMixup``). ``ClipsOf`` says how a row becomes a clip;
``add_pipelines`` puts the same input pipeline on every split with it.
"""

import speechbrain as sb

from petl_modules.model.task import Task
from petl_modules.training.mixup import RawClip, mix_waveforms
from petl_modules.training.windows import WINDOW_KEYS, is_window_dataset, row_clip


class ClipsOf:
    """How a row of a dataset becomes the clip it reads: ``clips(uid)`` is the ``Clip`` of row
    ``uid`` of ``rows`` (``{id: fields}``) at ``rate``, cropped at random within it by ``crop``
    (a ``TrainCrop``; None: the clip itself, from its start)."""

    def __init__(self, rows, rate=16000, crop=None):
        self.rows, self.rate, self.crop = rows, rate, crop

    def __call__(self, uid):
        clip = row_clip(self.rows[uid], self.rate)
        return clip if self.crop is None else clip.crop(self.crop(uid))


def input_pipeline(clips, processor, mixup=None, soft_target=None):
    """The dynamic item ``inputs`` of a dataset: the ``processor``'s features of each row's clip
    (``clips``, a ``ClipsOf``). With ``mixup`` (``WaveformMixup``) the clip's audio is mixed with
    its partner's before the features, and the item also provides ``mixed_targets`` (the mix of
    ``soft_target(uid)`` of both)."""
    if mixup is None:
        @sb.utils.data_pipeline.takes("id")
        @sb.utils.data_pipeline.provides("inputs")
        def pipeline(uid):
            return clips(uid).read(processor)  # reads only what the model uses
        return pipeline
    raw = RawClip(processor)

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("inputs", "mixed_targets")
    def mixed(uid):
        partner, lam = mixup(uid)
        own = clips(uid).read(raw)
        if lam >= 1.0:
            yield processor(own)
            yield soft_target(uid)
            return
        yield processor(mix_waveforms(own, clips(partner).read(raw), lam))
        yield lam * soft_target(uid) + (1.0 - lam) * soft_target(partner)
    return mixed


def label_pipeline(task, encoder):
    """The dynamic item of the ``task``'s target (``label_index``; multi-label: ``targets``)."""
    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides(task.target_key)
    def pipeline(label):
        return task.target(label, encoder)
    return pipeline


def add_pipelines(datasets, input_processor, encoder, train_crop=None, task=None,
                  waveform_mixup=None):
    """Adds ``inputs`` (features of each row's clip: ``ClipsOf``) and the ``task``'s target
    (``label_index``; multi-label: ``targets``, multi-hot) to every dataset of
    ``{split: dataset}``.

    The training split takes a random clip per epoch with ``train_crop`` (``TrainCrop``, kept as
    the dataset's ``train_crop``, where the Brain sets its epoch); a dataset of sliding windows
    (``window_dataset``) also outputs its ``WINDOW_KEYS`` (file id, start and end). With
    ``waveform_mixup`` (``WaveformMixup``) each training clip's audio is mixed with its partner's
    before the features, and the training batches also hold ``mixed_targets``.
    """
    rate = getattr(input_processor, "sample_rate", 16000)
    task = task or Task.of("single_label")
    for split, dataset in datasets.items():
        keys = ["id", "inputs", task.target_key]
        train = split == "train"
        windows = is_window_dataset(dataset)
        crop = train_crop if train and not windows else None
        clips = ClipsOf(dataset.data, rate, crop)
        if train and waveform_mixup is not None:
            dataset.add_dynamic_item(input_pipeline(clips, input_processor, waveform_mixup,
                                                    _soft_targets(dataset.data, task, encoder)))
            keys.append("mixed_targets")
            dataset.epoch_hooks = [waveform_mixup]
        else:
            dataset.add_dynamic_item(input_pipeline(clips, input_processor))
            keys += list(WINDOW_KEYS) if windows else []
        if crop is not None:
            dataset.train_crop = crop
        dataset.add_dynamic_item(label_pipeline(task, encoder))
        dataset.set_output_keys(keys)


def _soft_targets(rows, task, encoder):
    """``soft(uid)``: the ``[C]`` soft target of row ``uid`` (one-hot, or multi-hot)."""
    def soft(uid):
        target = task.target(rows[uid]["label"], encoder)
        return task.soft_targets(target[None], len(encoder))[0]
    return soft
