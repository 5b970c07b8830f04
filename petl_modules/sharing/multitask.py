"""Several tasks on one frozen backbone: the PETL model folders of one base checkpoint, run together.

Every task's PETL modules sit where they were trained: at the lobe's insertion points. At each
point that any task adapts, the frozen module is wrapped by a ``TaskRouter`` holding each task's
own module there. A batch stacks the tasks' rows (every file once per task, or a mixed batch where
each file names its task), sorted by task; the router knows from the context which rows belong to
which task (``task_segments``) and runs:

- the frozen module ONCE on the rows of every task that has no module there or whose module only
  reads the frozen module's output for the same input (``reader``: LoRA, parallel adapters,
  sequential adapters after the sublayer, Dense/Soft-MoA, shallow prompts); each such module then
  gets its rows of that output (``_SharedSublayer``) and adds its own part;
- each other task's module on its own rows (``own``: prompts before a layer, prefix tuning,
  sequential adapters before the sublayer): the frozen module runs inside it on those rows only;
- a task's trained LayerNorm (``replace``: the final LayerNorm, the LayerNorm before an adapted
  sublayer) on its rows.

Everything between the adapted points (the embeddings, the LayerNorms, the feed-forward and
attention matmuls no task adapts) runs once on the whole stack. So every (file, task) row passes
through the frozen weights exactly once, and the tasks' outputs are the models' own outputs.

Tasks whose token sequences differ in length (prompt tuning adds ``prompt_len`` tokens) run in
separate stacks, one per sequence length (``layout``), instead of being padded: padding would add
tokens, hence frozen computation, to every row of the shorter tasks; separate stacks add none.

What cannot share a frozen backbone is refused before the long work, with the reason: folders of
different base checkpoints (fingerprints), input settings or backbone options; methods that train
backbone tensors other than LayerNorms (full fine-tuning, BitFit); and LoRA on WavLM, whose
attention reads its projections' weights rather than calling them.
"""

import contextlib
import contextvars
import logging

import torch
from speechbrain.nnet.adapters import replace_module

from petl_modules.backbones import lobe_class
from petl_modules.contract import _TOKEN_MASK, PETLModule, token_mask
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.lora import LoRA
from petl_modules.methods.moa import MixtureOfAdapters
from petl_modules.methods.prompt import PrefixTuning, ShallowPrompt
from petl_modules.training.pretrained import (
    PETLModelError,
    check_fingerprint,
    load_petl_model,
    read_config,
    rebuild_modules,
)

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

    def forward(self, *args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        if self.pending is not None and first is self.pending[0]:
            return self.pending[1]
        return self.target(*args, **kwargs)


def module_kind(module):
    """``reader`` (the module calls the frozen one on its own input once and adds to, or
    transforms, its output), ``own`` (another PETL module: run on its rows with the frozen module
    inside) or ``replace`` (a trained plain module, e.g. a LayerNorm)."""
    if isinstance(module, (LoRA, MixtureOfAdapters, ShallowPrompt)):
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


def check_shareable(configs, backbone_source=None):
    """Raises ``PETLModelError`` unless the PETL model folders ``configs`` can share one frozen
    backbone: same family, base checkpoint (fingerprint), input settings and backbone options."""
    first = configs[0]
    names = [c["model_dir"] for c in configs]
    for config in configs[1:]:
        for key, what in (("family", "backbone family"), ("input", "input settings")):
            if config.get(key) != first.get(key):
                raise PETLModelError(
                    f"{config['model_dir']} and {first['model_dir']} differ in their {what} "
                    f"({config.get(key)} vs {first.get(key)}): tasks share one backbone only "
                    "with the same inputs. Classify them separately (one --model each run)."
                )
        mine, theirs = config.get("fingerprint") or {}, first.get("fingerprint") or {}
        if mine.get("sha256") != theirs.get("sha256") or (not mine and config["backbone_source"]
                                                          != first["backbone_source"]):
            raise PETLModelError(
                f"{config['model_dir']} was trained on '{config['backbone_source']}' and "
                f"{first['model_dir']} on '{first['backbone_source']}', and the fingerprints of "
                "their weights differ: tasks share one frozen backbone only when they were "
                "trained on the same base checkpoint. Classify them separately."
            )
    lobe = lobe_class(str(backbone_source or first["backbone_source"]))
    keys = [k for k in lobe.options() if k != "gradient_checkpointing"]
    for config in configs[1:]:
        differ = {k: (config["options"].get(k), first["options"].get(k)) for k in keys
                  if config["options"].get(k) != first["options"].get(k)}
        if differ:
            shown = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
            raise PETLModelError(
                f"{config['model_dir']} and {first['model_dir']} build the backbone differently "
                f"({shown}): tasks share one frozen backbone only when it is the same. Classify "
                "them separately."
            )
    if len(set(names)) != len(names):
        raise PETLModelError(f"The same model folder is given twice ({names}).")


def _check_frozen(config, shared):
    """Raises ``PETLModelError`` when a task's model trains backbone tensors other than
    LayerNorms (they would change the shared frozen computation)."""
    own = set(dict(shared.named_parameters()))
    changed = []
    for name in config["parameters"]:
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
            f"The '{config['method']}' model of {config['model_dir']} trains backbone tensors "
            f"({len(changed)}, e.g. {changed[0]}): its backbone is not the shared frozen one, so "
            "it cannot join other tasks (full fine-tuning and BitFit change the backbone). Load "
            "it alone with PETLClassifier.from_folder."
        )
    if getattr(shared, "model_type", None) == "wavlm" and any(".lora_" in n for n in config["parameters"]):
        raise PETLModelError(
            f"The LoRA model of {config['model_dir']} is on WavLM, whose attention reads its "
            "projections' weights instead of calling them: several tasks' LoRA updates cannot "
            "share one call. Load it alone with PETLClassifier.from_folder."
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
    """

    def __init__(self, lobe, classifiers, layouts):
        super().__init__()
        self.lobe = lobe
        self.classifiers = torch.nn.ModuleList(classifiers)
        self.layouts = list(layouts)

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
            with task_segments([(t, r.numel()) for t, r in rows.items()]):
                hidden, mask = self.lobe(inputs.index_select(0, device_index),
                                         lengths.index_select(0, device_index.to(lengths.device)))
            start = 0
            for task, task_rows in rows.items():
                stop = start + task_rows.numel()
                found[task] = (task_rows, self.classifiers[task](
                    hidden[start:stop], None if mask is None else mask[start:stop]))
                start = stop
        return found


def load_multitask(model_dirs, backbone_source=None, device="cpu", check=True):
    """Loads PETL model folders of one base checkpoint onto ONE frozen backbone.

    Arguments
    ---------
    model_dirs : list of str or Path
        Local ``petl_model/`` folders (Hub repo ids are resolved by the caller).
    backbone_source : str, optional
        Another local copy of the base checkpoint.
    device : str
        Where to put the model.
    check : bool
        Check the base checkpoint's fingerprint.

    Returns
    -------
    (MultiTaskModel, list of dict)
        The model (eval mode, on ``device``) and each task's config.

    Raises
    ------
    PETLModelError
        The folders cannot share a backbone (see the module docstring), before the models load.
    """
    if len(model_dirs) < 1:
        raise PETLModelError("Give at least one model folder.")
    configs = [read_config(d) for d in model_dirs]
    check_shareable(configs, backbone_source)
    source = str(backbone_source or configs[0]["backbone_source"])
    if check:
        check_fingerprint(configs[0], source)
    base, _ = rebuild_modules(configs[0], source)  # the base checkpoint's weights, fresh modules
    shared = strip_petl_modules(base["petl_model"].adapted_model)
    shared.requires_grad_(False)
    for config in configs:
        _check_frozen(config, shared)
    routed, classifiers, layouts = {}, [], []
    for task, config in enumerate(configs):
        modules, _ = load_petl_model(config["model_dir"], source, check=check)  # same weights
        lobe = modules["petl_model"].adapted_model
        layouts.append(token_layout(lobe))
        for name, module in _trained_backbone_modules(lobe).items():
            routed.setdefault(name, {})[task] = module
        for name, module in _outermost_petl_modules(lobe).items():
            module.pretrained_module = shared.get_submodule(name)  # let go of the task's backbone
            routed.setdefault(name, {})[task] = module
        classifiers.append(modules["classifier"])
        del modules, lobe  # the task's own copy of the backbone goes with them
    for name in sorted(routed, key=lambda n: -n.count(".")):  # inner points first
        replace_module(shared, name, TaskRouter(shared.get_submodule(name), routed[name]))
    model = MultiTaskModel(shared, classifiers, layouts).to(device).eval()
    return model, configs
