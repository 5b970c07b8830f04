"""Classifying audio with a trained PETL model (a ``petl_model/`` folder on its base checkpoint).

Python, in the style of SpeechBrain's pretrained interfaces (``EncoderClassifier``)::

    from petl_modules.classify import PETLClassifier
    classifier = PETLClassifier.from_folder("results/FSC/adapter/10/petl_model")
    out_prob, score, index, text_lab = classifier.classify_file("utterance.wav")
    out_prob, score, index, text_lab = classifier.classify_batch(wavs, wav_lens)  # [B, S], [B]

Command line::

    python -m petl_modules.classify MODEL_DIR FILE... [--backbone_source=...] [--top_k=K] [--json]
        [--merge] [--device=...] [--batch_size=N] [--precision=fp32|bf16] [--compile]
    python -m petl_modules.classify --model A --model B ... [options] -- FILE...

``MODEL_DIR`` is a local folder or a Hugging Face Hub repo id (``petl_modules.sharing.hub``).
With ``--model`` (once per task), folders trained on the same base checkpoint share one frozen
backbone and every file gets every task's answer (``PETLClassifier.from_folders``,
``petl_modules.sharing.multitask``).

Files are read as in training (``petl_modules.training.audio.load_input``: any format soundfile reads,
mixed to mono, resampled to 16 kHz) and turned into inputs by the backbone lobe's own
``input_processor`` (same clip length, normalisation and padding as the recipe). Files are
classified with the evaluation protocol the run was tested with (the PETL model folder's
``evaluation``, ``petl_modules.training.windows``): the first clip (the first ``max_frames``
frames, or the first ``clip_seconds``), or sliding windows over the whole file whose class
probabilities are pooled (mean or max), so that classify reproduces the recipe's test accuracy.
Only the part of a file that a clip uses is read, and windows run in batches of ``--batch_size``,
so memory does not grow with the file's length. A file that fails anywhere
(missing, unreadable, empty, NaN/Inf samples, a processing error, non-finite scores) is reported by
name with the reason on stderr; the others are still classified (a failed batch is retried file by
file) and the exit code is 1.

A multi-label model (``task: multilabel``) gives each class its own probability (sigmoid) and
predicts every class whose probability reaches that class's threshold (chosen on the validation
split at training, kept in the model folder): ``labels`` lists them (the text output prints them
all, ``;``-separated, or ``-`` for none); ``label``/``score`` stay the most probable class.

Speed: ``--precision=bf16`` runs the model under bf16 autocast (on CPU where it has AVX512-BF16 or
AMX, else fp32 with a warning; the class probabilities are computed in fp32); ``--compile`` runs it
through ``torch.compile`` (eagerly, with a warning, where compilation fails). In Python:
``classifier.set_speed(precision="bf16", compile=True)``.
"""

import argparse
import json
import logging
import sys

import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from petl_modules.sharing.hub import resolve_model_dir
from petl_modules.sharing.multitask import load_multitask
from petl_modules.training.audio import AudioError, load_audio, load_input
from petl_modules.training.brain import autocast_context, compile_with_fallback, resolve_precision
from petl_modules.training.pretrained import PETLModelError, load_petl_model, merge_petl_model
from petl_modules.training.windows import EvalProtocol, clip_samples, pool_windows, window_starts

logger = logging.getLogger(__name__)


class PETLClassifier(torch.nn.Module):
    """A trained PETL model ready for inference: backbone + PETL modules + head, eval mode.

    Build it with ``PETLClassifier.from_folder``. The ``classify_*`` methods return, as
    SpeechBrain's ``EncoderClassifier`` does, ``(out_prob [B, C], score [B], index [B],
    text_lab)``: class probabilities, the best one's probability, its index and its label.

    Arguments
    ---------
    modules : dict
        ``{"petl_model", "classifier"}`` (``petl_modules.training.pretrained.load_petl_model``).
    config : dict
        The PETL model folder's config.
    device : str
        Where the modules are.
    """

    def __init__(self, modules, config, device="cpu"):
        super().__init__()
        self.mods = torch.nn.ModuleDict(modules)
        self.config = config
        self.device = device
        self.labels = list(config["class_names"])
        self.multilabel = config.get("task") == "multilabel"
        self.thresholds = torch.tensor(config.get("thresholds") or [0.5] * len(self.labels))
        self.input_processor = self.mods["petl_model"].adapted_model.input_processor
        self.merged = []  # names of the LoRA modules folded into the backbone
        self.precision = "fp32"  # set_speed
        # First clip or sliding windows, as the run was tested (format_version < 3: first clip).
        self.protocol = EvalProtocol.from_options(config.get("evaluation") or {})

    def set_speed(self, precision="fp32", compile=False):
        """bf16 autocast (where the device supports it; else fp32, warned) and/or ``torch.compile``
        of the modules (eager, warned, where compilation fails). Returns ``self``."""
        self.precision = resolve_precision(precision, self.device)
        if compile:
            for name in list(self.mods):
                self.mods[name] = compile_with_fallback(self.mods[name], name)
        return self

    @classmethod
    def from_folder(cls, model_dir, backbone_source=None, device="cpu", merge=False, check=True):
        """Loads a PETL model folder onto its base checkpoint.

        Arguments
        ---------
        model_dir : str or Path
            A ``petl_model/`` folder (or the experiment folder holding one), or a Hugging Face Hub
            repo id (``owner/name[@revision]``, ``petl_modules.sharing.hub.resolve_model_dir``).
        backbone_source : str, optional
            Another local copy of the base checkpoint (its weights' fingerprint must match).
        device : str
            ``cpu``, ``cuda``, ``cuda:1``, ...
        merge : bool
            Fold LoRA into the backbone weights (inference then costs what the plain backbone
            costs).
        check : bool
            Check the base checkpoint's fingerprint (default).

        Example
        -------
        >>> clf = PETLClassifier.from_folder("results/FSC/lora/10/petl_model")  # doctest: +SKIP
        >>> clf.classify_file("turn_on_the_lights.wav")[3]  # doctest: +SKIP
        ['activate,lights,none']
        """
        model_dir = resolve_model_dir(model_dir)  # a local folder, or a Hub repo id's snapshot
        modules, config = load_petl_model(model_dir, backbone_source, device=device, check=check)
        classifier = cls(modules, config, device)
        if merge:
            classifier.merged = merge_petl_model(modules)
        return classifier

    @classmethod
    def from_folders(cls, model_dirs, backbone_source=None, device="cpu", check=True):
        """Several PETL model folders (or Hub repo ids) trained on the same base checkpoint, on
        ONE frozen backbone: a ``MultiTaskClassifier`` (every file gets every task's answer in one
        pass; see ``petl_modules.sharing.multitask``).

        Example
        -------
        >>> tasks = PETLClassifier.from_folders(["intent/petl_model", "emotion/petl_model"])  # doctest: +SKIP
        >>> tasks.classify_file("utterance.wav")["emotion/petl_model"][3]  # doctest: +SKIP
        ['neutral']
        """
        return MultiTaskClassifier.from_folders(model_dirs, backbone_source, device, check)

    # ---------------------------------------------------------------- inputs
    def load_audio(self, path):
        """Reads ``path`` as training does: ``[S]`` mono float32 at 16 kHz, only the part the model
        uses (``input_processor.samples_needed``); ``AudioError`` naming the file if it cannot."""
        return load_audio(path, getattr(self.input_processor, "sample_rate", 16000),
                          max_samples=getattr(self.input_processor, "samples_needed", None))

    def load_input(self, path, start=0):
        """The model input of ``path``, or of its window at sample ``start``
        (``petl_modules.training.audio.load_input``)."""
        return load_input(path, self.input_processor, start=start)

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
        clip, hop = clip_samples(self.input_processor), self.protocol.hop(self.input_processor)
        pooled = []
        for wav in waveforms:
            starts = window_starts(wav.shape[-1], clip, hop)
            windows = [wav[s: s + clip] if clip else wav for s in starts]
            probabilities = torch.cat([
                self.classify_inputs(*self.prepare_inputs(windows[i: i + batch_size]))[0].cpu()
                for i in range(0, len(windows), batch_size)])
            pooled.append(pool_windows(probabilities, self.protocol.pooling))
        return self.predictions(torch.stack(pooled))

    @torch.no_grad()
    def classify_inputs(self, inputs, lengths):
        """Classifies processed inputs: ``[B, ...]`` padded features and ``[B]`` relative lengths
        (see the class doc for what it returns)."""
        with autocast_context(self.device, self.precision):
            hidden, mask = self.mods["petl_model"](inputs.to(self.device), lengths.to(self.device))
            logits = self.mods["classifier"](hidden, mask)
        logits = logits.float()
        out_prob = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
        return self.predictions(out_prob)

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
        starts = self.protocol.starts(path, self.input_processor)
        probabilities = torch.cat([
            self.classify_inputs(*batch_pad_right(
                [self.load_input(path, start) for start in starts[i: i + batch_size]]))[0].cpu()
            for i in range(0, len(starts), batch_size)])
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
                for start in self.protocol.starts(path, self.input_processor):
                    pending.append((k, path, self.load_input(path, start)))
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
        return predicted_labels(self.labels, probabilities, self.multilabel, self.thresholds)

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
        """Same as ``classify_batch``."""
        return self.classify_batch(wavs, wav_lens)


class MultiTaskClassifier(torch.nn.Module):
    """Several tasks' PETL models on one frozen backbone (``PETLClassifier.from_folders``).

    The frozen computation runs once per batch for all tasks and each task's answer equals its
    model's alone (``petl_modules.sharing.multitask``). Tasks are named by the folder or repo id
    given for them (``names``).

    - ``classify_file(path)``, ``classify_batch(wavs, wav_lens)``, ``classify_waveforms(list)``:
      ``{task: (out_prob [B, C_t], score [B], index [B], text_lab)}``, every file for every task.
    - ``classify_mixed(waveforms, tasks)``: each file names its task; ``[{"task", "label",
      "score", "probabilities"}]`` in the files' order.
    - ``classify_files(paths)``: ``[{"file", "tasks": {task: {"label", "score",
      "probabilities"}}}]`` and the files that failed, as ``PETLClassifier.classify_files``.
    """

    # The audio reading, batching and speed settings of one model are those of several.
    load_audio = PETLClassifier.load_audio
    load_input = PETLClassifier.load_input
    prepare_inputs = PETLClassifier.prepare_inputs
    set_speed = PETLClassifier.set_speed
    classify_files = PETLClassifier.classify_files

    def __init__(self, model, configs, names, device="cpu"):
        super().__init__()
        self.mods = torch.nn.ModuleDict({"multitask": model})
        self.configs = configs
        self.names = [str(n) for n in names]
        self.labels = {n: list(c["class_names"]) for n, c in zip(self.names, configs)}
        self.multilabel = {n: c.get("task") == "multilabel" for n, c in zip(self.names, configs)}
        self.thresholds = {n: torch.tensor(c.get("thresholds") or [0.5] * len(c["class_names"]))
                           for n, c in zip(self.names, configs)}
        self.input_processor = model.lobe.input_processor
        self.device = device
        self.precision = "fp32"
        # One evaluation protocol for every task (first clip or sliding windows, as each was tested).
        protocols = [EvalProtocol.from_options(c.get("evaluation") or {}) for c in configs]
        differing = [n for n, p in zip(self.names, protocols) if p.config() != protocols[0].config()]
        if differing:
            raise PETLModelError(
                f"The tasks were tested with different evaluation protocols ({self.names[0]}: "
                f"{protocols[0].config()}; {differing[0]}: "
                f"{protocols[self.names.index(differing[0])].config()}); one pass cannot follow both. "
                "Classify them separately.")
        self.protocol = protocols[0]

    @classmethod
    def from_folders(cls, model_dirs, backbone_source=None, device="cpu", check=True):
        """See ``PETLClassifier.from_folders``."""
        names = [str(d) for d in model_dirs]
        model, configs = load_multitask([resolve_model_dir(d) for d in model_dirs],
                                        backbone_source, device=device, check=check)
        return cls(model, configs, names, device)

    def task_index(self, task):
        """The index of ``task`` (a name or an index), with a clear error."""
        if isinstance(task, int) and 0 <= task < len(self.names):
            return task
        if str(task) in self.names:
            return self.names.index(str(task))
        raise ValueError(f"Unknown task {task!r}: the tasks are {', '.join(self.names)} "
                         f"(or 0 to {len(self.names) - 1}).")

    @torch.no_grad()
    def run(self, inputs, lengths, tasks):
        """``{task index: (rows, out_prob [n_t, C_t])}`` of processed inputs whose rows belong to
        ``tasks [N]``."""
        with autocast_context(self.device, self.precision):
            found = self.mods["multitask"](inputs.to(self.device), lengths.to(self.device), tasks)
        return {t: (rows, torch.sigmoid(logits.float()) if self.multilabel[self.names[t]]
                    else torch.softmax(logits.float(), dim=-1))
                for t, (rows, logits) in found.items()}

    def _first_clip_only(self, what):
        if self.protocol.sliding:
            raise PETLModelError(
                f"{what} classifies the first clip, but these tasks were tested with sliding "
                "windows over the whole file: use classify_files (or the command line), which "
                "follows the protocol.")

    @torch.no_grad()
    def classify_inputs(self, inputs, lengths):
        """Every task on every row of processed inputs (see the class doc)."""
        count = inputs.shape[0]
        stacked = inputs.repeat(len(self.names), *[1] * (inputs.dim() - 1))
        tasks = torch.arange(len(self.names)).repeat_interleave(count)
        out = {}
        for task, (_, prob) in sorted(self.run(stacked, lengths.repeat(len(self.names)), tasks).items()):
            name = self.names[task]
            score, index = prob.max(dim=-1)
            out[name] = (prob, score, index, [self.labels[name][i] for i in index.tolist()])
        return out

    @torch.no_grad()
    def classify_waveforms(self, waveforms):
        """Every task on a list of ``[S_i]`` 16 kHz waveforms (first-clip tasks)."""
        self._first_clip_only("classify_waveforms")
        return self.classify_inputs(*self.prepare_inputs(waveforms))

    def classify_batch(self, wavs, wav_lens=None):
        """Every task on a padded ``[B, S]`` batch (``wav_lens`` relative, default 1.0)."""
        return PETLClassifier.classify_batch(self, wavs, wav_lens)

    def classify_file(self, path):
        """Every task on one audio file (first-clip tasks; ``classify_files`` follows any protocol)."""
        self._first_clip_only("classify_file")
        return self.classify_inputs(*batch_pad_right([self.load_input(path)]))

    @torch.no_grad()
    def classify_mixed(self, waveforms, tasks):
        """A mixed batch: ``waveforms[i]`` is classified by task ``tasks[i]`` (name or index)."""
        if len(tasks) != len(waveforms):
            raise ValueError(f"{len(waveforms)} waveforms but {len(tasks)} tasks: name one task "
                             "per waveform.")
        self._first_clip_only("classify_mixed")
        indices = torch.tensor([self.task_index(t) for t in tasks], dtype=torch.long)
        rows = [None] * len(waveforms)
        for task, (found, prob) in self.run(*self.prepare_inputs(waveforms), indices).items():
            name = self.names[task]
            for row, p in zip(found.tolist(), prob.cpu()):
                index = int(p.argmax())
                rows[row] = {"task": name, "label": self.labels[name][index],
                             "score": float(p[index]), "probabilities": p,
                             "labels": predicted_labels(self.labels[name], p, self.multilabel[name],
                                                        self.thresholds[name])}
        return rows

    def clip_scores(self, inputs, lengths):
        """Per clip of a processed batch: ``{task: [C_t] probabilities}``, or why it has none
        (``classify_files``)."""
        results = self.classify_inputs(inputs, lengths)
        rows = []
        for k in range(inputs.shape[0]):
            probs = {name: results[name][0][k].cpu() for name in self.names}
            finite = all(bool(torch.isfinite(p).all()) for p in probs.values())
            rows.append(probs if finite else NON_FINITE)
        return rows

    def file_result(self, clips):
        """A file's result from its clips: ``{"tasks": {task: {"label", "score", "probabilities",
        "labels"}}}``, windows pooled as the tasks were tested."""
        tasks = {}
        for name in self.names:
            prob = pool_windows(torch.stack([clip[name] for clip in clips]), self.protocol.pooling)
            index = int(prob.argmax())
            tasks[name] = {"label": self.labels[name][index], "score": float(prob[index]),
                           "probabilities": prob,
                           "labels": predicted_labels(self.labels[name], prob, self.multilabel[name],
                                                      self.thresholds[name])}
        return {"tasks": tasks}

    def top_k(self, task, probabilities, k):
        """``[{"label", "score"}]`` of the ``k`` most probable classes of ``task``."""
        return top_classes(self.labels[self.names[self.task_index(task)]], probabilities, k)

    def forward(self, wavs, wav_lens=None):
        """Same as ``classify_batch``."""
        return self.classify_batch(wavs, wav_lens)


def top_classes(labels, probabilities, k):
    """``[{"label", "score"}]`` of the ``k`` most probable of ``labels`` (``[C]`` probabilities)."""
    scores, indices = probabilities.topk(min(int(k), len(labels)))
    return [{"label": labels[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())]


def predicted_labels(labels, probabilities, multilabel, thresholds):
    """The predicted classes of ``[C]`` probabilities: every class at or above its threshold
    (multi-label; most probable first), or the most probable one (single-label)."""
    if not multilabel:
        return [labels[int(probabilities.argmax())]]
    above = (probabilities >= thresholds).nonzero().view(-1).tolist()
    return [labels[i] for i in sorted(above, key=lambda i: -float(probabilities[i]))]


NON_FINITE = ("the model gave non-finite scores for it (check the file's content and the model "
              "folder)")


def _reason(err):
    """What went wrong, for the per-file report (``AudioError`` messages already name the file)."""
    if isinstance(err, AudioError):
        return str(err)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ==================================================================== command line
def add_common_arguments(parser, per="file"):
    """The files and options of both command lines (one model; several tasks)."""
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--backbone_source", default=None,
                        help="another local copy of the base checkpoint (default: the run's)")
    parser.add_argument("--top_k", type=int, default=1, help=f"how many classes to list per {per}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=8, help="files per forward pass")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: autocast (CPU with AVX512-BF16/AMX or GPU; else fp32, warned)")


def check_counts(parser, args):
    for name in ("top_k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.classify",
        description="Classify audio files with a trained PETL model folder (petl_model/).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a petl_model/ folder (or the experiment folder holding it), or a "
                             "Hugging Face Hub repo id (owner/name[@revision])")
    add_common_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"file", "label", "score", "top_k"} (multi-label '
                             'models: and "labels", every class above its threshold)')
    parser.add_argument("--merge", action="store_true", help="fold LoRA into the backbone weights")
    parser.add_argument("--compile", nargs="?", const="True", default="False",
                        choices=["True", "False", "true", "false"],
                        help="--compile or --compile=True: torch.compile the model (eager, warned, "
                             "where it fails)")
    return check_counts(parser, parser.parse_args(argv))


def parse_several_args(argv):
    """The command line of several tasks: ``--model A --model B ... [options] -- FILE...``."""
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.classify --model A --model B ... --",
        description="Classify audio files with several PETL model folders trained on the same "
                    "base checkpoint, on one frozen backbone: every file gets every task's answer.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                        help="a petl_model/ folder or Hub repo id (once per task)")
    add_common_arguments(parser, per="task")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"file", "tasks": {MODEL_DIR: {"label", '
                             '"score", "top_k"}}} (multi-label tasks: and "labels")')
    return check_counts(parser, parser.parse_args(argv))


def answer(result, labels_top_k, multilabel):
    """One model's printed answer for a file: ``{"label", "score", "top_k"}`` (+ ``"labels"``,
    every class above its threshold, for a multi-label model)."""
    row = {"label": result["label"], "score": result["score"],
           "top_k": labels_top_k(result["probabilities"])}
    if multilabel:
        row["labels"] = result["labels"]
    return row


def answer_text(row):
    """``label<TAB>score  other score...``; multi-label: ``labels<TAB>label score ...``."""
    others = "".join(f"  {t['label']} {t['score']:.4f}" for t in row["top_k"][1:])
    if "labels" in row:
        return f"{';'.join(row['labels']) or '-'}\t{row['label']} {row['score']:.4f}{others}"
    return f"{row['label']}\t{row['score']:.4f}{others}"


def report_errors(errors, total):
    """The files that could not be classified, on stderr; returns the exit code (0 or 1)."""
    for path, reason in errors:
        print(f"Error: could not classify {path}: {reason}", file=sys.stderr)
    if errors and len(errors) < total:
        print(f"{len(errors)} of {total} file(s) could not be classified; the others were.",
              file=sys.stderr)
    elif errors:
        print(f"No file could be classified ({len(errors)} given).", file=sys.stderr)
    return 1 if errors else 0


def load_for_command_line(load):
    """``load()``'s classifier, or None after printing why (the caller exits with 2)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.disable(logging.INFO)  # no "Setting seed" chatter from rebuilding the model
    try:
        return load()
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return None


def main(argv=None):
    """Runs the command line; returns the exit code (0; 1 when a file could not be classified;
    2 when the model folder cannot be loaded)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        return main_several(argv)
    args = parse_args(argv)
    classifier = load_for_command_line(lambda: PETLClassifier.from_folder(
        args.model_dir, args.backbone_source, device=args.device, merge=args.merge))
    if classifier is None:
        return 2
    classifier.set_speed(args.precision, args.compile.lower() == "true")
    results, errors = classifier.classify_files(
        args.files, batch_size=args.batch_size, progressbar=len(args.files) > 1
    )
    rows = [{"file": r["file"], **answer(r, lambda p: classifier.top_k(p, args.top_k),
                                          classifier.multilabel)} for r in results]
    if args.json:
        print(json.dumps(rows, indent=2, allow_nan=False))
    else:
        for row in rows:
            print(f"{row['file']}\t{answer_text(row)}")
    return report_errors(errors, len(args.files))


def main_several(argv):
    """``main`` with ``--model`` given (several tasks on one backbone); same exit codes."""
    args = parse_several_args(argv)
    classifier = load_for_command_line(lambda: PETLClassifier.from_folders(
        args.model, args.backbone_source, device=args.device))
    if classifier is None:
        return 2
    classifier.set_speed(args.precision)
    results, errors = classifier.classify_files(
        args.files, batch_size=args.batch_size, progressbar=len(args.files) > 1
    )
    rows = [{"file": r["file"], "tasks": {
        name: answer(t, lambda p, name=name: classifier.top_k(name, p, args.top_k),
                     classifier.multilabel[name])
        for name, t in r["tasks"].items()}} for r in results]
    if args.json:
        print(json.dumps(rows, indent=2, allow_nan=False))
    else:
        for row in rows:
            for name, task in row["tasks"].items():
                print(f"{row['file']}\t{name}\t{answer_text(task)}")
    return report_errors(errors, len(args.files))


if __name__ == "__main__":
    sys.exit(main())
