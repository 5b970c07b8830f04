"""Which training clips an epoch draws: every clip once in a seeded order, or class-balanced.

``sampling`` (``petl_modules/training/recipe.yaml``, every recipe):

- ``random`` (default): every training clip once per epoch, in an order seeded by (seed, epoch)
  (SpeechBrain's ``ReproducibleRandomSampler``; under DDP its ``DistributedSampler``);
- ``class_balanced``: as many draws per epoch as there are training clips, with replacement, each
  clip drawn with a weight from the label frequencies of the training split, as AST trains on the
  full AudioSet: a class of ``n`` training clips weighs ``1000 / (n + 0.01)`` and a clip the sum
  of its classes' weights (``class_balanced_weights``), so every class is drawn about as often,
  however rare. Drawn by SpeechBrain's ``ReproducibleWeightedRandomSampler`` (seeded by seed +
  epoch; under DDP wrapped in its ``DistributedSamplerWrapper``), or from tar shards by
  ``petl_modules.training.shards`` (the same draws, read in shard order).

The weights never change the validation or test data, nor the loss (``class_weights`` does that).
"""

import logging

import numpy as np

from petl_modules.training import metrics

logger = logging.getLogger(__name__)

SAMPLINGS = ("random", "class_balanced")
CLASS_WEIGHT_SCALE = 1000.0  # the weight of a class is CLASS_WEIGHT_SCALE / (its clips + 0.01)


def class_balanced_weights(label_indices, n_classes):
    """The drawing weight of every clip: the sum over its classes of ``1000 / (n_c + 0.01)``,
    ``n_c`` the clips of class ``c`` among these.

    Arguments
    ---------
    label_indices : list of list of int
        The class indices of every clip (one each for single-label data).
    n_classes : int

    Returns
    -------
    numpy.ndarray
        ``[N]`` float64 weights (not normalised).

    Example
    -------
    >>> w = class_balanced_weights([[0], [0], [0], [1]], 2)
    >>> round(float(w[3] / w[0]), 2)  # the rare class's clip is drawn 3 times as often
    3.0
    """
    lengths = np.fromiter((len(labels) for labels in label_indices), dtype=np.int64,
                          count=len(label_indices))
    flat = np.fromiter((c for labels in label_indices for c in labels), dtype=np.int64,
                       count=int(lengths.sum()))
    return weights_of_flat_labels(flat, lengths, n_classes)


def weights_of_flat_labels(flat, lengths, n_classes):
    """``class_balanced_weights`` of labels given flat: the class indices of every clip one after
    the other (``flat``) and how many each clip has (``lengths``)."""
    counts = np.bincount(flat, minlength=int(n_classes)).astype(np.float64)
    class_weight = CLASS_WEIGHT_SCALE / (counts + 0.01)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    per_label = class_weight[flat]
    weights = np.zeros(len(lengths))
    nonempty = lengths > 0
    weights[nonempty] = np.add.reduceat(per_label, starts[nonempty]) if len(per_label) else 0.0
    return weights


def dataset_label_indices(dataset, class_names, multilabel):
    """The class indices of every row of a ``DynamicItemDataset``, in ``data_ids`` order, read
    from its ``label`` column (no audio, no pipeline)."""
    index = {name: k for k, name in enumerate(class_names)}
    return [[index[name] for name in metrics.labels_of(dataset.data[uid]["label"], multilabel)]
            for uid in dataset.data_ids]


def use_class_balanced_sampling(dataset, class_names, multilabel):
    """Gives the training ``dataset`` its clips' drawing weights (``dataset.sample_weights``,
    which ``ClassificationBrain.make_dataloader`` turns into the weighted sampler) and logs how
    much more often the rarest class is drawn than under random sampling."""
    labels = dataset_label_indices(dataset, class_names, multilabel)
    dataset.sample_weights = class_balanced_weights(labels, len(class_names))
    log_balance(dataset.sample_weights, labels, class_names)


def log_balance(weights, label_indices, class_names):
    """Logs the expected draws per epoch of the rarest and the most frequent class."""
    flat = [c for labels in label_indices for c in labels]
    counts = np.bincount(flat, minlength=len(class_names))
    share = np.zeros(len(class_names))
    np.add.at(share, flat, np.repeat(weights / weights.sum(), [len(x) for x in label_indices]))
    present = np.flatnonzero(counts)
    rare, common = present[np.argmin(counts[present])], present[np.argmax(counts[present])]
    total = len(label_indices)
    logger.info(
        f"sampling=class_balanced: {total} draws per epoch, with replacement; class "
        f"'{class_names[rare]}' ({counts[rare]} clips) is expected {share[rare] * total:.1f} times "
        f"per epoch, '{class_names[common]}' ({counts[common]} clips) {share[common] * total:.1f}.")


def weighted_sampler(weights, seed):
    """SpeechBrain's ``ReproducibleWeightedRandomSampler`` over ``weights``: ``len(weights)`` draws
    with replacement per epoch, seeded by ``seed`` + epoch (``set_epoch``)."""
    from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

    return ReproducibleWeightedRandomSampler(np.asarray(weights, dtype=np.float64).tolist(),
                                             num_samples=len(weights), replacement=True,
                                             seed=int(seed))
