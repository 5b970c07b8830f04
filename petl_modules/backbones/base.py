"""The backbone contract: the registry from ``model_type`` to lobe, and the ``Backbone`` base class.

``Backbone(source, ...)`` reads ``model_type`` from the checkpoint's ``config.json`` and builds the
lobe of that family (``petl_modules.backbones.ast.ASTBackbone``; ``wav2vec2.Wav2Vec2Backbone`` for
wav2vec2, HuBERT and WavLM). Each lobe takes its own keyword options and ignores the other
families' (``Backbone.options``), so one ``recipe.yaml`` builds any of them. A lobe owns everything
that depends on the installed transformers version: module names (the insertion-point patterns,
pinned by tests), how inputs are prepared, and how the model is called. PETL methods never subclass
transformers internals; they wrap modules at the lobe's insertion points
(``petl_modules.methods.adapted.AdaptedBackbone``).

The contract a lobe file implements (see ``Backbone``): ``INSERTION_POINTS``, ``family``,
``input_kind``, ``input_processor``, ``forward``, ``hidden_size``/``num_layers``/``has_cls_token``,
``PROMPT_POSITION``; optional overrides of what trains (``trained_modules``, ``input_norm``,
``trainable_parameter_names``), of the eval-mode policy (``train``) and of the checkpoint format
(``checkpoint_state``, ``export_pretrained``, ``copy_preprocessor_config``: transformers
``save_pretrained`` folders by default). Hooks the methods call without knowing the family, keyed
by the attention module's class (a lobe file registers its own, ``attend_with_prefix.register``):
``attend_with_prefix`` (attention with extra keys/values, prefix tuning) and ``prefix_key_width``.
LoRA, DoRA, (IA)3 and VeRA need no hook: each is an ``nn.Linear`` look-alike whose ``weight`` is
the merged one. A lobe of one-file checkpoints (BEATs' ``.pt``) says which files it reads
(``reads_file``); ``lobe_class`` picks it for such a file. How a checkpoint is loaded safely and
fingerprinted: ``petl_modules.backbones.loading``.
"""


import copy
import fnmatch
import inspect
import logging
import re
import shutil
from pathlib import Path

import torch
import transformers

# The hooks of the methods live in the contract below backbones and methods (re-exported here).
from petl_modules.contract import (  # noqa: F401
    PETLModule,
    attend_with_prefix,
    prefix_attention,
    prefix_key_width,
)
# Loading a checkpoint (checkpoint_model_type, preserved_rng, quiet_transformers re-exported here).
from petl_modules.backbones.loading import (  # noqa: F401
    RefusedCheckpointError,
    checkpoint_model_type,
    file_fingerprint,
    loading_options,
    preserved_rng,
    quiet_transformers,
    read_config,
    state_fingerprint,
)
from petl_modules.options import check_options

logger = logging.getLogger(__name__)

# The narrowest released encoder of the supported families is 384 wide (whisper-tiny; AST and the
# wav2vec2 family: 768): a narrower backbone is a test or demo one (``Backbone.plumbing_only``).
MIN_PRETRAINED_HIDDEN = 256

# config.json ``model_type`` -> lobe class name (filled by ``register``).
FAMILIES = {}


def register(*model_types):
    """Class decorator: the lobe handles checkpoints of these ``model_type`` values."""

    def decorate(cls):
        for model_type in model_types:
            FAMILIES[model_type] = cls
        return cls

    return decorate



def lobe_for(family, model_type=None):
    """The lobe class of a checkpoint of ``model_type`` (its ``config.json``'s), or, when that is
    None (a checkpoint without a transformers config), of the backbone ``family``."""
    if model_type is not None and model_type in FAMILIES and FAMILIES[model_type].family == family:
        return FAMILIES[model_type]
    found = {cls for cls in FAMILIES.values() if cls.family == family}
    if model_type is None and len(found) == 1:
        return found.pop()
    raise ValueError(
        f"No backbone lobe for family '{family}'" + (f" and model_type '{model_type}'" if model_type else "")
        + f": this version of PETL-AST supports the model types {', '.join(sorted(FAMILIES))}."
    )


def lobe_class(source):
    """The lobe class of the checkpoint ``source``: a one-file checkpoint (e.g. BEATs' ``.pt``) by
    the lobe that reads such files (``Backbone.reads_file``), anything else by its
    ``config.json``'s ``model_type``."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        readers = {cls for cls in FAMILIES.values() if cls.reads_file(path)}
        if len(readers) == 1:
            return readers.pop()
        raise ValueError(
            f"Backbone '{source}' is a file that no lobe reads: the one-file checkpoints PETL-AST "
            f"reads are {', '.join(sorted(cls.FILE_KIND for cls in FAMILIES.values() if cls.FILE_KIND))}; "
            "a transformers checkpoint is a folder (config.json and weights) or a Hub id."
        )
    model_type = checkpoint_model_type(source)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise RefusedCheckpointError(
            f"Backbone '{source}' has model_type '{model_type}', which PETL-AST does not "
            f"support. Supported model types: {supported}."
        )
    return FAMILIES[model_type]



def checkpoint_fingerprint(source, exclude=()):
    """The fingerprint of the checkpoint ``source``'s weights as its lobe's format reads them
    (``Backbone.checkpoint_fingerprint``); a lobe that loaded ``source`` gives the same with
    ``fingerprint()``, without loading it again."""
    return lobe_class(str(source)).checkpoint_fingerprint(str(source), exclude)



def _layer_index(name):
    match = re.search(r"layers\.(\d+)", name)
    return int(match.group(1)) if match else None


class Backbone(torch.nn.Module):
    """A pre-trained encoder lobe with named insertion points.

    ``Backbone(source, **options)`` returns the lobe of the checkpoint's family (e.g.
    ``ASTBackbone``). Subclasses define ``INSERTION_POINTS`` (point name -> module-name patterns,
    relative to the lobe), ``input_processor`` (per-utterance features) and ``forward``.

    Arguments
    ---------
    source : str
        Hub id or local folder of a ``save_pretrained`` checkpoint.
    **options
        Options of the family's lobe (see its docstring).
    """

    INSERTION_POINTS = {}
    family = None
    # Whether the output's first two tokens are a CLS and a distillation token (AST's): what the
    # head's pooling ``cls_distill`` pools.
    distillation_token = False
    # The lobe's options that define the model (``Option``s, recorded in a model folder); the
    # others (attention kernel, gradient checkpointing, training-time masking) only change how it
    # runs. ``model_options`` gives their values.
    MODEL_OPTIONS = {}
    # What ``forward`` takes: "spectrogram" (features [B, T, F]) or "waveform" ([B, S]); read by
    # augmentation and the output cache instead of the family.
    input_kind = None
    # Where tokens added by prompt/prefix tuning go: (tokens kept before them, tokens they replace).
    PROMPT_POSITION = (0, 0)
    # A lobe of one-file checkpoints: what they are, for messages (``reads_file`` says which).
    FILE_KIND = None

    def __new__(cls, source=None, *args, **kwargs):
        if cls is Backbone:
            cls = lobe_class(source)
        return super().__new__(cls)

    def __init__(self, other_options=None):
        super().__init__()
        self.finetuned_prefixes = []
        self._check_other_options(other_options or {})

    @classmethod
    def reads_file(cls, path):
        """Whether the file ``path`` is a one-file checkpoint of this lobe (``lobe_class``); none by
        default (transformers checkpoints are folders)."""
        return False

    @property
    def takes_lengths(self):
        """Whether ``forward`` masks padding from the relative ``lengths`` (the waveform lobes; a
        spectrogram lobe whose processor does not pad to a fixed length), so that an exported
        graph takes them as an input."""
        return self.input_kind == "waveform"

    def model_options(self):
        """``{option: value}`` of ``MODEL_OPTIONS`` as this lobe was built."""
        return {name: getattr(self, name) for name in self.MODEL_OPTIONS}

    # ---------------------------------------------------------------- the checkpoint's weights
    def remember_checkpoint(self, state, missing=()):
        """Called by a lobe right after loading its checkpoint, before changing any of its
        tensors: ``state`` (``{name: tensor}``, e.g. the loaded model's ``state_dict()``) is
        fingerprinted as loaded (``fingerprint``), so that nothing loads the checkpoint a second
        time to identify it; ``missing``: names the checkpoint lacked."""
        self._checkpoint_state = dict(state)  # the loaded tensors, not copies
        self._checkpoint_missing = set(missing)
        self._fingerprint = state_fingerprint(self._checkpoint_state, self._checkpoint_missing)

    def remember_checkpoint_file(self, path):
        """``remember_checkpoint`` for a lobe whose checkpoint is one released file: its bytes are
        fingerprinted (``file_fingerprint``; ``kind: file``)."""
        self._checkpoint_state, self._checkpoint_missing = None, set()
        self._fingerprint = file_fingerprint(path)

    def fingerprint(self, exclude=()):
        """The fingerprint (``state_fingerprint``) of the checkpoint's weights as the lobe loaded
        them, ``exclude`` left out too; the same as ``checkpoint_fingerprint(source)``."""
        if not hasattr(self, "_fingerprint"):
            raise ValueError(f"The {self.family} lobe did not record its checkpoint's weights "
                             "(its __init__ must call remember_checkpoint after loading).")
        if set(exclude) <= self._checkpoint_missing or self._fingerprint["kind"] == "file":
            return dict(self._fingerprint)
        if self._checkpoint_state is None:
            raise ValueError("The lobe's checkpoint tensors were released (release_checkpoint): "
                             "take the fingerprint before.")
        return state_fingerprint(self._checkpoint_state, self._checkpoint_missing, exclude)

    def changed_from_checkpoint(self):
        """Whether the wrapped model's weights now differ from the checkpoint's as loaded (names,
        shapes, values; e.g. AST's position embeddings fitted to another ``max_frames``)."""
        own, loaded = self.pretrained_model().state_dict(), self._checkpoint_state
        if loaded is None:
            raise ValueError("The lobe's checkpoint tensors were released (release_checkpoint).")
        if set(own) != set(loaded):
            return True
        return any(name not in self._checkpoint_missing and (
            own[name].shape != loaded[name].shape or not torch.equal(own[name], loaded[name]))
            for name in own)

    def release_checkpoint(self):
        """Lets go of the tensors as loaded (``fingerprint`` keeps its value): a lobe that changed
        some (AST's position embeddings) no longer holds the originals."""
        self._checkpoint_state = None

    @classmethod
    def options(cls):
        """The keyword options this family's lobe takes (its ``__init__`` arguments)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD][2:]  # no self, source

    def _check_other_options(self, other_options):
        """Options meant for another family are ignored; an option of no family is an error.

        ``recipe.yaml`` passes every family's options (``max_frames`` for AST, ``clip_seconds``
        for wav2vec2, ...) to ``Backbone``: each lobe takes its own (``options()``).
        """
        known = sorted({name for lobe in FAMILIES.values() for name in lobe.options()})
        check_options(other_options, known, f"the {self.family} backbone (its own: "
                      f"{', '.join(self.options())}; other families' options are ignored)")

    # ---------------------------------------------------------------- insertion points
    def insertion_patterns(self, points):
        """Module-name patterns (fnmatch) of the named insertion ``points``."""
        patterns = []
        for point in points:
            if point not in self.INSERTION_POINTS:
                raise ValueError(
                    f"Unknown insertion point '{point}' for the {self.family} backbone. "
                    f"Known points: {', '.join(self.INSERTION_POINTS)}."
                )
            patterns.extend(self.INSERTION_POINTS[point])
        return patterns

    def locate(self, module_name, points):
        """Which of ``points`` ``module_name`` belongs to, and its layer index (or None)."""
        for point in points:
            if any(fnmatch.fnmatch(module_name, p) for p in self.INSERTION_POINTS[point]):
                return point, _layer_index(module_name)
        return None, _layer_index(module_name)

    def modules_at(self, point):
        """``[(name, module)]`` of the modules at an insertion point."""
        patterns = self.insertion_patterns([point])
        return [
            (name, module)
            for name, module in self.named_modules()
            if any(fnmatch.fnmatch(name, p) for p in patterns)
        ]

    # ---------------------------------------------------------------- what trains
    def layer_names(self):
        """Names of the transformer layer modules, bottom to top."""
        return [name for name, _ in self.modules_at("layer")]

    def bitfit_modules(self):
        """Modules whose biases BitFit trains: every Linear and LayerNorm of the transformer."""
        found = []
        for layer_name in self.layer_names() + [n for n, _ in self.modules_at_optional("final_norm")]:
            for name, module in self.get_submodule(layer_name).named_modules(prefix=layer_name):
                if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                    found.append(name)
        return found

    def modules_at_optional(self, point):
        """``modules_at`` for a point the family may not have (e.g. no final LayerNorm)."""
        return self.modules_at(point) if self.INSERTION_POINTS.get(point) else []

    def input_norm(self, point):
        """The insertion point of the LayerNorm that normalises only the input of the sublayer at
        ``point`` (``attention`` or ``ffn``), or None when the layout has none.

        Pre-LN layers (AST, large wav2vec2 models) have one before each sublayer (``ln_attention``,
        ``ln_ffn``); the LayerNorms of a post-LN layer sit on the residual stream itself, so none
        belongs to a sublayer alone (training one changes everything after it).
        """
        if point not in ("attention", "ffn"):
            raise ValueError(f"input_norm:{point}: the sublayer must be 'attention' or 'ffn'.")
        return {"attention": "ln_attention", "ffn": "ln_ffn"}[point]

    def trained_modules(self, point):
        """Names of the modules a ``trainable`` spec naming ``point`` trains: those at the point
        (a lobe whose embedding stage is several modules lists them all for ``embeddings``)."""
        return [n for n, _ in self.modules_at_optional(point)]

    def _top_layer_prefixes(self, spec):
        """Module names of ``top_layers:K``: the last K layers (``all``: every layer + embeddings)."""
        count = spec.split(":", 1)[1]
        layers = self.layer_names()
        if count == "all":
            count = len(layers)
        try:
            count = int(count)
            assert 0 <= count <= len(layers)
        except (ValueError, AssertionError):
            raise ValueError(
                f"trainable '{spec}': K must be 'all' or an integer from 0 to {len(layers)} "
                "(the backbone's number of layers)."
            ) from None
        prefixes = layers[len(layers) - count:]
        if count == len(layers):  # the whole transformer: its input embedding too
            prefixes += self.trained_modules("embeddings")
        return prefixes

    def trainable_parameter_names(self, specs):
        """Parameter names (relative to the lobe) that the ``trainable`` specs name.

        Specs: an insertion point name, ``final_norm_bias``, ``biases`` (BitFit), ``top_layers:K``
        (the last K transformer layers; ``top_layers:all`` = every layer and the embeddings, i.e.
        everything above a CNN feature encoder), ``input_norm:<attention|ffn>`` (the LayerNorm
        that feeds only that sublayer, see ``input_norm``), ``all``.
        """
        names = []
        for spec in specs:
            spec = str(spec)
            if spec == "all":
                prefixes = [""]
            elif spec == "biases":
                names += [f"{m}.bias" for m in self.bitfit_modules()
                          if self.get_submodule(m).bias is not None]
                continue
            elif spec == "final_norm_bias":
                names += [f"{m}.bias" for m, _ in self.modules_at_optional("final_norm")]
                continue
            elif spec.startswith("input_norm:"):
                norm = self.input_norm(spec.split(":", 1)[1])
                prefixes = [f"{n}." for n in self.trained_modules(norm)] if norm else []
            elif spec.startswith("top_layers:"):
                prefixes = [f"{n}." for n in self._top_layer_prefixes(spec)]
            elif spec in self.INSERTION_POINTS:
                prefixes = [f"{n}." for n in self.trained_modules(spec)]
            else:
                raise ValueError(
                    f"Unknown trainable spec '{spec}'. Use an insertion point "
                    f"({', '.join(self.INSERTION_POINTS)}), final_norm_bias, biases, "
                    "input_norm:attention, input_norm:ffn, top_layers:K or all."
                )
            names += [n for n, _ in self.named_parameters() if any(n.startswith(p) for p in prefixes)]
        return names

    def set_finetuned(self, specs):
        """Remembers which pretrained modules are fine-tuned as a whole (they follow train mode)."""
        prefixes = []
        for spec in map(str, specs):
            if spec == "all":
                prefixes.append("")
            elif spec.startswith("top_layers:"):
                prefixes += self._top_layer_prefixes(spec)
            elif spec in self.INSERTION_POINTS:
                prefixes += self.trained_modules(spec)
        self.finetuned_prefixes = prefixes

    def train(self, mode=True):
        """Train mode for PETL modules and fine-tuned layers; frozen pretrained modules stay in eval.

        SpeechBrain's Brain calls ``modules.train()`` every epoch; dropout (and layer drop) of a
        frozen backbone must stay off all the same.
        """
        super().train(mode)
        if not mode:
            return self
        petl_owned = set()
        for name, module in self.named_modules():
            if isinstance(module, PETLModule):
                petl_owned.update(n for n, _ in module.named_modules(prefix=name))
                inner = getattr(module, "pretrained_module", None)
                if isinstance(inner, torch.nn.Module):
                    prefix = f"{name}.pretrained_module"
                    petl_owned.difference_update(n for n, _ in inner.named_modules(prefix=prefix))
        for name, module in self.named_modules():
            if name in petl_owned or not name:
                continue
            plain = name.replace(".pretrained_module", "")
            module.training = any(
                plain == p or plain.startswith(p + ".") or p == "" for p in self.finetuned_prefixes
            )
        return self

    # ---------------------------------------------------------------- interface
    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_layers(self):
        return self.config.num_hidden_layers

    @property
    def has_cls_token(self):
        return False

    def plumbing_only(self):
        """None, or why training on this backbone checks the plumbing only: a hidden size below
        ``MIN_PRETRAINED_HIDDEN`` is no released pretrained encoder (the tiny random configs of
        ``petl_modules.tiny``, which the demo and the tests use, are 32 and 64 wide)."""
        if self.hidden_size >= MIN_PRETRAINED_HIDDEN:
            return None
        return (f"The backbone '{getattr(self, 'source', self.family)}' is {self.hidden_size} "
                f"wide, narrower than any released pretrained {self.family} encoder (those are "
                f"{MIN_PRETRAINED_HIDDEN} wide or more): like the demo's tiny random backbone, training "
                "on it checks the plumbing only, and its scores say nothing about the method or the "
                "data. For results, use a pretrained checkpoint (--backbone_source, docs/own_data.md).")

    def padding_dependence(self):
        """None, or why (naming the option to change) an utterance's output depends on how it is
        padded in its batch (the output cache refuses such a lobe). Default: None."""
        return None

    def forward(self, inputs, lengths=None):
        """``inputs`` (the input processor's output, batched) -> ``(hidden [B, T, D], mask)``.

        ``mask`` is ``[B, T]`` bool of valid tokens, or None when every token is valid.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- checkpoint format
    # Defaults for transformers ``save_pretrained`` folders (shared by the transformers lobes); a
    # lobe of another checkpoint format overrides these three in its own file.
    @classmethod
    def checkpoint_fingerprint(cls, source, exclude=()):
        """The fingerprint of ``source`` read here (``state_fingerprint`` of ``checkpoint_state``);
        a lobe of a one-file checkpoint overrides it with ``file_fingerprint``."""
        with quiet_transformers(), preserved_rng():
            state, missing = cls.checkpoint_state(source)
        return state_fingerprint(state, missing, exclude)

    @classmethod
    def checkpoint_state(cls, source):
        """``(state {name: tensor}, missing)`` of the weights of ``source`` as the lobe's format
        loads them (``checkpoint_fingerprint`` hashes them, as ``fingerprint`` does those a lobe
        loaded); ``missing``: names the checkpoint lacks (initialised at random on loading), left
        out of the fingerprint."""
        model, info = transformers.AutoModel.from_pretrained(
            str(source), output_loading_info=True, **loading_options(source, "eager"))
        return model.state_dict(), set(info.get("missing_keys", ()))

    def pretrained_model(self):
        """The one ``transformers.PreTrainedModel`` the lobe wraps."""
        found = [m for m in self.children() if isinstance(m, transformers.PreTrainedModel)]
        if len(found) != 1:
            raise ValueError(
                f"The {self.family} lobe holds {len(found)} transformers models; export expects one."
            )
        return found[0]

    def export_pretrained(self, out_dir):
        """Writes the backbone (PETL modules merged or absent) to ``out_dir`` as a checkpoint
        that ``Backbone(out_dir)`` loads (``save_pretrained``)."""
        self.pretrained_model().save_pretrained(out_dir)

    # ---------------------------------------------------------------- transformers' task class
    def feature_extractor(self):
        """The transformers feature extractor that prepares inputs as ``input_processor`` does
        (the run's settings), whose ``save_pretrained`` writes ``preprocessor_config.json``; None
        when transformers has none that does (then ``copy_preprocessor_config`` is used)."""

    def classification_model(self, classifier):
        """transformers' audio-classification model of the family holding this lobe's weights
        (PETL modules merged or absent) and ``classifier``'s head, when the head maps onto it
        exactly (what ``pipeline("audio-classification")`` loads).

        Returns
        -------
        (model or None, str or None)
            The model (labels still generic: the caller names them) and a note on inputs it
            sees otherwise than ``classify``; or None and why the head does not map.
        """
        return None, f"transformers has no audio-classification class for the {self.family} lobe"

    def _task_model(self, model_class, classifier, state=None, part=None, **config_changes):
        """``model_class`` (a transformers task class of this family) built on a copy of the
        lobe's config with ``classifier``'s number of classes and ``config_changes``; its base
        model (or its submodule ``part``) holds the lobe's weights (or ``state``)."""
        config = copy.deepcopy(self.pretrained_model().config)
        config.num_labels = classifier.head.out_features
        for name, value in config_changes.items():
            setattr(config, name, value)
        with quiet_transformers(), preserved_rng():
            model = model_class(config)
        target = model.get_submodule(part) if part else model.base_model
        target.load_state_dict(self.pretrained_model().state_dict() if state is None else state)
        return model.eval()

    @staticmethod
    def _identity_projector(model, classifier):
        """The ``projector`` (hidden -> ``classifier_proj_size``, set to the hidden size) of a
        transformers ``*ForSequenceClassification`` / ``WhisperForAudioClassification`` set to the
        identity, its ``classifier`` to our linear head: mean pooling then our head, exactly."""
        with torch.no_grad():
            model.projector.weight.copy_(torch.eye(model.projector.weight.shape[0]))
            model.projector.bias.zero_()
            model.classifier.load_state_dict(classifier.head.state_dict())
        return model

    @classmethod
    def copy_preprocessor_config(cls, source, out_dir):
        """Copies ``source``'s ``preprocessor_config.json`` (what the input processor reads) to
        ``out_dir``; False when it has none."""
        try:
            path = transformers.utils.cached_file(
                str(source), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
            )
        except (OSError, ValueError):
            return False
        if not path:
            return False
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(out_dir) / "preprocessor_config.json")
        return True
