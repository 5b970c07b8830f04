"""A method is a config class: its options as typed fields, and how it builds its PETL modules.

Every method has one dataclass (a subclass of ``MethodConfig``, registered with
``@register_method``) whose fields are the options that define its model, each declared with
``petl_modules.options.option``: type, default, allowed values or range and a one-line help. The
config is the single definition of an option: building it checks the values (a wrong one is an
``OptionError`` naming the option and what it takes), ``from_dict`` refuses unknown options with
the close matches, and the model folder's ``petl_config.json``, the model card, the results
labels and the docs' option tables are made from it. ``build(backbone)`` attaches the method's
PETL modules to a backbone lobe (``AdaptedBackbone``) and decides what else trains.

The registry (``METHODS``: name -> config class) is filled by the method files' decorators; the
names are those of the method files ``hparams/<name>.yaml``, whose ``method_config`` node builds
the same class from the file's options (``--key=value`` overridable).

Example
-------
>>> from petl_modules.methods import method_config
>>> method_config("lora", {"reduction_rate": 64}).to_dict()
{'lora_targets': 'Wq,Wv', 'reduction_rate': 64, 'lora_alpha': 8, 'init': 'identity'}
>>> method_config("lora", {"reduction_rat": 64})
Traceback (most recent call last):
    ...
petl_modules.options.UnknownOptionError: unknown option 'reduction_rat' of the lora method; did you mean reduction_rate?
"""

import dataclasses
import difflib
import functools
from typing import ClassVar

from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.options import OptionError, check_options

# name -> config class (filled by ``register_method``).
METHODS = {}


def register_method(cls):
    """Class decorator (above ``@dataclasses.dataclass``): registers a ``MethodConfig`` subclass
    under its ``name``; its constructor then names the close matches of a misspelt option."""
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}.name must be an identifier, got {cls.name!r}.")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"Two config classes for the method '{cls.name}': "
                         f"{METHODS[cls.name].__name__} and {cls.__name__}.")
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **values):
        check_options(values, list(cls.options()), cls.owner())
        init(self, *args, **values)

    cls.__init__ = checked_init
    METHODS[cls.name] = cls
    return cls


def method_class(name):
    """The config class of the method ``name``; ``OptionError`` naming the close matches."""
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(str(name), list(METHODS), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise OptionError(f"Unknown method '{name}': the methods are {', '.join(sorted(METHODS))}.{hint}")


def method_config(name, values=None):
    """The config of the method ``name`` with ``values`` (a dict of its options; the others keep
    their defaults), checked."""
    return method_class(name).from_dict(values or {})


@dataclasses.dataclass
class MethodConfig:
    """The base of every method's config: subclasses are dataclasses whose fields are options.

    Class attributes of a subclass: ``name`` (the registry name, = ``hparams/<name>.yaml``) and
    ``summary`` (what trains, one line for the docs). Override ``build`` and, for checks across
    fields, ``check``.
    """

    name: ClassVar[str] = None
    summary: ClassVar[str] = ""
    # The BibTeX entry of the method's own paper, when it is not one of the two PETL-AST papers
    # (the model card cites it).
    citation: ClassVar[str] = ""
    # The keys of the method's non-tensor state (``state``), kept in a model folder beside its
    # config; none for the methods so far.
    state_keys: ClassVar[tuple] = ()

    def __post_init__(self):
        owner = self.owner()
        for field in dataclasses.fields(self):
            spec = field.metadata.get("option")
            if spec is not None:
                setattr(self, field.name, spec.check(field.name, getattr(self, field.name), owner))
        self.check()

    # ---------------------------------------------------------------- options
    @classmethod
    def owner(cls):
        """How messages name the method (``the lora method``)."""
        return f"the {cls.name} method"

    @classmethod
    def options(cls):
        """``{name: Option}`` of the method's options, in their order."""
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}

    @classmethod
    def defaults(cls):
        """``{name: default}`` of the method's options."""
        return {name: spec.default for name, spec in cls.options().items()}

    @classmethod
    def from_dict(cls, values):
        """The config with ``values`` (``{option: value}``; unknown options are an
        ``UnknownOptionError`` naming the close matches), checked."""
        if not isinstance(values, dict):
            raise OptionError(f"The options of {cls.owner()} must be a mapping, got "
                              f"{type(values).__name__}.")
        return cls(**values)

    def to_dict(self):
        """``{option: value}``: plain JSON data."""
        return {name: getattr(self, name) for name in self.options()}

    def check(self):
        """Checks across options (after each was checked alone); raises ``OptionError``."""

    # ---------------------------------------------------------------- the model
    def build(self, backbone):
        """Attaches the method's PETL modules to ``backbone`` (a lobe) and sets what else trains;
        returns the ``AdaptedBackbone``."""
        raise NotImplementedError

    def state(self, petl_model):
        """The method's non-tensor state to keep in a model folder beside its config: plain JSON
        values under ``state_keys`` (e.g. the seed of fixed random tensors); ``{}`` for every
        method so far. A model folder stores it as ``method.state``; ``restore`` puts it back
        after ``build``. (Tensors that are not trained but must be kept, e.g. shared random
        projections, are buffers of the method's modules: the weights file holds them.)"""
        return {}

    def restore(self, petl_model, state):
        """Puts back the state that ``state`` returned (after ``build``); nothing by default."""

    @classmethod
    def check_state(cls, state):
        """Raises ``OptionError`` unless ``state`` holds only the method's ``state_keys``."""
        unknown = sorted(set(state) - set(cls.state_keys))
        if unknown:
            kept = (f"its state keys are {', '.join(cls.state_keys)}" if cls.state_keys
                    else "it keeps no state")
            raise OptionError(f"{cls.owner()} has no state {', '.join(map(repr, unknown))}: {kept}.")


def build_petl_model(backbone, config):
    """``config.build(backbone)``: the method's modules on the lobe (``petl_model`` of
    ``petl_modules/training/recipe.yaml``)."""
    if not isinstance(config, MethodConfig):
        raise OptionError(f"method_config must be a method's config (a MethodConfig), got "
                          f"{type(config).__name__}: see hparams/lora.yaml.")
    return config.build(backbone)


def adapted(backbone, adapter_class=None, points=(), trainable=(), **adapter_kwargs):
    """``AdaptedBackbone(backbone, adapter_class, points, trainable, adapter_kwargs)``: the
    ``build`` of most methods."""
    return AdaptedBackbone(backbone, adapter_class=adapter_class, insertion_points=list(points),
                           trainable=list(trainable), adapter_kwargs=adapter_kwargs)


def options_table():
    """The docs' table of every method's options (``docs/methods.md``), as Markdown lines."""
    lines = ["| method | option | type | default | allowed | what it sets |",
             "|---|---|---|---|---|---|"]
    for name in sorted(METHODS):
        cls = METHODS[name]
        for option, spec in cls.options().items():
            kinds = "/".join(k.__name__ for k in spec.kinds())
            allowed = spec.allowed().replace("|", " \\| ")
            lines.append(f"| `{name}` | `{option}` | {kinds} | `{spec.default}` | {allowed} | "
                         f"{spec.help} |")
    return lines
