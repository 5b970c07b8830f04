"""Several tasks on one frozen backbone: the PETL model folders of one base checkpoint, run together.

Every task's PETL modules sit where they were trained: at the lobe's insertion points. At each
point that any task adapts, the frozen module is wrapped by a ``TaskRouter`` holding each task's
own module there. A batch stacks the tasks' rows (every file once per task, or a mixed batch where
each file names its task), sorted by task; the router knows from the context which rows belong to
which task (``task_segments``) and runs:

- the frozen module ONCE on the rows of every task that has no module there or whose module only
  reads the frozen module's output for the same input (``reader``: LoRA, DoRA, VeRA, (IA)3 on a
  projection's output, parallel adapters, sequential adapters after the sublayer, Dense/Soft-MoA,
  shallow prompts); each such module then gets its rows of that output (``_SharedSublayer``) and
  adds its own part;
- each other task's module on its own rows (``own``: prompts before a layer, prefix tuning,
  sequential adapters before the sublayer, (IA)3 on the FFN's intermediate activations): the
  frozen module runs inside it on those rows only;
- a task's trained LayerNorm (``replace``: the final LayerNorm, the LayerNorm before an adapted
  sublayer) on its rows.

Everything between the adapted points (the embeddings, the LayerNorms, the feed-forward and
attention matmuls no task adapts) runs once on the whole stack. So every (file, task) row passes
through the frozen weights exactly once, and the tasks' outputs are the models' own outputs. A
weighted layer sum task (``layer_sum``) inserts nothing: its rows' layer states are read off the
shared pass (``layer_states``) and summed with its weights.

Tasks whose token sequences differ in length (prompt tuning adds ``prompt_len`` tokens) run in
separate stacks, one per sequence length (``layout``), instead of being padded: padding would add
tokens, hence frozen computation, to every row of the shorter tasks; separate stacks add none.

What cannot share a frozen backbone is refused before the long work, with the reason: folders of
different base checkpoints (fingerprints), input settings or backbone options; methods that train
backbone tensors other than LayerNorms (full fine-tuning, BitFit); and LoRA, DoRA, (IA)3 and VeRA
on WavLM's attention projections, whose weights WavLM reads rather than calling them.
"""

import contextlib
import contextvars
import copy
import logging
from pathlib import Path

import torch
from speechbrain.nnet.adapters import replace_module
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules.backbones.base import preserved_rng, quiet_transformers
from petl_modules.contract import _TOKEN_MASK, PETLModule, token_mask
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.layer_sum import WeightedLayerSum, layer_states, weighted_sum
from petl_modules.methods.lora import ProjectionUpdate
from petl_modules.methods.moa import MixtureOfAdapters
from petl_modules.methods.prompt import PrefixTuning, ShallowPrompt
from petl_modules.model.folder import (
    attach_modules,
    check_fingerprint,
    check_stored_shapes,
    folder_view,
    load_trained_state,
    planned_shapes,
    read_spec,
    stored_shapes,
)
from petl_modules.model.hub import resolve_model_dir
from petl_modules.model.petl_model import NON_FINITE, PETLModel, top_classes
from petl_modules.model.precision import autocast_context
from petl_modules.model.spec import WEIGHTS_FILE, PETLModelError
from petl_modules.model.task import Task
from petl_modules.model.windows import EvalProtocol, pool_windows

logger = logging.getLogger(__name__)

# ``[(task index, rows), ...]``: the tasks of the rows of the batch being computed, in order.
_SEGMENTS = contextvars.ContextVar("petl_task_segments", default=None)


@contextlib.contextmanager
def task_segments(segments):
    """Within the block, the rows of the batch belong to ``segments`` ``[(task, count), ...]``."""
    reset = _SEGMENTS.set(list(segments))
    try:
        yield
    finally:
        _SEGMENTS.reset(reset)


def take_rows(value, total, spans):
    """The rows ``spans [(start, stop), ...]`` of ``value``, a batch of ``total`` rows: tensors whose
    first dimension is a multiple of ``total`` (batch-major, e.g. ``[B * H, T, T]``), recursively
    in tuples, lists and dicts; anything else is returned as it is."""
    if torch.is_tensor(value) and value.dim() and value.shape[0] % total == 0:
        per = value.shape[0] // total
        if len(spans) == 1 and spans[0] == (0, total):
            return value
        pieces = [value[start * per: stop * per] for start, stop in spans]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if isinstance(value, (tuple, list)):
        return type(value)(take_rows(v, total, spans) for v in value)
    if isinstance(value, dict):
        return {k: take_rows(v, total, spans) for k, v in value.items()}
    return value


def join_rows(pieces):
    """Inverse of ``take_rows`` over consecutive spans: the pieces' outputs concatenated along
    the first dimension (tensors, recursively in tuples; None stays None)."""
    first = pieces[0]
    if len(pieces) == 1:
        return first
    if torch.is_tensor(first):
        dtype = first.dtype
        for piece in pieces[1:]:
            dtype = torch.promote_types(dtype, piece.dtype)
        return torch.cat([p.to(dtype) for p in pieces])
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(join_rows([p[j] for p in pieces]) for j in range(len(first)))
    raise TypeError(f"Cannot join outputs of type {type(first).__name__} across tasks.")


class _SharedSublayer(torch.nn.Module):
    """A task module's view of the shared frozen module: the precomputed output of its rows when
    called on the very input it was computed for, else the frozen module itself (not registered:
    the shared backbone owns it)."""

    def __init__(self, module):
        super().__init__()
        self.__dict__["target"] = module
        self.pending = None

    def __getattr__(self, name):
        """The frozen module's own attributes (``weight``, ``bias``, ``in_features``: DoRA reads
        the weight's norms)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["target"], name)

    def forward(self, *args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        if self.pending is not None and first is self.pending[0]:
            return self.pending[1]
        return self.target(*args, **kwargs)


def module_kind(module):
    """``reader`` (the module calls the frozen one on its own input once and adds to, or
    transforms, its output), ``own`` (another PETL module: run on its rows with the frozen module
    inside) or ``replace`` (a trained plain module, e.g. a LayerNorm)."""
    if isinstance(module, ProjectionUpdate):
        return "reader" if module.reads_frozen_output else "own"
    if isinstance(module, (MixtureOfAdapters, ShallowPrompt)):
        return "reader"
    if isinstance(module, Adapter):
        before = module.seq_or_par == "sequential" and module.placement == "before"
        return "own" if before else "reader"
    return "own" if isinstance(module, PETLModule) else "replace"


class TaskRouter(PETLModule):
    """A frozen module of the shared backbone and each task's own module at its place.

    Arguments
    ---------
    module : torch.nn.Module
        The frozen module (kept as ``pretrained_module``).
    task_modules : dict
        ``{task index: module}``: a PETL module that wrapped ``module`` in that task's model (it is
        rewired onto the shared one here), or a trained replacement of it (a LayerNorm).
    """

    def __init__(self, module, task_modules):
        super().__init__()
        self.pretrained_module = module
        self.tasks = torch.nn.ModuleDict()
        self.kinds = {}
        for task, own in task_modules.items():
            kind = module_kind(own)
            if kind != "replace":
                # Prefix tuning reads the attention's projections: it needs the module itself.
                own.pretrained_module = module if isinstance(own, PrefixTuning) else _SharedSublayer(module)
            self.tasks[str(task)] = own
            self.kinds[int(task)] = kind

    def extra_repr(self):
        return ", ".join(f"task {t}: {k} {type(self.tasks[str(t)]).__name__}"
                         for t, k in sorted(self.kinds.items()))

    def forward(self, *args, **kwargs):
        segments = _SEGMENTS.get()
        kinds = [self.kinds.get(task) for task, _ in (segments or [])]
        if not segments or all(kind is None for kind in kinds):
            return self.pretrained_module(*args, **kwargs)
        total = sum(count for _, count in segments)
        spans, start = [], 0
        for _, count in segments:
            spans.append((start, start + count))
            start += count
        mask = _TOKEN_MASK.get()
        shared = [i for i, kind in enumerate(kinds) if kind in (None, "reader")]
        if shared:  # the frozen module, once, on the rows of every task that reads its output
            out = self._run(self.pretrained_module, args, kwargs, total, mask,
                            [segments[i] for i in shared], [spans[i] for i in shared])
            shared_rows = sum(segments[i][1] for i in shared)
        pieces, offset = [], 0
        for i, ((task, count), kind) in enumerate(zip(segments, kinds)):
            if kind in (None, "reader"):
                rows = take_rows(out, shared_rows, [(offset, offset + count)])
                offset += count
                if kind is None:
                    pieces.append(rows)
                    continue
            own = self.tasks[str(task)]
            if kind == "reader":
                view = own.pretrained_module
                inputs = take_rows((args, kwargs), total, [spans[i]])
                first = inputs[0][0] if inputs[0] else next(iter(inputs[1].values()))
                view.pending = (first, rows)
                try:
                    pieces.append(self._call(own, inputs, mask, total, [segments[i]], [spans[i]]))
                finally:
                    view.pending = None
            else:
                pieces.append(self._run(own, args, kwargs, total, mask, [segments[i]], [spans[i]]))
        return join_rows(pieces)

    @staticmethod
    def _run(module, args, kwargs, total, mask, segments, spans):
        """``module`` on the rows ``spans`` of the batch (arguments, token mask and task segments
        narrowed to them)."""
        inputs = take_rows((args, kwargs), total, spans)
        return TaskRouter._call(module, inputs, mask, total, segments, spans)

    @staticmethod
    def _call(module, inputs, mask, total, segments, spans):
        narrowed = None if mask is None else take_rows(mask, total, spans)
        with task_segments(segments), token_mask(narrowed):
            return module(*inputs[0], **inputs[1])


# ==================================================================== building from folders
def _outermost_petl_modules(lobe):
    """``{name: module}`` of the outermost PETL modules of a lobe (names of the plain lobe)."""
    found = {}
    for name, module in lobe.named_modules():
        if isinstance(module, PETLModule) and not any(name.startswith(n + ".") for n in found):
            found[name] = module
    return found


def _plain_name(name):
    return name.replace(".pretrained_module", "")


def strip_petl_modules(lobe):
    """Puts the frozen modules back in place of the PETL modules wrapping them, in place."""
    for name, module in sorted(_outermost_petl_modules(lobe).items(), key=lambda kv: -kv[0].count(".")):
        replace_module(lobe, name, module.pretrained_module)
    return lobe


def _trained_backbone_modules(lobe):
    """``{plain name: module}`` of the lobe's own modules (PETL modules left out) with trained
    parameters."""
    petl = _outermost_petl_modules(lobe)
    found = {}
    for name, module in lobe.named_modules():
        inside = [n for n in petl if name == n or name.startswith(n + ".")]
        if inside and not name.startswith(inside[0] + ".pretrained_module"):
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            found[_plain_name(name)] = module
    return found


def check_shareable(specs, folders):
    """Raises ``PETLModelError`` unless the models ``specs`` (of ``folders``) can share one frozen
    backbone: same family, base checkpoint (fingerprint), input settings and backbone options."""
    first, name = specs[0].backbone, folders[0]
    for spec, folder in zip(specs[1:], folders[1:]):
        mine = spec.backbone
        for what, a, b in (("backbone family", mine.family, first.family),
                           ("input settings", mine.input, first.input)):
            if a != b:
                raise PETLModelError(
                    f"{folder} and {name} differ in their {what} ({a} vs {b}): tasks share one "
                    "backbone only with the same inputs. Classify them separately (one --model each run)."
                )
        if mine.sha256() != first.sha256() or (not mine.sha256() and mine.name() != first.name()):
            raise PETLModelError(
                f"{folder} was trained on '{mine.name()}' and {name} on '{first.name()}', and the "
                "fingerprints of their weights differ: tasks share one frozen backbone only when "
                "they were trained on the same base checkpoint. Classify them separately."
            )
        differ = {k: (mine.options.get(k), first.options.get(k)) for k in first.options
                  if mine.options.get(k) != first.options.get(k)}
        if differ:
            shown = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
            raise PETLModelError(
                f"{folder} and {name} build the backbone differently ({shown}): tasks share one "
                "frozen backbone only when it is the same. Classify them separately."
            )
    if len(set(map(str, folders))) != len(folders):
        raise PETLModelError(f"The same model folder is given twice ({[str(f) for f in folders]}).")


def _check_frozen_tensors(spec, folder, shared):
    """Raises ``PETLModelError`` when a task's model changes backbone tensors other than
    LayerNorms (they would change the shared frozen computation): decided from the tensors its
    ``petl_weights.safetensors`` holds (its header), whatever else the folder says, before
    anything is built."""
    own = set(dict(shared.named_parameters()))
    changed = []
    for name in sorted(stored_shapes(Path(folder) / WEIGHTS_FILE)):
        key, _, rest = name.partition(".")
        if key != "petl_model" or not rest.startswith("adapted_model."):
            continue
        plain = _plain_name(rest[len("adapted_model."):])
        if plain in own:
            owner = shared.get_submodule(plain.rsplit(".", 1)[0]) if "." in plain else shared
            if not isinstance(owner, torch.nn.LayerNorm):
                changed.append(plain)
    if changed:
        raise PETLModelError(
            f"The '{spec.method.name}' model of {folder} trains backbone tensors ({len(changed)}, "
            f"e.g. {changed[0]}): its backbone is not the shared frozen one, so it cannot join "
            "other tasks (full fine-tuning and BitFit change the backbone). Load it alone with "
            "PETLModel.from_pretrained."
        )


def _check_frozen(spec, folder, modules, shared):
    """Raises ``PETLModelError`` when a task's modules cannot share one call of the frozen
    backbone (updates of WavLM's attention projections, whose weights WavLM reads directly)."""
    attention = {n for p in "qkvo" for n, _ in shared.modules_at_optional(p)}
    weight_read = sorted({type(m).__name__ for n, m in _outermost_petl_modules(modules["petl_model"].adapted_model).items()
                          if isinstance(m, ProjectionUpdate) and n in attention})
    if getattr(shared, "model_type", None) == "wavlm" and weight_read:
        raise PETLModelError(
            f"The {spec.method.name} model of {folder} changes WavLM's attention projections "
            f"({', '.join(weight_read)}), whose weights WavLM's attention reads instead of calling "
            "the modules: several tasks' updates cannot share one call. Load it alone with "
            "PETLModel.from_pretrained."
        )


def token_layout(lobe):
    """Tokens a task's modules add to the sequence (shallow prompts; 0 for every other method):
    tasks with the same layout share a stack."""
    return sum(m.prompt_len - m.replace for m in lobe.modules() if isinstance(m, ShallowPrompt))


class MultiTaskModel(torch.nn.Module):
    """One frozen backbone lobe with several tasks' PETL modules (``TaskRouter``) and heads.

    Build it with ``load_multitask``. ``forward(inputs, lengths, tasks)`` runs a stacked batch.

    Arguments
    ---------
    lobe : petl_modules.backbones.Backbone
        The shared lobe, its adapted points wrapped by ``TaskRouter``.
    classifiers : list of torch.nn.Module
        Each task's head.
    layouts : list of int
        Each task's ``token_layout``.
    layer_sums : dict, optional
        ``{task: WeightedLayerSum}`` of the tasks whose head reads the weighted sum of the layers'
        states (their ``layer_weights``; nothing of theirs is in the lobe).
    """

    def __init__(self, lobe, classifiers, layouts, layer_sums=None):
        super().__init__()
        self.lobe = lobe
        self.classifiers = torch.nn.ModuleList(classifiers)
        self.layouts = list(layouts)
        self.layer_weights = torch.nn.ParameterDict(
            {str(t): m.layer_weights for t, m in (layer_sums or {}).items()})

    def forward(self, inputs, lengths, tasks):
        """``inputs [N, ...]``, ``lengths [N]`` and ``tasks [N]`` (each row's task index) ->
        ``{task: (rows [n_t] long, logits [n_t, C_t])}``, rows indexing the batch."""
        tasks = torch.as_tensor(tasks, dtype=torch.long).cpu()
        found = {}
        for layout in sorted(set(self.layouts[t] for t in tasks.tolist())):
            order = [t for t in range(len(self.layouts)) if self.layouts[t] == layout]
            rows = {t: torch.nonzero(tasks == t).flatten() for t in order}
            rows = {t: r for t, r in rows.items() if r.numel()}
            index = torch.cat(list(rows.values()))
            device_index = index.to(inputs.device)
            summed = any(str(t) in self.layer_weights for t in rows)
            with task_segments([(t, r.numel()) for t, r in rows.items()]), \
                    (layer_states(self.lobe) if summed else contextlib.nullcontext([])) as states:
                hidden, mask = self.lobe(inputs.index_select(0, device_index),
                                         lengths.index_select(0, device_index.to(lengths.device)))
            start = 0
            for task, task_rows in rows.items():
                stop = start + task_rows.numel()
                mine = hidden[start:stop]
                if str(task) in self.layer_weights:  # the layers' states of its rows, summed
                    layers = torch.stack([s[start:stop] for s in states[:-1]] + [mine])
                    mine = weighted_sum(self.layer_weights[str(task)], layers)
                found[task] = (task_rows, self.classifiers[task](
                    mine, None if mask is None else mask[start:stop]))
                start = stop
        return found


def load_multitask(model_dirs, backbone_source=None, device="cpu", check=True):
    """Loads PETL model folders of one base checkpoint onto ONE frozen backbone (loaded once).

    Arguments
    ---------
    model_dirs : list of str or Path
        Local ``petl_model/`` folders (Hub repo ids are resolved by the caller).
    backbone_source : str, optional
        A copy of the base checkpoint.
    device : str
        Where to put the model.
    check : bool
        Check the base checkpoint's fingerprint.

    Returns
    -------
    (MultiTaskModel, list of dict)
        The model (eval mode, on ``device``) and each task's config (``ModelSpec.view``).

    Raises
    ------
    PETLModelError
        The folders cannot share a backbone (see the module docstring), before the models load.
    """
    if len(model_dirs) < 1:
        raise PETLModelError("Give at least one model folder.")
    read = [read_spec(d) for d in model_dirs]
    specs, folders = [r[0] for r in read], [r[1] for r in read]
    check_shareable(specs, folders)
    source = specs[0].backbone.source(backbone_source, where=str(folders[0]))
    with quiet_transformers(), preserved_rng():
        shared = specs[0].backbone.lobe_class()(source, **specs[0].backbone.options)
    if check:
        for spec, folder in zip(specs, folders):
            check_fingerprint(spec, shared, folder)
    shared.release_checkpoint()
    shared.requires_grad_(False)
    routed, classifiers, layouts, layer_sums = {}, [], [], {}
    for task, (spec, folder) in enumerate(zip(specs, folders)):
        # The file's shapes against the model's plan (meta device), then the task's modules on a
        # copy of the backbone, then moved onto the shared one.
        _check_frozen_tensors(spec, folder, shared)
        check_stored_shapes(planned_shapes(spec, shared)[0], Path(folder) / WEIGHTS_FILE, spec)
        modules = attach_modules(spec, copy.deepcopy(shared))
        petl_model, classifier = modules["petl_model"], modules["classifier"]
        _check_frozen(spec, folder, modules, shared)
        load_trained_state(modules, folder, spec)
        lobe = petl_model.adapted_model
        layouts.append(token_layout(lobe))
        if isinstance(petl_model, WeightedLayerSum):
            layer_sums[task] = petl_model
        for name, module in _trained_backbone_modules(lobe).items():
            routed.setdefault(name, {})[task] = module
        for name, module in _outermost_petl_modules(lobe).items():
            module.pretrained_module = shared.get_submodule(name)  # let go of the task's copy
            routed.setdefault(name, {})[task] = module
        classifiers.append(classifier.eval())
        del modules, petl_model, lobe  # the task's copy of the backbone goes with them
    for name in sorted(routed, key=lambda n: -n.count(".")):  # inner points first
        replace_module(shared, name, TaskRouter(shared.get_submodule(name), routed[name]))
    model = MultiTaskModel(shared, classifiers, layouts, layer_sums).to(device).eval()
    return model, [folder_view(spec, folder, source) for spec, folder in zip(specs, folders)]


class MultiTaskClassifier(torch.nn.Module):
    """Several tasks' PETL models on one frozen backbone (``PETLModel.from_folders``).

    The frozen computation runs once per batch for all tasks and each task's answer equals its
    model's alone (this module). Tasks are named by the folder or repo id
    given for them (``names``).

    - ``classify_file(path)``, ``classify_batch(wavs, wav_lens)``, ``classify_waveforms(list)``:
      ``{task: (out_prob [B, C_t], score [B], index [B], text_lab)}``, every file for every task.
    - ``classify_mixed(waveforms, tasks)``: each file names its task; ``[{"task", "label",
      "score", "probabilities"}]`` in the files' order.
    - ``classify_files(paths)``: ``[{"file", "tasks": {task: {"label", "score",
      "probabilities"}}}]`` and the files that failed, as ``PETLModel.classify_files``.
    """

    # The audio reading, batching and speed settings of one model are those of several.
    load_audio = PETLModel.load_audio
    load_input = PETLModel.load_input
    file_windows = PETLModel.file_windows
    share_window_features = PETLModel.share_window_features
    prepare_inputs = PETLModel.prepare_inputs
    set_speed = PETLModel.set_speed
    classify_files = PETLModel.classify_files

    def __init__(self, model, configs, names, device="cpu"):
        super().__init__()
        self.mods = torch.nn.ModuleDict({"multitask": model})
        self.configs = configs
        self.names = [str(n) for n in names]
        self.labels = {n: list(c["class_names"]) for n, c in zip(self.names, configs)}
        self.tasks = {n: Task.of_view(c) for n, c in zip(self.names, configs)}  # what each one's outputs mean
        self.input_processor = model.lobe.input_processor
        self.device = device
        self.precision = "fp32"
        self.int8 = None  # petl_modules.sharing.int8.use_int8: one onnxruntime graph per task
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
        """See ``PETLModel.from_folders``."""
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
        if self.int8 is not None:
            tasks = torch.as_tensor(tasks, dtype=torch.long).cpu()
            found = {}
            for task in sorted(set(tasks.tolist())):
                rows = torch.nonzero(tasks == task).flatten()
                found[task] = (rows, self.int8[task](inputs[rows], lengths[rows]))
            return found
        with autocast_context(self.device, self.precision):
            found = self.mods["multitask"](inputs.to(self.device), lengths.to(self.device), tasks)
        return {t: (rows, self.tasks[self.names[t]].probabilities(logits))
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
        return PETLModel.classify_batch(self, wavs, wav_lens)

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
                             "labels": self.tasks[name].predicted_labels(self.labels[name], p)}
        return rows

    def clip_scores(self, inputs, lengths):
        """Per clip of a processed batch: ``{task: [C_t] probabilities}``, or why it has none
        (``classify_files``)."""
        results = self.classify_inputs(inputs, lengths)
        rows = []
        for k in range(inputs.shape[0]):
            probs = {name: results[name][0][k].cpu() for name in self.names}
            # a task's non-finite scores fail that task's answer only (str: why)
            rows.append({name: p if bool(torch.isfinite(p).all()) else NON_FINITE
                         for name, p in probs.items()})
        return rows

    def file_result(self, clips):
        """A file's result from its clips: ``{"tasks": {task: {"label", "score", "probabilities",
        "labels"}}}``, windows pooled as the tasks were tested; a task whose scores were not finite
        on a clip: ``{"error": why}``."""
        tasks = {}
        for name in self.names:
            failed = [clip[name] for clip in clips if isinstance(clip[name], str)]
            if failed:  # this task has no answer for the file; the others stand
                tasks[name] = {"error": failed[0]}
                continue
            prob = pool_windows(torch.stack([clip[name] for clip in clips]), self.protocol.pooling)
            index = int(prob.argmax())
            tasks[name] = {"label": self.labels[name][index], "score": float(prob[index]),
                           "probabilities": prob,
                           "labels": self.tasks[name].predicted_labels(self.labels[name], prob)}
        return {"tasks": tasks}

    def top_k(self, task, probabilities, k):
        """``[{"label", "score"}]`` of the ``k`` most probable classes of ``task``."""
        return top_classes(self.labels[self.names[self.task_index(task)]], probabilities, k)

    def forward(self, wavs, wav_lens=None):
        """Same as ``classify_batch``."""
        return self.classify_batch(wavs, wav_lens)
