"""What defines a trained model, and how ``petl_config.json`` holds it (``format_version`` 4).

A ``ModelSpec`` is a model in plain Python: its base checkpoint (``BackboneRef``: Hub id or local
name, family, weights fingerprint, the lobe's model options), its method (a config from the
registry, ``petl_modules.methods``) and that method's non-tensor state, the head's pooling, the
task (and a multi-label model's thresholds), the evaluation protocol and the class names.
``to_json`` writes it as format 4 (``docs/model_folder.md``); ``spec_from_json`` reads formats 1
to 4. Reading is data only: every value is checked against the schema and the method's and lobe's
option definitions (types, allowed values, ranges); nothing in the file is parsed as YAML,
imported or instantiated, and unknown keys are refused. Folders of formats 1-3 stored every
option of their run: what defines the model is taken from them (the method's options, the lobe's,
the pooling) and the rest is never read.
"""

import dataclasses
import re

from petl_modules import __version__
from petl_modules.backbones import FAMILIES, lobe_for
from petl_modules.files import schema_problems
from petl_modules.methods import METHODS, MethodConfig, method_class
from petl_modules.methods.classifier import POOLINGS
from petl_modules.model.bases import find_local_base, identify, valid_local_name
from petl_modules.model.task import SingleLabel, Task
from petl_modules.model.windows import EvalProtocol
from petl_modules.options import OptionError, check_options

FOLDER_NAME = "petl_model"
CONFIG_FILE = "petl_config.json"
WEIGHTS_FILE = "petl_weights.safetensors"
FORMAT_VERSION = 4  # 2: no yaml text; 3: evaluation, task, thresholds; 4: only what defines the model
LIBRARY = "petl-ast"


class PETLModelError(ValueError):
    """A PETL model folder that cannot be loaded as asked (missing files, wrong backbone)."""


PLAIN_SCALARS = (str, int, float, bool, type(None))


def plain(value, depth=0):
    """True for JSON data of plain types (no nesting beyond lists/dicts of scalars)."""
    if isinstance(value, PLAIN_SCALARS):
        return True
    if isinstance(value, list) and depth < 2:
        return all(plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 2:
        return all(isinstance(k, str) and plain(v, depth + 1) for k, v in value.items())
    return False


# ==================================================================== the base checkpoint
@dataclasses.dataclass
class BackboneRef:
    """The base checkpoint of a model (``petl_modules.model.bases``).

    ``hub_id`` or ``local_name`` names it (exactly one); ``family`` and ``model_type`` (None for
    a checkpoint without a transformers ``config.json``) choose its lobe; ``fingerprint`` (see
    ``petl_modules.backbones.loading.state_fingerprint``) identifies its weights; ``options`` are the
    lobe's model options (``MODEL_OPTIONS``) and ``input`` its input processor's settings (what an
    ONNX client computes). ``path``: formats 1-3 recorded the run's ``backbone_source`` (a path or
    a Hub id) and load from it by default; never written.
    """

    family: str
    model_type: str = None
    hub_id: str = None
    local_name: str = None
    fingerprint: dict = None
    options: dict = dataclasses.field(default_factory=dict)
    input: dict = None
    path: str = None

    @classmethod
    def of(cls, lobe, source):
        """The reference of the lobe ``lobe`` built from ``source``."""
        processor = getattr(lobe, "input_processor", None)
        return cls(family=lobe.family, model_type=getattr(getattr(lobe, "config", None), "model_type", None),
                   fingerprint=lobe.fingerprint(), options=lobe.model_options(),
                   input=processor.config() if hasattr(processor, "config") else None,
                   **identify(source))

    def name(self):
        """How messages and model cards name the base: its Hub id or its local name (never a
        path of the machine that trained it)."""
        return self.hub_id or self.local_name or self.path

    def lobe_class(self):
        return lobe_for(self.family, self.model_type)

    def sha256(self):
        return (self.fingerprint or {}).get("sha256")

    def source(self, given=None, where="the model"):
        """What to load the base from: ``given`` (``--backbone_source``), else the Hub id (or the
        source formats 1-3 recorded), else the local folder recorded for its fingerprint on this
        machine; ``PETLModelError`` saying what to pass when there is none."""
        if given:
            return str(given)
        if self.path or self.hub_id:
            return self.path or self.hub_id
        found = find_local_base(self.sha256(), self.local_name) if self.sha256() else None
        if found:
            return found
        short = (self.sha256() or "")[:12]
        raise PETLModelError(
            f"{where} was trained on a local checkpoint folder named '{self.local_name}' "
            f"(weights fingerprint {short or 'not recorded'}), which is not known on this machine: "
            f"pass --backbone_source=/path/to/{self.local_name} (backbone_source= in Python), a "
            "copy of that checkpoint; its fingerprint is checked."
        )

    def to_json(self):
        return {"hub_id": self.hub_id, "local_name": self.local_name, "family": self.family,
                "model_type": self.model_type, "fingerprint": self.fingerprint,
                "options": dict(self.options), "input": self.input}


# ==================================================================== the model
@dataclasses.dataclass
class ModelSpec:
    """Everything that defines a trained model (see the module docstring)."""

    backbone: BackboneRef
    method: MethodConfig
    class_names: list
    pooling: str = "mean"
    task: Task = dataclasses.field(default_factory=SingleLabel)
    evaluation: EvalProtocol = dataclasses.field(default_factory=EvalProtocol)
    method_state: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION  # the version it was read from
    library: dict = None  # who wrote it (format 4)
    extra: dict = None  # formats 1-3: what they recorded beside the model (dataset, fold), shown in views

    def check(self):
        """Raises ``PETLModelError`` when the parts do not fit together."""
        problems = []
        if not isinstance(self.method, MethodConfig):
            problems.append(f"method is {type(self.method).__name__}, not a method config")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling {self.pooling!r:.40} is not one of {', '.join(POOLINGS)}")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            problems.append("class_names must be at least two distinct names")
        try:
            self.task.check(len(self.class_names))
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise PETLModelError("This model does not hold together: " + "; ".join(problems) + ".")
        return self

    def to_json(self):
        """The format-4 ``petl_config.json`` content."""
        return {
            "format_version": FORMAT_VERSION,
            "library": {"name": LIBRARY, "version": __version__},
            "backbone": self.backbone.to_json(),
            "method": {"name": self.method.name, "config": self.method.to_dict(),
                       "state": dict(self.method_state)},
            "head": {"pooling": self.pooling},
            "task": self.task.to_json(),
            "evaluation": self.evaluation.config(),
            "class_names": list(self.class_names),
        }

    def view(self, model_dir=None, source=None):
        """A flat summary (the keys of the format 1-3 configs, which exporters, the model card and
        side files read): family, model_type, backbone_source (the one used), fingerprint, method,
        options (the method's, the lobe's and the pooling), input, evaluation, pooling,
        class_names, task, thresholds, format_version, model_dir."""
        backbone = self.backbone
        return {
            "format_version": self.format_version,
            "family": backbone.family,
            "model_type": backbone.model_type,
            "backbone_source": str(source or backbone.name()),
            "fingerprint": backbone.fingerprint,
            "method": self.method.name,
            "options": {**backbone.options, **self.method.to_dict(), "pooling": self.pooling},
            "input": backbone.input,
            "evaluation": self.evaluation.config(),
            "pooling": self.pooling,
            "class_names": list(self.class_names),
            "task": self.task.kind,
            "thresholds": self.task.thresholds,
            **(self.extra or {}),
            "model_dir": None if model_dir is None else str(model_dir),
        }


# ==================================================================== reading
def spec_from_json(data, where):
    """The ``ModelSpec`` of a ``petl_config.json``'s content (any format version); raises
    ``PETLModelError`` naming every problem found."""
    if not isinstance(data, dict):
        raise PETLModelError(f"{where} is not a PETL model config: expected a JSON object, found "
                             f"{type(data).__name__}.")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise PETLModelError(
            f"{where} has format_version {version}, written by a newer version of PETL-AST; this "
            f"version ({__version__}) reads up to {FORMAT_VERSION}. Update PETL-AST to load it."
        )
    problems = []
    spec = None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(f"'format_version' is {version!r:.40}, not a version (1 to {FORMAT_VERSION})")
    else:
        reader = _read_format4 if version == 4 else _read_legacy
        spec = reader(data, problems)
    if problems or spec is None:
        raise PETLModelError(
            f"{where} is not a valid PETL model config ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:20])
            + "\nIt was edited by hand or not written by PETL-AST; nothing in it was run."
        )
    spec.format_version = version
    return spec


FORMAT4_SCHEMA = {
    "format_version": ((int,), True),
    "library": ((dict,), True),
    "backbone": ((dict,), True),
    "method": ((dict,), True),
    "head": ((dict,), True),
    "task": ((dict,), True),
    "evaluation": ((dict,), True),
    "class_names": ((list,), True),
}
BACKBONE_SCHEMA = {
    "hub_id": ((str, type(None)), True),
    "local_name": ((str, type(None)), True),
    "family": ((str,), True),
    "model_type": ((str, type(None)), True),
    "fingerprint": ((dict, type(None)), True),
    "options": ((dict,), True),
    "input": ((dict, type(None)), False),
}
FINGERPRINT_SCHEMA = {
    "kind": ((str,), False),
    "sha256": ((str,), True),
    "tensors": ((int,), False),
    "excluded": ((list,), False),
    "bytes": ((int,), False),
}
FINGERPRINT_KINDS = ("tensors", "file")  # hashed loaded tensors | the checkpoint file's bytes
METHOD_SCHEMA = {"name": ((str,), True), "config": ((dict,), True), "state": ((dict,), True)}
HEAD_SCHEMA = {"pooling": ((str,), True)}
TASK_SCHEMA = {"kind": ((str,), True), "thresholds": ((list, type(None)), True)}
LIBRARY_SCHEMA = {"name": ((str,), True), "version": ((str,), True)}


def _section(data, key, schema, problems):
    """``data[key]`` when it is an object that fits ``schema`` (problems named ``key.x``), else None."""
    value = data.get(key)
    if not isinstance(value, dict):
        return None
    found = [f"{key}: {p}" for p in schema_problems(value, schema)]
    problems += found
    return None if found else value


def _read_format4(data, problems):
    problems += schema_problems(data, FORMAT4_SCHEMA)
    backbone = _section(data, "backbone", BACKBONE_SCHEMA, problems)
    method = _section(data, "method", METHOD_SCHEMA, problems)
    head = _section(data, "head", HEAD_SCHEMA, problems)
    task = _section(data, "task", TASK_SCHEMA, problems)
    _section(data, "library", LIBRARY_SCHEMA, problems)
    ref = _backbone(backbone, problems) if backbone else None
    config = _method(method["name"], method["config"], problems) if method else None
    if method and not plain(method["state"]):
        problems.append("method.state holds something other than plain values")
    elif config is not None:
        try:
            config.check_state(method["state"])
        except OptionError as err:
            problems.append(f"method.state: {err}")
    return _assemble(data, ref, config, head and head["pooling"],
                     task and _task(task["kind"], task["thresholds"], problems), data.get("evaluation"),
                     method["state"] if method else {}, problems)


def _backbone(section, problems):
    """The ``BackboneRef`` of a format-4 ``backbone`` section (None after a problem)."""
    count = len(problems)
    hub_id, local_name = section["hub_id"], section["local_name"]
    if (hub_id is None) == (local_name is None):
        problems.append("backbone: exactly one of hub_id and local_name must be given")
    elif hub_id is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", hub_id):
        problems.append(f"backbone.hub_id {hub_id!r:.60} is not a Hugging Face Hub id")
    elif local_name is not None and not valid_local_name(local_name):
        problems.append(f"backbone.local_name {local_name!r:.60} is not a plain folder name")
    fingerprint = section["fingerprint"]
    if fingerprint is not None:
        problems += [f"backbone.fingerprint: {p}" for p in schema_problems(fingerprint, FINGERPRINT_SCHEMA)]
        if fingerprint.get("kind", "tensors") not in FINGERPRINT_KINDS:
            problems.append(f"backbone.fingerprint.kind is not one of {', '.join(FINGERPRINT_KINDS)}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(fingerprint.get("sha256"))):
            problems.append("backbone.fingerprint.sha256 is not a SHA-256 hex digest")
        if not all(isinstance(n, str) for n in fingerprint.get("excluded", [])):
            problems.append("backbone.fingerprint.excluded must be a list of names")
    if section.get("input") is not None and not plain(section["input"]):
        problems.append("backbone.input holds something other than plain values")
    options = _lobe_options(section["family"], section["model_type"], section["options"], problems)
    if len(problems) > count:
        return None
    return BackboneRef(family=section["family"], model_type=section["model_type"], hub_id=hub_id,
                       local_name=local_name, fingerprint=fingerprint, options=options,
                       input=section.get("input"))


def _lobe_options(family, model_type, values, problems):
    """``values`` checked as the model options of the lobe of ``family``/``model_type``."""
    try:
        lobe = lobe_for(family, model_type)
        owner = f"the {family} backbone"
        check_options(values, list(lobe.MODEL_OPTIONS), owner)
        return {name: spec.check(name, values.get(name, spec.default), owner)
                for name, spec in lobe.MODEL_OPTIONS.items()}
    except (OptionError, ValueError) as err:
        problems.append(f"backbone: {err}")
        return None


def _method(name, values, problems):
    """The method config of ``name`` with ``values`` (None after a problem)."""
    if not name.isidentifier():
        problems.append(f"'method' is {name!r:.60}, not a method name")
        return None
    if name not in METHODS:
        problems.append(f"the method '{name}' is not one of this version's methods "
                        f"({', '.join(sorted(METHODS))}); it was trained with a method you do not have")
        return None
    try:
        return method_class(name).from_dict(values)
    except (OptionError, TypeError) as err:
        problems.append(f"method: {err}")
        return None


def _assemble(data, ref, method, pooling, task, evaluation, state, problems, extra=None):
    """The ``ModelSpec`` of checked parts, the shared checks run (None after a problem)."""
    names = data.get("class_names")
    if isinstance(names, list) and not all(isinstance(n, str) for n in names):
        problems.append("'class_names' must be a list of strings")
    protocol = None
    if isinstance(evaluation, dict):
        expected = set(EvalProtocol().config())
        if set(evaluation) != expected:
            problems.append(f"'evaluation' must hold exactly {', '.join(sorted(expected))}")
        else:
            try:
                protocol = EvalProtocol.from_options(evaluation)
            except (TypeError, ValueError) as err:
                problems.append(f"evaluation: {err}")
    if problems or None in (ref, method, pooling, task, protocol):
        return None
    spec = ModelSpec(ref, method, list(names), pooling, task, protocol, dict(state),
                     library=data.get("library"), extra=extra)
    try:
        spec.check()
    except PETLModelError as err:
        problems.append(str(err).split(": ", 1)[1].rstrip("."))
        return None
    return spec


# -------------------------------------------------------------------- formats 1 to 3
LEGACY_SCHEMA = {
    # key: (allowed JSON types, required)
    "format_version": ((int,), True),
    "family": ((str,), True),
    "model_type": ((str, type(None)), False),
    "backbone_source": ((str,), True),
    "fingerprint": ((dict, type(None)), False),
    "method": ((str,), True),
    "options": ((dict,), True),
    "input": ((dict, type(None)), False),
    "evaluation": ((dict,), False),  # format_version 3
    "pooling": ((str, type(None)), False),
    "dataset": ((str, type(None)), False),
    "fold": ((int, str, type(None)), False),
    "class_names": ((list,), True),
    "parameters": ((list,), True),
    "buffers": ((list,), True),
    "trained_params": ((int,), False),
    # format_version 1 stored the run's composed yaml; it is kept as text and never parsed.
    "hyperparams": ((str,), False),
    # format_version 3: single_label (the default of older folders) or multilabel, and the
    # per-class thresholds of a multi-label model.
    "task": ((str,), False),
    "thresholds": ((list, type(None)), False),
}


def _read_legacy(data, problems):
    """A folder of format 1-3: the run's options held every setting; the model's are taken."""
    problems += schema_problems(data, LEGACY_SCHEMA)
    if problems:
        return None
    options = data["options"]
    ref = None
    if data["family"] not in {cls.family for cls in FAMILIES.values()}:
        problems.append(f"'family' {data['family']!r:.40} is not a backbone family of this version")
    else:
        try:
            lobe = lobe_for(data["family"], data.get("model_type"))
        except ValueError as err:
            problems.append(str(err))
        else:
            values = {k: options[k] for k in lobe.MODEL_OPTIONS if k in options}
            lobe_options = _lobe_options(data["family"], data.get("model_type"), values, problems)
            fingerprint = data.get("fingerprint")
            if fingerprint is not None and (not isinstance(fingerprint.get("sha256"), str)
                                            or not isinstance(fingerprint.get("excluded", []), list)):
                problems.append("'fingerprint' is malformed (needs a sha256 string and an "
                                "'excluded' list)")
            if lobe_options is not None:
                ref = BackboneRef(family=data["family"], model_type=data.get("model_type"),
                                  fingerprint=fingerprint, options=lobe_options, input=data.get("input"),
                                  path=data["backbone_source"],
                                  **identify_recorded(data["backbone_source"]))
    method = None
    if data["method"] in METHODS:
        cls = METHODS[data["method"]]
        method = _method(data["method"], {k: options[k] for k in cls.options() if k in options}, problems)
    else:
        _method(data["method"], {}, problems)
    pooling = options.get("pooling", data.get("pooling") or "mean")
    task = _task(data.get("task", "single_label"), data.get("thresholds"), problems)
    extra = {k: data.get(k) for k in ("dataset", "fold", "trained_params") if k in data}
    return _assemble(data, ref, method, pooling, task,
                     data.get("evaluation") or EvalProtocol().config(), {}, problems, extra)


def _task(kind, thresholds, problems):
    """The ``Task`` of a folder's task kind and thresholds (None after a problem, named)."""
    try:
        return Task.of(kind, thresholds)
    except ValueError as err:
        problems.append(str(err))
        return None


def identify_recorded(backbone_source):
    """``identify`` of a source a folder of format 1-3 recorded, without looking at this machine:
    an absolute or relative path is named by its last part, anything else is a Hub id."""
    text = str(backbone_source)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return {"hub_id": None, "local_name": text.rstrip("/").rsplit("/", 1)[-1] or text}
    return {"hub_id": text, "local_name": None}
