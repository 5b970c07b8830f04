"""The classification Brain shared by every recipe.

Per stage it accumulates loss and accuracy; after validation it checkpoints with the validation
accuracy as the key, so ``evaluate(..., max_key="valid_acc")`` tests the best epoch's weights
(the reference tested the last epoch's). A ``task: multilabel`` run trains a binary cross-entropy
per class instead and checkpoints by validation mAP (``valid_map``, with the per-class thresholds
chosen on that validation pass); ``selection_key(hparams)`` names the key of either kind, and
``petl_modules.training.metrics`` computes the scores. The optimiser and its schedule are the yaml's
(``petl_modules/training/recipe.yaml``): ``opt_class`` over ``param_groups`` (each module's
trainable tensors at its own learning rate) and ``lr_scheduler`` stepped after every optimiser
step, whose ``T_max`` (every step of the run) this Brain fills in once ``fit`` knows the epoch
length.

Resuming (``fit`` continues from the latest checkpoint, also an intra-epoch one): SpeechBrain
restores the modules, optimiser, scheduler, epoch counter, DataLoader position, step and running
loss; this Brain adds the epoch's training accuracy counts so far (in its own checkpoint file) and
gives the training DataLoader its own seeded generator, so that the global random state (restored
by ``petl_modules.training.checkpointing.RandomState``) is drawn from in the same order with or without an
interruption. A resumed run thus ends with the same results as an uninterrupted one. SIGUSR2 or
SIGTERM (a cluster's time-limit warning, preemption, requeue) while it trains or evaluates stops it
cleanly (``petl_modules.training.stop_signals``): an intra-epoch checkpoint at the next optimiser
step, then exit; during validation or testing, exit at the next batch.

Long recordings (``petl_modules/training/windows.py``): with ``train_crop: random`` the Brain sets
the epoch of the training set's crops before each training epoch (also a resumed one), so every
epoch reads its own crops; with ``eval_windows: sliding`` validation and test batches hold windows,
whose class probabilities are pooled per file (``window_pooling``) when the stage ends: the loss
and accuracy are the files'.

Speed (SpeechBrain run options, on CPU as on GPU): ``--precision=bf16`` trains under
``torch.autocast(device, torch.bfloat16)`` (SpeechBrain's ``training_ctx``) and, unless
``--eval_precision`` is given, evaluates the same way; on a CPU without native bf16 (AVX512-BF16 or
AMX) it warns and stays fp32 (``resolve_precision``). The loss is taken on fp32 logits; autocast
keeps LayerNorm and the losses in fp32, and the MoA routers compute their softmaxes in fp32.
``compile: True`` (recipe.yaml; on the command line SpeechBrain's flag ``--compile``) compiles the
Brain's modules with ``torch.compile`` (SpeechBrain's ``_compile``); a module whose compiled
forward fails runs eagerly from then on, with a warning (``EagerFallback``).
"""

import contextlib
import logging
import math

import speechbrain as sb
import speechbrain.core
import torch
import torch.nn.functional as F
import yaml
from speechbrain.utils.distributed import if_main_process, is_distributed_initialized

# Precision and compilation are the model's (petl_modules/model/precision.py), used from here too.
from petl_modules.model.precision import (  # noqa: F401
    EagerFallback,
    autocast_context,
    bf16_supported,
    compile_with_fallback,
    resolve_precision,
)
from petl_modules.training import metrics
from petl_modules.training.augment import augment
from petl_modules.training.cache import head_input
from petl_modules.training.mixup import BatchMixup, mixup_options, soft_targets
from petl_modules.training.sampling import weighted_sampler
from petl_modules.training.stop_signals import RunInterrupted, StopSignals, signal_name
from petl_modules.training.windows import WindowScores

logger = logging.getLogger(__name__)


# ==================================================================== progress bars
def progress_name(stage, epoch=None, epochs=None, fold=None):
    """The name of a stage's progress bar: ``fold 3, epoch 2/10, train`` (no fold: ``epoch 2/10,
    valid``; test: ``fold 3, test``)."""
    parts = [f"fold {fold}"] if isinstance(fold, int) else []
    if stage != sb.Stage.TEST and epoch is not None:
        parts.append(f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}")
    return ", ".join(parts + [stage.name.lower()])


@contextlib.contextmanager
def named_progress_bars(brain):
    """Within the block, each progress bar ``sb.Brain`` draws is named ``brain.progress_name``.

    SpeechBrain makes its train, valid and test bars with ``speechbrain.core.tqdm`` and no
    description, right after ``on_stage_start``, which sets the name; the block gives that
    function a default ``desc`` and puts SpeechBrain's own back at the end."""
    made = speechbrain.core.tqdm

    def named(*args, **kwargs):
        kwargs.setdefault("desc", getattr(brain, "progress_name", None))
        return made(*args, **kwargs)

    speechbrain.core.tqdm = named
    try:
        yield
    finally:
        speechbrain.core.tqdm = made


def selection_key(hparams):
    """The checkpoint meta key of the best epoch: ``valid_map`` (multi-label) or ``valid_acc``."""
    return "valid_map" if metrics.is_multilabel(hparams) else "valid_acc"


@sb.utils.checkpoints.register_checkpoint_hooks
class ClassificationBrain(sb.Brain):
    """Utterance classification: ``inputs`` -> backbone with PETL modules -> classifier.

    Expects ``modules`` with ``petl_model`` (an ``AdaptedBackbone``) and ``classifier``, and batches
    with ``inputs`` (padded features or waveforms) and ``label_index``. Optional hparams:
    ``augmentation`` (applied to the training inputs by ``petl_modules.training.augment.augment``, e.g.
    ``SpecAugment``, which masks fbank features or waveforms by backbone family).
    """

    steps_per_epoch = 1

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        # recipe.yaml saves an intra-epoch checkpoint every ckpt_interval_minutes; SpeechBrain
        # refuses both intervals at once, so --ckpt_interval_steps given on the command line
        # replaces the yaml's time interval.
        overridden = set(run_opts) if isinstance(run_opts, dict) else getattr(
            run_opts, "overridden_args", set())
        if hparams is not None and "ckpt_interval_steps" in overridden \
                and "ckpt_interval_minutes" not in overridden:
            hparams = dict(hparams, ckpt_interval_minutes=0)
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        self._set_precision(overridden, hparams)

    def _set_precision(self, overridden, hparams):
        """bf16 where the device has it (else fp32, warned); ``--precision=bf16`` also evaluates
        in bf16 unless ``eval_precision`` is given (command line or yaml)."""
        from speechbrain.utils.autocast import AMPConfig, TorchAutocast

        eval_given = "eval_precision" in overridden or (hparams is not None and "eval_precision" in hparams)
        if self.precision == "bf16" and not eval_given:
            self.eval_precision = "bf16"
        self.precision = resolve_precision(self.precision, self.device, "--precision")
        if self.eval_precision == "bf16":
            self.eval_precision = resolve_precision(
                self.eval_precision, self.device,
                "--eval_precision" if eval_given else "--precision (evaluation)")
        self.training_ctx = TorchAutocast(device_type=self.device_type,
                                          dtype=AMPConfig.from_name(self.precision).dtype)
        self.evaluation_ctx = TorchAutocast(device_type=self.device_type,
                                            dtype=AMPConfig.from_name(self.eval_precision).dtype)

    def _compile(self):
        """SpeechBrain's ``--compile`` (``compile: True`` in the yaml); each compiled module is
        wrapped in ``EagerFallback``, so a method or backbone the compiler cannot handle runs
        eagerly with a warning instead of stopping the run."""
        eager = dict(self.modules.items())
        super()._compile()
        for name, module in list(self.modules.items()):
            if module is not eager.get(name) and hasattr(module, "_orig_mod"):  # compiled
                self.modules[name] = EagerFallback(module, eager[name], name)

    # ---------------------------------------------------------------- forward / loss
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        if getattr(self.hparams, "cache_backbone_outputs", False):
            # Linear probing from cached backbone outputs (petl_modules/training/cache.py): the final
            # LayerNorm's affine part and the head run on one cached vector per utterance.
            return self.modules.classifier(head_input(self.modules.petl_model, batch.cached.data))
        inputs, lengths = batch.inputs
        self.mixing = None
        if stage == sb.Stage.TRAIN and self.batch_mixup is not None:  # mixup: features
            self.mixing = self.batch_mixup.draw(inputs.shape[0])
            inputs, lengths = self.batch_mixup.mix_inputs(inputs, lengths, self.mixing)
        augmentation = getattr(self.hparams, "augmentation", None)
        if stage == sb.Stage.TRAIN and augmentation is not None:
            # Fits the input kind of the backbone (petl_modules/training/augment.py).
            inputs = augment(augmentation, inputs, lengths, self.modules.petl_model)
        hidden, mask = self.modules.petl_model(inputs, lengths)
        return self.modules.classifier(hidden, mask)

    @property
    def multilabel(self):
        return metrics.is_multilabel(self.hparams)

    @property
    def batch_mixup(self):
        """``BatchMixup`` for ``mixup: features`` (else None)."""
        kind, alpha, prob = mixup_options(vars(self.hparams) if hasattr(self.hparams, "__dict__")
                                          else self.hparams)
        return BatchMixup(alpha, prob) if kind == "features" else None

    def mixed_targets(self, batch, stage):
        """The soft ``[B, C]`` targets of a mixed training batch (``mixup``), else None: the
        pipeline's (``mixup: waveform``) or the batch's targets mixed like its inputs."""
        if stage != sb.Stage.TRAIN:
            return None
        if getattr(batch, "mixed_targets", None) is not None:
            return batch.mixed_targets.data.float()
        if getattr(self, "mixing", None) is None:
            return None
        return BatchMixup.mix(soft_targets(batch, self.hparams.n_classes, self.multilabel),
                              self.mixing)

    def compute_objectives(self, logits, batch, stage):
        """Single-label: cross-entropy; multi-label (``task: multilabel``): binary cross-entropy
        per class on the multi-hot ``targets``. Weighted by ``loss_weights`` (``[C]``, from
        ``class_weights: balanced``) when the run has them."""
        logits = logits.float()  # the loss and the scores in fp32, also under bf16 autocast
        weights = getattr(self.hparams, "loss_weights", None)
        weights = None if weights is None else weights.to(logits.device)
        # Sliding windows (eval_windows: sliding): scored per file when the stage ends.
        windows = stage != sb.Stage.TRAIN and getattr(batch, "utterance", None) is not None
        mixed = self.mixed_targets(batch, stage)
        if self.multilabel:
            targets = (batch.targets.data if mixed is None else mixed).to(logits.device).float()
            loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
            if windows:
                self.windows.add(batch.utterance, batch.window_start, batch.window_end,
                                 self.window_probabilities(logits), targets)
            elif stage != sb.Stage.TRAIN:
                self.outputs.append((targets.cpu(), torch.sigmoid(logits).detach().cpu()))
            return loss
        labels = batch.label_index.data.view(-1).to(logits.device)
        # mixup: the mixed soft targets (the accuracy counts each clip's own label)
        loss = F.cross_entropy(logits, labels if mixed is None else mixed.to(logits.device),
                               weight=weights)
        if windows:
            self.windows.add(batch.utterance, batch.window_start, batch.window_end,
                             self.window_probabilities(logits), labels)
            return loss
        predicted = logits.argmax(dim=-1)
        self.counts += torch.stack(
            [(predicted == labels).sum(), torch.tensor(labels.numel(), device=labels.device)]
        ).to(self.counts)
        if stage == sb.Stage.TEST:
            self.outputs.append((labels.cpu(), predicted.detach().cpu()))
        return loss

    def window_probabilities(self, logits):
        """``[B, C]`` class probabilities of ``[B, C]`` window logits (softmax; multi-label: a
        sigmoid per class), pooled per file."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def pooled_stats(self, windows):
        """Loss and accuracy (multi-label: loss) of the files of evaluated ``windows``
        (``WindowScores``), their probabilities pooled by ``window_pooling`` (mean | max;
        renormalised for the loss); the files' pooled scores become the stage's ``outputs``."""
        _, pooled, labels = windows.pooled(getattr(self.hparams, "window_pooling", "mean"))
        if self.multilabel:
            self.outputs = [(labels.float(), pooled)]
            if not len(labels):
                return {"loss": 0.0}
            tiny = torch.finfo(pooled.dtype).eps
            return {"loss": float(F.binary_cross_entropy(pooled.clamp(tiny, 1 - tiny), labels.float()))}
        labels = labels.view(-1)
        if not len(labels):
            return {"loss": 0.0, "accuracy": 0.0}
        self.outputs = [(labels, pooled.argmax(dim=-1))]
        distribution = pooled / pooled.sum(dim=-1, keepdim=True)
        loss = F.nll_loss(torch.log(distribution.clamp_min(torch.finfo(pooled.dtype).tiny)), labels)
        return {"loss": float(loss), "accuracy": float((pooled.argmax(dim=-1) == labels).double().mean())}

    # ---------------------------------------------------------------- optimiser and schedule
    def fit(self, epoch_counter, train_set, valid_set=None, progressbar=None,
            train_loader_kwargs={}, valid_loader_kwargs={}):
        """As ``sb.Brain.fit``; records the optimiser steps per epoch for the per-step schedule and
        names the progress bars (``progress_name``)."""
        if not isinstance(train_set, torch.utils.data.DataLoader):
            train_set = self.make_dataloader(train_set, stage=sb.Stage.TRAIN, **train_loader_kwargs)
        self.steps_per_epoch = math.ceil(len(train_set) / self.grad_accumulation_factor)
        with named_progress_bars(self), StopSignals() as self._stop:
            super().fit(epoch_counter, train_set, valid_set, progressbar,
                        train_loader_kwargs, valid_loader_kwargs)

    def evaluate(self, *args, **kwargs):
        """As ``sb.Brain.evaluate``, its progress bar named (``progress_name``); SIGUSR2/SIGTERM
        stop it at the next batch."""
        with named_progress_bars(self), StopSignals() as self._stop:
            return super().evaluate(*args, **kwargs)

    # ---------------------------------------------------------------- stopping on a signal
    def _stop_signal(self):
        """The stop signal any process caught (0: none); a collective call under DDP."""
        stop = getattr(self, "_stop", None)
        signum = (stop.signum or 0) if stop is not None else 0
        if is_distributed_initialized():
            flag = torch.tensor([signum], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's interval, or a stop signal at an optimiser step boundary (the
        checkpoint is then saved and the run exits: ``_save_intra_epoch_ckpt``)."""
        at_step = self.step % self.grad_accumulation_factor == 0
        self._stopping = self._stop_signal() if at_step else 0
        if self._stopping:
            if self.checkpointer is None:
                raise self._interrupted(self._stopping, saved=False)
            return True
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def evaluate_batch(self, batch, stage):
        signum = self._stop_signal()
        if signum:
            raise self._interrupted(signum, saved=False)
        return super().evaluate_batch(batch, stage)

    def _interrupted(self, signum, saved):
        """``RunInterrupted`` for ``signum``, the main process logging where the run stopped."""
        where = f"epoch {self.hparams.epoch_counter.current}, after batch {self.step}"
        done = (f"checkpoint saved in {self.checkpointer.checkpoints_dir}" if saved
                else "it resumes from its latest checkpoint")
        if if_main_process():
            logger.warning(f"Stopped on {signal_name(signum)} at {where}: {done}. Rerun the same "
                           "command to resume (a Slurm requeue does).")
        return RunInterrupted(signum)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """As ``sb.Brain.make_dataloader``; the training loader gets its own generator (``seed``).

        Each epoch's iteration draws the workers' base seed from the loader's generator, or from
        the global one if it has none: that extra draw would shift every later dropout and
        augmentation mask of a run resumed mid-epoch.
        """
        if stage == sb.Stage.TRAIN and loader_kwargs.get("generator") is None:
            loader_kwargs["generator"] = torch.Generator().manual_seed(int(self.hparams.seed))
        if stage == sb.Stage.TRAIN:
            # Random crops (train_crop: random) are drawn per epoch: on_stage_start sets it; so
            # are the dataset's other per-epoch draws (mixup partners, the order of shards).
            self.train_crop = getattr(dataset, "train_crop", None)
            self.epoch_hooks = list(getattr(dataset, "epoch_hooks", ()))
        if hasattr(dataset, "make_dataloader"):  # tar shards (petl_modules/training/shards.py)
            return dataset.make_dataloader(stage, **loader_kwargs)
        weights = getattr(dataset, "sample_weights", None) if stage == sb.Stage.TRAIN else None
        if weights is not None:  # sampling: class_balanced (petl_modules/training/sampling.py)
            loader_kwargs.pop("shuffle", None)
            loader_kwargs["sampler"] = weighted_sampler(weights, self.hparams.seed)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if weights is not None and not self.distributed_launch:
            self.train_sampler = loader_kwargs["sampler"]  # SpeechBrain sets its epoch
        return loader

    def on_fit_start(self):
        """As SpeechBrain's (optimisers, then the latest checkpoint); logs where a resumed run is."""
        super().on_fit_start()
        done = self.hparams.epoch_counter.current
        if done or self.step:
            within = f"; epoch {done + 1} goes on after its batch {self.step}" if self.step else ""
            logger.info(
                f"Resuming from the latest checkpoint in {self.checkpointer.checkpoints_dir}: "
                f"{done} epoch(s) done{within}."
            )

    def _wrap_distributed(self):
        """As SpeechBrain's, except on CPU (gloo), where BatchNorm (e.g. in conformer adapters)
        stays per process: PyTorch's SyncBatchNorm, which SpeechBrain converts it to, needs GPUs."""
        if not (self.distributed_launch and self.device_type == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, find_unused_parameters=self.find_unused_parameters)

    def init_optimizers(self):
        """``opt_class`` over the yaml's ``param_groups`` (module name -> learning rate; a module
        with nothing to train is left out) and ``lr_scheduler`` with ``T_max`` = every optimiser
        step of the run (``number_of_epochs`` x steps per epoch)."""
        groups = [
            {"params": [p for p in self.modules[name].parameters() if p.requires_grad],
             "lr": float(lr)}
            for name, lr in self.hparams.param_groups.items()
        ]
        self.optimizer = self.opt_class([g for g in groups if g["params"]])
        self.optimizers_dict = {"opt_class": self.optimizer}
        total_steps = max(1, int(self.hparams.number_of_epochs) * self.steps_per_epoch)
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer, T_max=total_steps)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.lr_scheduler.step()

    # ---------------------------------------------------------------- stages
    def on_stage_start(self, stage, epoch=None):
        self.progress_name = progress_name(stage, epoch, getattr(self.hparams, "number_of_epochs", None),
                                           getattr(self.hparams, "fold", None))
        self.outputs = []  # validation/test: (targets, scores) per batch, for the scores
        if stage == sb.Stage.TRAIN and getattr(self, "train_crop", None) is not None:
            self.train_crop.set_epoch(epoch)  # before the DataLoader workers copy the dataset
        if stage == sb.Stage.TRAIN:
            for hook in getattr(self, "epoch_hooks", ()):
                hook.set_epoch(epoch, self.step)  # resumed mid-epoch: the batches already done
        if stage != sb.Stage.TRAIN:
            self.windows = WindowScores()
        if stage == sb.Stage.TRAIN and self.step > 0:
            return  # resumed mid-epoch: the counts so far came back with the checkpoint
        self.counts = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _accuracy(self, stage):
        counts = self.counts
        # Training batches are sharded across processes; validation and test run in full on each.
        if stage == sb.Stage.TRAIN and is_distributed_initialized():
            counts = counts.clone()
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1]) if counts[1] > 0 else 0.0

    def _stage_scores(self, stage, accuracy=None):
        """The stage's scores: accuracy (and, on test, macro F1 and the confusion matrix) for
        single-label; mAP, and on test micro/macro F1 at the thresholds of the best validation
        epoch, for multi-label (``petl_modules.training.metrics``). Validation of a multi-label
        run also chooses the per-class thresholds (kept in the checkpoint's meta)."""
        if not self.multilabel:
            stats = {"accuracy": self._accuracy(stage) if accuracy is None else accuracy}
            if stage == sb.Stage.TEST and self.outputs:
                labels, predicted = (torch.cat(part).numpy() for part in zip(*self.outputs))
                scores = metrics.single_label_scores(labels, predicted, self.hparams.n_classes)
                stats.update(f1_macro=scores["f1_macro"], confusion=scores["confusion"])
            return stats
        if stage == sb.Stage.TRAIN or not self.outputs:
            return {}
        targets, scores = (torch.cat(part).numpy() for part in zip(*self.outputs))
        if stage == sb.Stage.VALID:
            self.thresholds = metrics.choose_thresholds(targets, scores)
            return {"map": metrics.mean_average_precision(targets, scores)}
        found = metrics.multilabel_scores(targets, scores, self.best_thresholds())
        per_class = {k: found.pop(k) for k in ("ap", "auc", "f1", "positives")}
        return {**found, "per_class": per_class}

    def best_thresholds(self):
        """The per-class thresholds saved with the best validation checkpoint (the one tested);
        ``DEFAULT_THRESHOLD`` for every class when there is none."""
        n_classes = int(self.hparams.n_classes)
        best = self.checkpointer.find_checkpoint(max_key=selection_key(self.hparams)) \
            if self.checkpointer is not None else None
        saved = best.meta.get("thresholds") if best is not None else None
        if isinstance(saved, list) and len(saved) == n_classes and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) for t in saved):
            return [float(t) for t in saved]
        return [metrics.DEFAULT_THRESHOLD] * n_classes

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": float(stage_loss)}
        if stage != sb.Stage.TRAIN and len(self.windows):
            stats = self.pooled_stats(self.windows)  # the files' scores, from their windows
            if stage == sb.Stage.TEST:
                self.test_windows = self.windows  # for window_results (Run.finish_fold)
        stats.update(self._stage_scores(stage, stats.get("accuracy")))
        logged = {k: v for k, v in stats.items() if k not in ("confusion", "per_class")}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            self.valid_stats = stats
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=logged,
            )
            if self.multilabel:  # plain floats: SpeechBrain reads meta with a safe loader
                meta = {"valid_map": stats["map"], "thresholds": self.thresholds}
            else:
                meta = {"valid_acc": stats["accuracy"]}
            self.checkpointer.save_and_keep_only(
                meta={**meta, "epoch": int(epoch)}, max_keys=[selection_key(self.hparams)],
            )
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=logged,
            )

    # ---------------------------------------------------------------- checkpoint of the Brain
    def _save_intra_epoch_ckpt(self):
        """As SpeechBrain's; under DDP the main process first takes the sum of every process's
        training counts (the others restart from zero), so that its checkpoint holds them all."""
        if is_distributed_initialized():
            torch.distributed.all_reduce(self.counts)
            if not if_main_process():
                self.counts.zero_()
        super()._save_intra_epoch_ckpt()
        if getattr(self, "_stopping", 0):
            raise self._interrupted(self._stopping, saved=True)

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        """SpeechBrain's Brain state (step, running loss), plus mid-epoch the accuracy counts."""
        super()._save(path)
        if self.step > 0:
            # Mid-epoch: also how the training stream of tar shards was split (shards.py).
            streams = [hook.state() for hook in getattr(self, "epoch_hooks", ()) if hasattr(hook, "state")]
            with open(path, "a", encoding="utf-8") as stream:
                yaml.safe_dump({"train_counts": [float(c) for c in self.counts],
                                **({"data_stream": streams[0]} if streams else {})}, stream)

    @sb.utils.checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch):
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as stream:
            saved = yaml.safe_load(stream)
        counts = saved.get("train_counts")
        for hook in getattr(self, "epoch_hooks", ()) if not end_of_epoch else ():
            if hasattr(hook, "check_state"):
                hook.check_state(saved.get("data_stream"))
        if counts is None or end_of_epoch or not if_main_process():
            counts = [0.0, 0.0]  # under DDP the main process holds the sum (_save_intra_epoch_ckpt)
        self.counts = torch.tensor(counts, dtype=torch.float64, device=self.device)
