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
on WavLM's attention projections, whose weights WavLM reads rather than calling them
(``petl_modules.model.multitask_classifier``: the loading, its checks and ``MultiTaskClassifier``).
"""

import contextlib
import contextvars

import torch

from petl_modules.contract import _TOKEN_MASK, PETLModule, token_mask
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.layer_sum import layer_states, weighted_sum
from petl_modules.methods.lora import ProjectionUpdate
from petl_modules.methods.moa import MixtureOfAdapters
from petl_modules.methods.prompt import PrefixTuning, ShallowPrompt

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


# ==================================================================== the PETL modules of a lobe
def outermost_petl_modules(lobe):
    """``{name: module}`` of the outermost PETL modules of a lobe (names of the plain lobe)."""
    found = {}
    for name, module in lobe.named_modules():
        if isinstance(module, PETLModule) and not any(name.startswith(n + ".") for n in found):
            found[name] = module
    return found


def plain_name(name):
    return name.replace(".pretrained_module", "")


def token_layout(lobe):
    """Tokens a task's modules add to the sequence (shallow prompts; 0 for every other method):
    tasks with the same layout share a stack."""
    return sum(m.prompt_len - m.replace for m in lobe.modules() if isinstance(m, ShallowPrompt))


class MultiTaskModel(torch.nn.Module):
    """One frozen backbone lobe with several tasks' PETL modules (``TaskRouter``) and heads.

    Build it with ``multitask_classifier.load_multitask``. ``forward(inputs, lengths, tasks)`` runs
    a stacked batch.

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
