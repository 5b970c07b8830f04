"""Linear probing from cached backbone outputs (``cache_backbone_outputs: True``, hparams/linear.yaml).

In linear probing the backbone is frozen (and in eval mode): only its final LayerNorm and the head
train. The backbone's output before the final LayerNorm is therefore the same at every epoch, and
the pooled output can be computed once per utterance. The cache is exact, not an approximation,
and keeps the final LayerNorm trainable: with ``n_t = (x_t - mean(x_t)) / sqrt(var(x_t) + eps)``
the per-token normalised vector, ``LN(x_t) = gamma * n_t + beta``, so

- mean pooling: ``mean_t LN(x_t) = gamma * mean_t(n_t) + beta``: the cache holds ``mean_t(n_t)``
  (over the valid tokens when the lobe gives a mask);
- cls pooling: ``LN(x_0) = gamma * n_0 + beta``: the cache holds ``n_0``.

One vector ``[D]`` per utterance; training then runs ``gamma * cached + beta`` and the head
(``head_input``), far cheaper than the backbone. A lobe without a final LayerNorm (post-LN
wav2vec2) caches the pooled output itself.

The weighted layer sum (``hparams/layer_sum.yaml``, ``petl_modules.methods.layer_sum``) is cached
the same way: pooling is linear, so ``pool(sum_l w_l h_l) = sum_l w_l pool(h_l)``, and the cache
holds ``pool(h_l)`` for every layer, ``[L + 1, D]`` per utterance; training runs the softmax-weighted
sum of the cached vectors and the head.

Where it is wrong, the cache is refused (``check_cacheable``) before any data is read: data
augmentation and random training crops (the inputs change every epoch), any trainable backbone parameter besides the final
LayerNorm or any inserted PETL module (another method), poolings other than mean/cls, and
waveform lobes whose output depends on how an utterance is padded in its batch.

The cache lives beside the manifests, ``<manifest_folder>/backbone_cache/<key>.pt`` (+ ``.json``
with the settings), keyed by the backbone's weight fingerprint
(``petl_modules.backbones.base.Backbone.fingerprint``) and every setting that changes the cached
vectors (input features, position embeddings, attention implementation, pooling). It maps audio
files (the ``wav`` field the features are computed from) to vectors, so folds and later runs on
the same manifests reuse it and only compute what is missing. The sliding windows of validation and
test (``eval_windows: sliding``) are cached one vector per window, keyed ``<file>@<start sample>``
(``clip_key`` of the window's ``Clip``; the first window, which is the first clip, under the
file's name).
"""

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import run_on_main

from petl_modules.contract import PETLModule
from petl_modules.methods.layer_sum import WeightedLayerSum, weighted_sum
from petl_modules.training.windows import WINDOW_KEYS, is_window_dataset, row_clip

logger = logging.getLogger(__name__)

CACHE_FOLDER = "backbone_cache"
CACHE_FORMAT = 1
CACHED_METHODS = ("linear", "layer_sum")
CACHEABLE_POOLINGS = ("mean", "cls")


class CacheConfigError(ValueError):
    """``cache_backbone_outputs: True`` in a set-up where cached outputs would be wrong."""


# ==================================================================== when the cache is exact
def check_cacheable(hparams):
    """Raises ``CacheConfigError`` naming every reason the cache would change the results.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters of a run with ``cache_backbone_outputs: True``.
    """
    reasons = []
    method = hparams.get("method")
    if method not in CACHED_METHODS:
        reasons.append(
            f"it is for linear probing and the layer sum only (method '{method}' trains inside the "
            "backbone, so its outputs change at every step)"
        )
    if hparams.get("augmentation") is not None:
        reasons.append(
            "data augmentation is on (the inputs differ at every epoch): add --augmentation=null"
        )
    if hparams.get("train_crop", "first") != "first":
        reasons.append(
            f"train_crop={hparams['train_crop']} takes another clip of every file at each epoch: "
            "add --train_crop=first"
        )
    if hparams.get("apply_spec_augment"):
        reasons.append("apply_spec_augment=True masks the backbone's features at random")
    if hparams.get("mixup"):
        reasons.append(f"mixup={hparams['mixup']} mixes the inputs at random: add --mixup=null")
    if hparams.get("shards"):
        reasons.append("the cache is built from the audio files, not from tar shards: drop --shards")
    petl_model = hparams["petl_model"]
    inserted = sorted({type(m).__name__ for m in petl_model.modules() if isinstance(m, PETLModule)})
    if inserted:
        reasons.append(f"PETL modules are inserted in the backbone ({', '.join(inserted)})")
    lobe = petl_model.adapted_model
    final = set(final_norm_parameter_names(lobe))
    extra = sorted(n for n, p in lobe.named_parameters() if p.requires_grad and n not in final)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        reasons.append(f"backbone parameters besides the final LayerNorm train ({shown})")
    pooling = hparams.get("pooling", "mean")
    if pooling not in CACHEABLE_POOLINGS:
        reasons.append(f"pooling '{pooling}' is not cacheable (use mean or cls)")
    padding = lobe.padding_dependence() if hasattr(lobe, "padding_dependence") else None
    if padding:
        reasons.append(padding)
    if reasons:
        raise CacheConfigError(
            "cache_backbone_outputs=True is refused: " + "; ".join(reasons) + ". Run without it "
            "(--cache_backbone_outputs=False) or change the options named."
        )


def final_norm_of(lobe):
    """The lobe's final LayerNorm, or None (post-LN wav2vec2 models have none)."""
    found = lobe.modules_at_optional("final_norm")
    return found[0][1] if found else None


def final_norm_parameter_names(lobe):
    """Parameter names (relative to the lobe) of its final LayerNorm."""
    return [f"{name}.{p}" for name, module in lobe.modules_at_optional("final_norm")
            for p, _ in module.named_parameters()]


# ==================================================================== the math
@torch.no_grad()
def normalised_pooled(petl_model, classifier, inputs, lengths=None):
    """What the cache stores for a batch: ``[B, D]`` pooled per-token normalised vectors.

    Runs the backbone, takes the input ``x`` of its final LayerNorm (a forward pre-hook),
    normalises each token without the affine part, and pools it as ``classifier`` does.
    Without a final LayerNorm, the pooled output itself. The layer sum: ``[B, L + 1, D]``, every
    layer's state pooled.
    """
    if isinstance(petl_model, WeightedLayerSum):
        states, mask = petl_model.states(inputs, lengths)
        return torch.stack([classifier.pool(state, mask) for state in states], dim=1)
    lobe = petl_model.adapted_model
    norm = final_norm_of(lobe)
    captured = {}
    handle = None
    if norm is not None:
        handle = norm.register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    try:
        hidden, mask = petl_model(inputs, lengths)
    finally:
        if handle is not None:
            handle.remove()
    if norm is not None:
        x = captured["x"]
        hidden = F.layer_norm(x, x.shape[-1:], eps=norm.eps)
    return classifier.pool(hidden, mask)


def head_input(petl_model, cached):
    """``[B, D]`` cached vectors -> ``[B, 1, D]`` tokens for the classifier: the final
    LayerNorm's affine part ``gamma * cached + beta`` (trainable), as in the uncached model. The
    layer sum: ``[B, L + 1, D]`` -> their softmax-weighted sum."""
    if isinstance(petl_model, WeightedLayerSum):
        return weighted_sum(petl_model.layer_weights, cached.transpose(0, 1)).unsqueeze(1)
    norm = final_norm_of(petl_model.adapted_model)
    out = cached
    if norm is not None:
        if norm.weight is not None:
            out = out * norm.weight
        if norm.bias is not None:
            out = out + norm.bias
    return out.unsqueeze(1)


# ==================================================================== the file
def cache_settings(hparams):
    """Everything the cached vectors depend on (the cache key is their hash)."""
    lobe = hparams["backbone"]
    return {
        "format": CACHE_FORMAT,
        "backbone_source": str(hparams["backbone_source"]),
        "fingerprint": lobe.fingerprint()["sha256"],
        "family": lobe.family,
        "input": lobe.input_processor.config(),
        "position_embeddings": getattr(lobe, "position_embeddings", None),
        "attn_implementation": str(hparams.get("attn_implementation")),
        "pooling": hparams.get("pooling", "mean"),
        "layers": isinstance(hparams["petl_model"], WeightedLayerSum),  # every layer's vector
    }


def cache_path(hparams, settings):
    """``<manifest_folder>/backbone_cache/<key>.pt`` of ``settings``."""
    identity = {k: v for k, v in settings.items() if k != "backbone_source"}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(hparams["manifest_folder"]) / CACHE_FOLDER / f"{key}.pt"


def load_cache(path):
    """``{wav: vector [D] (the layer sum: [L + 1, D])}`` of a cache file (empty when it does not
    exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles objects
        wavs, vectors = saved["wavs"], saved["vectors"]
        if not (isinstance(wavs, list) and all(isinstance(w, str) for w in wavs)
                and isinstance(vectors, torch.Tensor) and vectors.dim() in (2, 3)
                and vectors.is_floating_point() and len(vectors) == len(wavs)):
            raise ValueError("not a list of file names and a [N, (L + 1,) D] float tensor of their "
                             "vectors")
    except Exception as err:  # damaged, crafted (pickled objects) or of another layout
        logger.warning(f"Ignoring the backbone output cache {path}: it cannot be used "
                       f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); its vectors "
                       "are computed again.")
        return {}
    return dict(zip(wavs, vectors))


def _save_cache(path, vectors, settings):
    path.parent.mkdir(parents=True, exist_ok=True)
    wavs = sorted(vectors)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save({"wavs": wavs, "vectors": torch.stack([vectors[w] for w in wavs])}, tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(settings, indent=2) + "\n")


def build_cache(path, settings, petl_model, classifier, datasets, batch_size=8, num_workers=0,
                device="cpu"):
    """Computes the vectors of the utterances of ``datasets`` missing from the cache file.

    Arguments
    ---------
    path : Path
        The cache file (``cache_path``); created or extended.
    settings : dict
        ``cache_settings`` (written beside it, for humans).
    petl_model, classifier : torch.nn.Module
        The run's modules (the backbone runs in eval mode, without gradients).
    datasets : iterable of DynamicItemDataset
        With the ``wav`` field and the ``inputs`` dynamic item (features).

    Returns
    -------
    int
        The number of utterances computed (0: everything was cached).
    """
    vectors = load_cache(path)
    todo = []
    for dataset in datasets:
        missing = {uid for uid in dataset.data_ids if row_key(dataset.data[uid]) not in vectors}
        todo.append(dataset.filtered_sorted(key_test={"id": lambda uid: uid in missing}))
    if not sum(len(d) for d in todo):
        return 0
    was_training = petl_model.training
    petl_model.eval()
    computed = 0
    # Features run in DataLoader workers, as in training; the RNG is left as it was so that a
    # cached run draws the same shuffling as an uncached one.
    with torch.random.fork_rng(devices=[]):
        for dataset in todo:
            if not len(dataset):
                continue
            with dataset.output_keys_as(["id", "inputs"]):
                loader = sb.dataio.dataloader.make_dataloader(
                    dataset, batch_size=batch_size, num_workers=num_workers)
                for batch in loader:
                    inputs, lengths = batch.inputs
                    pooled = normalised_pooled(petl_model, classifier, inputs.to(device),
                                               lengths.to(device)).float().cpu()
                    for uid, vector in zip(batch.id, pooled):
                        key = row_key(dataset.data[uid])
                        if key not in vectors:
                            computed += 1
                        vectors[key] = vector.clone()
    petl_model.train(was_training)
    _save_cache(path, vectors, settings)
    return computed


def use_backbone_cache(hparams, datasets, device="cpu", target="label_index"):
    """Builds (main process) or loads the cache of ``datasets`` and switches them to it.

    Each dataset gets the dynamic item ``cached`` (the utterance's vector) and the output keys
    ``id``, ``cached`` and ``target`` (``label_index``, or ``targets`` for multi-label):
    features and backbone no longer run during training.
    ``ClassificationBrain`` reads ``cached`` when ``cache_backbone_outputs`` is on.

    Arguments
    ---------
    hparams : dict
        The run's hyperparameters (``check_cacheable`` must pass).
    datasets : dict
        ``{split: DynamicItemDataset}`` with ``wav``, ``inputs`` and ``label_index``.
    """
    check_cacheable(hparams)
    settings = cache_settings(hparams)
    path = cache_path(hparams, settings)
    loader_options = hparams.get("eval_loader_options", {})

    def build():
        count = build_cache(
            path, settings, hparams["petl_model"].to(device), hparams["classifier"],
            datasets.values(), batch_size=loader_options.get("batch_size", 8),
            num_workers=loader_options.get("num_workers", 0), device=device)
        logger.info(f"Backbone output cache {path}: {count} utterance(s) computed.")

    run_on_main(build)
    vectors = load_cache(path)

    for dataset in datasets.values():
        dataset.add_dynamic_item(cached_pipeline(vectors, dataset.data))
        windows = list(WINDOW_KEYS) if is_window_dataset(dataset) else []
        dataset.set_output_keys(["id", "cached", target, *windows])
    return path


def cached_pipeline(vectors, rows):
    """The dynamic item ``cached``: the vector of the clip of each row of ``rows``."""
    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("cached")
    def pipeline(uid):
        return vectors[row_key(rows[uid])]
    return pipeline


def clip_key(clip):
    """The cache key of a ``Clip``: its file (the ``wav`` field) for the first clip, else
    ``<wav>@<start>`` (a window; the window at 0 is the first clip)."""
    return str(clip.path) if clip.start == 0 else f"{clip.path}@{int(clip.start)}"


def row_key(fields):
    """The cache key of the clip of a dataset row (``windows.row_clip``)."""
    return clip_key(row_clip(fields))
