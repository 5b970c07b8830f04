"""Several tasks on one frozen backbone, from their PETL model folders: the loading, with its
checks that the folders can share one backbone, and ``MultiTaskClassifier``, the classifier of
``PETLModel.from_folders`` (how the tasks share the backbone: ``petl_modules.model.multitask``).
"""

import copy
from pathlib import Path

import torch
from speechbrain.nnet.adapters import replace_module
from speechbrain.utils.data_utils import batch_pad_right

from petl_modules.backbones.base import preserved_rng, quiet_transformers
from petl_modules.methods.layer_sum import WeightedLayerSum
from petl_modules.methods.lora import ProjectionUpdate
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
from petl_modules.model.multitask import (
    MultiTaskModel,
    TaskRouter,
    outermost_petl_modules,
    plain_name,
    token_layout,
)
from petl_modules.model.petl_model import NON_FINITE, PETLModel, top_classes
from petl_modules.model.precision import autocast_context
from petl_modules.model.spec import WEIGHTS_FILE, PETLModelError
from petl_modules.model.task import Task
from petl_modules.model.windows import EvalProtocol, pool_windows



# ==================================================================== building from folders
def _trained_backbone_modules(lobe):
    """``{plain name: module}`` of the lobe's own modules (PETL modules left out) with trained
    parameters."""
    petl = outermost_petl_modules(lobe)
    found = {}
    for name, module in lobe.named_modules():
        inside = [n for n in petl if name == n or name.startswith(n + ".")]
        if inside and not name.startswith(inside[0] + ".pretrained_module"):
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            found[plain_name(name)] = module
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
        plain = plain_name(rest[len("adapted_model."):])
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
    lobe = modules["petl_model"].adapted_model
    weight_read = sorted({type(m).__name__ for n, m in outermost_petl_modules(lobe).items()
                          if isinstance(m, ProjectionUpdate) and n in attention})
    if getattr(shared, "model_type", None) == "wavlm" and weight_read:
        raise PETLModelError(
            f"The {spec.method.name} model of {folder} changes WavLM's attention projections "
            f"({', '.join(weight_read)}), whose weights WavLM's attention reads instead of calling "
            "the modules: several tasks' updates cannot share one call. Load it alone with "
            "PETLModel.from_pretrained."
        )


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
        for name, module in outermost_petl_modules(lobe).items():
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
