"""A trained PETL model as users know it from transformers and PEFT: ``PETLModel``.

::

    from petl_modules.model import PETLModel

    model = PETLModel.from_pretrained("results/FSC/lora/10/petl_model")  # or a Hub repo id
    model.classify(["a.wav", "b.flac"])      # [{"file", "label", "score", "labels", ...}, ...]
    out_prob, score, index, labels = model(wavs, wav_lens)  # [B, S] 16 kHz waveforms
    model.save_pretrained("shared/fsc_lora")

``from_pretrained`` reads the folder's ``petl_config.json`` as data (``petl_modules.model.spec``),
loads the base checkpoint once and the trained tensors from safetensors
(``petl_modules.model.folder``). Files are read as in training (``petl_modules.model.audio``: any
format soundfile reads, mixed to mono, resampled to 16 kHz, only the part a clip uses) and turned
into inputs by the backbone lobe's own input processor, then classified with the evaluation
protocol the run was tested with (the first clip, or sliding windows whose probabilities are
pooled; ``petl_modules.model.windows``). The ``classify_*`` methods return, as SpeechBrain's
``EncoderClassifier`` does, ``(out_prob [B, C], score [B], index [B], text_lab)``.
``PETLClassifier`` is the same class under the name the SpeechBrain-style API uses
(``PETLClassifier.from_folder``).
"""

import itertools
import logging
from pathlib import Path

import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from petl_modules.backbones import Backbone
from petl_modules.backbones.base import preserved_rng, quiet_transformers
from petl_modules.model.audio import AudioError, load_audio
from petl_modules.model.bases import remember_local_base
from petl_modules.model.clip import Clip
from petl_modules.model.folder import (
    attach_modules,
    folder_view,
    load_model,
    merge_petl_model,
    save_model_folder,
)
from petl_modules.model.hub import resolve_model_dir
from petl_modules.model.long_audio import file_windows
from petl_modules.model.precision import autocast_context, compile_with_fallback, resolve_precision
from petl_modules.model.spec import BackboneRef, ModelSpec, PETLModelError
from petl_modules.model.task import SingleLabel
from petl_modules.model.windows import EvalProtocol, pool_windows

logger = logging.getLogger(__name__)


class PETLModel(torch.nn.Module):
    """A trained PETL model ready for inference: backbone + PETL modules + head, eval mode.

    Build it with ``PETLModel.from_pretrained`` (a model folder or a Hub repo id) or
    ``PETLModel.create`` (a new model from a base checkpoint and a method config).

    Arguments
    ---------
    spec : petl_modules.model.spec.ModelSpec
        What defines the model.
    modules : dict
        ``{"petl_model", "classifier"}`` built for ``spec`` (``petl_modules.model.folder``).
    device : str
        Where the modules are.
    model_dir : Path, optional
        The folder it was loaded from.
    source : str, optional
        The base checkpoint it was built on.
    """

    def __init__(self, spec, modules, device="cpu", model_dir=None, source=None):
        super().__init__()
        self.spec = spec
        self.mods = torch.nn.ModuleDict(modules)
        self.device = device
        self.model_dir, self.source = model_dir, source
        # A flat summary (exporters, side files, the model card).
        self.config = folder_view(spec, model_dir, source) if model_dir else spec.view(None, source)
        self.labels = list(spec.class_names)
        self.task = spec.task  # what the outputs mean (single- or multi-label, thresholds)
        self.input_processor = self.mods["petl_model"].adapted_model.input_processor
        self.merged = []  # names of the LoRA modules folded into the backbone
        self.precision = "fp32"  # set_speed
        self.int8 = None  # petl_modules.sharing.int8.use_int8: the onnxruntime graph that runs instead
        # First clip or sliding windows, as the run was tested (format_version < 3: first clip).
        self.protocol = spec.evaluation

    # Fbank windows of a long file sliced from one fbank per chunk (petl_modules.model.long_audio).
    share_window_features = True

    @classmethod
    def from_pretrained(cls, model_dir, backbone_source=None, device="cpu", merge=False, check=True):
        """Loads a PETL model folder onto its base checkpoint.

        Arguments
        ---------
        model_dir : str or Path
            A ``petl_model/`` folder (or the experiment folder holding one), or a Hugging Face Hub
            repo id (``owner/name[@revision]``, ``petl_modules.model.hub.resolve_model_dir``).
        backbone_source : str, optional
            A copy of the base checkpoint (its weights' fingerprint must match); needed for a
            model trained on a local folder, except on the machine that trained it.
        device : str
            ``cpu``, ``cuda``, ``cuda:1``, ...
        merge : bool
            Fold LoRA into the backbone weights (inference then costs what the plain backbone
            costs).
        check : bool
            Check the base checkpoint's fingerprint (default).

        Example
        -------
        >>> model = PETLModel.from_pretrained("results/FSC/lora/10/petl_model")  # doctest: +SKIP
        >>> model.classify("turn_on_the_lights.wav")["label"]  # doctest: +SKIP
        'activate,lights,none'
        """
        model_dir = resolve_model_dir(model_dir)  # a local folder, or a Hub repo id's snapshot
        spec, modules, folder, source = load_model(model_dir, backbone_source, device=device, check=check)
        model = cls(spec, modules, device, folder, source)
        if merge:
            model.merge()
        return model

    @classmethod
    def create(cls, backbone_source, method, class_names, pooling="mean", task=None, evaluation=None,
               device="cpu", **backbone_options):
        """A new model in plain Python: the base checkpoint ``backbone_source`` (a Hub id or a local
        folder, loaded once, with its lobe's ``backbone_options``, e.g. ``max_frames=400``), a
        method config (``petl_modules.methods.method_config("lora", {...})``), a head over
        ``class_names`` with ``pooling``, a ``Task`` and an ``EvalProtocol`` (default: single-label,
        first clip). Its trained tensors are at their initial values: train it, or load trained
        ones; ``save_pretrained`` writes it as a model folder.

        Example
        -------
        >>> from petl_modules.methods import method_config
        >>> model = PETLModel.create("MIT/ast-finetuned-audioset-10-10-0.4593",  # doctest: +SKIP
        ...                          method_config("lora"), ["yes", "no"], max_frames=100)
        """
        with quiet_transformers(), preserved_rng():
            lobe = Backbone(str(backbone_source), **backbone_options)
        spec = ModelSpec(BackboneRef.of(lobe, backbone_source), method, list(class_names), pooling,
                         task or SingleLabel(), evaluation or EvalProtocol()).check()
        modules = attach_modules(spec, lobe)
        lobe.release_checkpoint()
        for module in modules.values():
            module.to(device).eval()
        return cls(spec, modules, device, None, str(backbone_source))

    def save_pretrained(self, folder):
        """Writes the model as a PETL model folder (``petl_config.json`` format 4 and
        ``petl_weights.safetensors``) that ``from_pretrained`` loads; returns the folder."""
        if self.merged:
            raise PETLModelError(
                "This model's LoRA updates were merged into the backbone (merge=True): a model "
                "folder holds them unmerged. Save it before merging, or load it without merge.")
        modules = {name: getattr(module, "module", module) for name, module in self.mods.items()}
        save_model_folder(folder, self.spec, modules)
        if self.source is not None:
            remember_local_base(self.source, self.spec.backbone.sha256())
        return Path(folder)

    def merge(self):
        """Folds LoRA into the backbone weights (``merge_petl_model``); returns ``self``."""
        self.merged += merge_petl_model(self.mods)
        return self

    def classify(self, files, batch_size=8):
        """Classifies an audio file (a path) or a list of them, with the protocol the model was
        tested with: a dict per file, ``{"file", "label", "score", "probabilities" [C],
        "labels"}``, or ``{"file", "error"}`` for a file that could not be classified (see
        ``classify_files``); a single dict for a single path."""
        single = isinstance(files, (str, Path))
        paths = [files] if single else list(files)
        found, errors = self.classify_files(paths, batch_size=batch_size)
        by_file = {r["file"]: r for r in found}
        by_file.update({path: {"file": path, "error": reason} for path, reason in errors})
        results = [by_file[str(p)] for p in paths]
        return results[0] if single else results

    def set_speed(self, precision="fp32", compile=False):
        """bf16 autocast (where the device supports it; else fp32, warned) and/or ``torch.compile``
        of the modules (eager, warned, where compilation fails). Returns ``self``. (int8, the
        model's ONNX graph quantised, runs through ``petl_modules.sharing.int8.use_int8``.)"""
        if precision == "int8":
            raise PETLModelError(
                "int8 runs the model's ONNX graph in onnxruntime: use "
                "petl_modules.sharing.int8.use_int8(model) (classify --precision=int8 does).")
        self.int8 = None
        self.precision = resolve_precision(precision, self.device)
        if compile:
            for name in list(self.mods):
                self.mods[name] = compile_with_fallback(self.mods[name], name)
        return self

    # ---------------------------------------------------------------- inputs
    def load_audio(self, path):
        """Reads ``path`` as training does: ``[S]`` mono float32 at 16 kHz, only the part the model
        uses (``input_processor.samples_needed``); ``AudioError`` naming the file if it cannot."""
        return load_audio(path, getattr(self.input_processor, "sample_rate", 16000),
                          max_samples=getattr(self.input_processor, "samples_needed", None))

    def load_input(self, path, start=0):
        """The model input of ``path`` (a file, or a ``Clip`` of one), or of its window at sample
        ``start`` (``petl_modules.model.clip.Clip.read``)."""
        clip = path if isinstance(path, Clip) else Clip(path, start)
        return clip.read(self.input_processor)

    def file_windows(self, path, chunk_windows=8):
        """The model inputs of ``path``'s clips under the model's protocol, a chunk of windows read
        at a time (``petl_modules.model.long_audio.file_windows``)."""
        return file_windows(path, self.input_processor, self.protocol, chunk_windows,
                            self.share_window_features)

    def prepare_inputs(self, waveforms):
        """Per-utterance input processing, then the padding of the training batches.

        ``waveforms``: list of ``[S_i]`` tensors -> ``(inputs, relative lengths [B])``.
        """
        features = []
        for k, wav in enumerate(waveforms):
            wav = wav.detach().cpu().float()
            if not bool(torch.isfinite(wav).all()):
                raise ValueError(f"Waveform {k} of the batch holds NaN or Inf samples; the model "
                                 "cannot classify it. Drop or repair it first.")
            features.append(self.input_processor(wav))
        return batch_pad_right(features)

    # ---------------------------------------------------------------- classification
    @torch.no_grad()
    def classify_waveforms(self, waveforms, batch_size=8):
        """Classifies a list of ``[S_i]`` 16 kHz waveforms of any lengths (see the class doc);
        with sliding windows, each waveform's windows in batches of ``batch_size``."""
        if not self.protocol.sliding:
            return self.classify_inputs(*self.prepare_inputs(waveforms))
        pooled = []
        for wav in waveforms:
            clips = self.protocol.clips(Clip(None, 0, wav.shape[-1]), self.input_processor)
            windows = [clip.of(wav) for clip in clips]
            probabilities = torch.cat([
                self.classify_inputs(*self.prepare_inputs(windows[i: i + batch_size]))[0].cpu()
                for i in range(0, len(windows), batch_size)])
            pooled.append(pool_windows(probabilities, self.protocol.pooling))
        return self.predictions(torch.stack(pooled))

    @torch.no_grad()
    def classify_inputs(self, inputs, lengths):
        """Classifies processed inputs: ``[B, ...]`` padded features and ``[B]`` relative lengths
        (see the class doc for what it returns)."""
        if self.int8 is not None:
            return self.predictions(self.int8(inputs, lengths))
        with autocast_context(self.device, self.precision):
            hidden, mask = self.mods["petl_model"](inputs.to(self.device), lengths.to(self.device))
            logits = self.mods["classifier"](hidden, mask)
        return self.predictions(self.task.probabilities(logits))

    def predictions(self, out_prob):
        """``(out_prob [B, C], score [B], index [B], text_lab)`` of class probabilities."""
        score, index = out_prob.max(dim=-1)
        return out_prob, score, index, [self.labels[i] for i in index.tolist()]

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies a padded batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, S]`` (or ``[S]``) waveforms, right-padded.
        wav_lens : torch.Tensor, optional
            ``[B]`` lengths relative to ``S`` (SpeechBrain convention); default all 1.0.

        Returns
        -------
        (out_prob [B, C], score [B], index [B], text_lab list of str)
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        samples = (wav_lens.float().cpu() * wavs.shape[1]).round().long().tolist()
        return self.classify_waveforms([w[:n] for w, n in zip(wavs, samples)])

    def classify_file(self, path, batch_size=8):
        """Classifies one audio file (any format, rate and channel count soundfile reads); with
        sliding windows, its windows in batches of ``batch_size``."""
        if not self.protocol.sliding:
            return self.classify_inputs(*batch_pad_right([self.load_input(path)]))
        windows = self.file_windows(path, batch_size)  # read a batch at a time
        batches = iter(lambda: list(itertools.islice(windows, batch_size)), [])
        probabilities = torch.cat([self.classify_inputs(*batch_pad_right(batch))[0].cpu()
                                   for batch in batches])
        return self.predictions(pool_windows(probabilities, self.protocol.pooling)[None])

    def classify_files(self, paths, batch_size=8, progressbar=False):
        """Classifies many files in batches; a file that fails is reported, never fatal.

        A batch holds ``batch_size`` clips: files (first clip), or windows of one or more files
        (sliding windows; a file's result pools its windows' probabilities). A file fails when it
        cannot be read (missing, unreadable, empty, NaN/Inf samples), when its processing raises,
        or when the model gives it non-finite scores. A batch whose forward pass raises is retried
        clip by clip, so one bad file never costs the others' results.

        Returns
        -------
        (list of dict, list of (str, str))
            Per classified file, in order: ``{"file", "label", "score", "probabilities" [C],
            "labels"}`` (``labels``: ``labels_above_threshold``);
            and ``(file, reason)`` of each file that failed, in order.
        """
        windows, errors, pending, names = {}, {}, [], {}  # windows: file -> [C] probabilities of each

        def run(items):
            inputs, lengths = batch_pad_right([features for _, _, features in items])
            for (k, path, _), row in zip(items, self.clip_scores(inputs, lengths)):
                if isinstance(row, str):
                    errors.setdefault(k, (str(path), row))
                else:
                    windows.setdefault(k, []).append(row)

        def flush():
            if not pending:
                return
            try:
                run(pending)
            except Exception as err:  # noqa: BLE001 (reported per file below)
                if len(pending) == 1:
                    k, path, _ = pending[0]
                    errors.setdefault(k, (str(path), _reason(err)))
                else:
                    logger.warning(f"A batch of {len(pending)} clips failed ({_reason(err)}); "
                                   "classifying them one by one.")
                    for item in pending:
                        try:
                            run([item])
                        except Exception as one:  # noqa: BLE001
                            errors.setdefault(item[0], (str(item[1]), _reason(one)))
            pending.clear()

        for k, path in enumerate(tqdm(paths, desc="classify", unit="file", disable=not progressbar)):
            names[k] = str(path)
            try:
                for features in self.file_windows(path, batch_size):
                    pending.append((k, path, features))
                    if len(pending) >= batch_size:
                        flush()
            except Exception as err:  # noqa: BLE001 (AudioError, or the processor failing)
                errors[k] = (str(path), _reason(err))
        flush()
        done = [{"file": names[k], **self.file_result(windows[k])}
                for k in sorted(set(windows) - set(errors))]
        return done, [errors[k] for k in sorted(errors)]

    def labels_above_threshold(self, probabilities):
        """The predicted classes of ``[C]`` probabilities: every class at or above its threshold
        (multi-label; most probable first), or the most probable one (single-label)."""
        return self.task.predicted_labels(self.labels, probabilities)

    def clip_scores(self, inputs, lengths):
        """Per clip (file or window) of a processed batch: its ``[C]`` probabilities, or why it has
        none (str: non-finite scores)."""
        return [prob if bool(torch.isfinite(prob).all()) else NON_FINITE
                for prob in self.classify_inputs(inputs, lengths)[0].cpu()]

    def file_result(self, clips):
        """A file's result from its clips' probabilities (one clip, or its windows pooled as the
        run was tested): ``{"label", "score", "probabilities" [C], "labels"}``."""
        prob = pool_windows(torch.stack(clips), self.protocol.pooling)
        index = int(prob.argmax())
        return {"label": self.labels[index], "score": float(prob[index]), "probabilities": prob,
                "labels": self.labels_above_threshold(prob)}

    def top_k(self, probabilities, k):
        """``[{"label", "score"}]`` of the ``k`` most probable classes of ``[C]`` probabilities."""
        return top_classes(self.labels, probabilities, k)

    def forward(self, wavs, wav_lens=None):
        """``classify_batch`` of a padded ``[B, S]`` batch, or ``classify_waveforms`` of a list of
        ``[S_i]`` waveforms: ``(out_prob [B, C], score [B], index [B], text_lab)``."""
        if isinstance(wavs, (list, tuple)):
            return self.classify_waveforms(list(wavs))
        return self.classify_batch(wavs, wav_lens)


class PETLClassifier(PETLModel):
    """``PETLModel`` under the name of the SpeechBrain-style API: ``PETLClassifier.from_folder``
    (= ``PETLModel.from_pretrained``) and ``PETLClassifier.from_folders`` (several tasks on one
    backbone)."""

    @classmethod
    def from_folder(cls, model_dir, backbone_source=None, device="cpu", merge=False, check=True):
        """``from_pretrained`` (see there)."""
        return cls.from_pretrained(model_dir, backbone_source, device=device, merge=merge, check=check)

    @classmethod
    def from_folders(cls, model_dirs, backbone_source=None, device="cpu", check=True):
        """Several PETL model folders (or Hub repo ids) trained on the same base checkpoint, on
        ONE frozen backbone: a ``MultiTaskClassifier`` (every file gets every task's answer in one
        pass; see ``petl_modules.model.multitask``).

        Example
        -------
        >>> tasks = PETLClassifier.from_folders(["intent/petl_model", "emotion/petl_model"])  # doctest: +SKIP
        >>> tasks.classify_file("utterance.wav")["emotion/petl_model"][3]  # doctest: +SKIP
        ['neutral']
        """
        from petl_modules.model.multitask_classifier import MultiTaskClassifier

        return MultiTaskClassifier.from_folders(model_dirs, backbone_source, device, check)


def top_classes(labels, probabilities, k):
    """``[{"label", "score"}]`` of the ``k`` most probable of ``labels`` (``[C]`` probabilities)."""
    scores, indices = probabilities.topk(min(int(k), len(labels)))
    return [{"label": labels[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())]


NON_FINITE = ("the model gave non-finite scores for it (check the file's content and the model "
              "folder)")


def _reason(err):
    """What went wrong, for the per-file report (``AudioError`` messages already name the file)."""
    if isinstance(err, AudioError):
        return str(err)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
