"""Explicit, typed options: an unknown keyword is an error that names the close matches, and a value
is checked against its option's type, allowed values and range.

``check_options`` is used wherever a mapping becomes keyword arguments (a method's
``adapter_kwargs``, a backbone lobe's options, a method config read from a model folder), so that a
misspelt key fails at build instead of vanishing into a ``**kwargs``. ``Option`` is one option's
definition (type, default, allowed values or range, a one-line help): the method configs
(``petl_modules.methods.config``) declare their fields with ``option``, the lobes their model
options with ``Option``.

Example
-------
>>> check_options({"reduction_rat": 8}, ["reduction_rate", "kernel_size"], "Adapter")
Traceback (most recent call last):
    ...
petl_modules.options.UnknownOptionError: unknown option 'reduction_rat' of Adapter; did you mean reduction_rate?
>>> Option(int, 31, "depthwise kernel", minimum=1).check("kernel_size", 0, "the adapter method")
Traceback (most recent call last):
    ...
petl_modules.options.OptionError: kernel_size=0 of the adapter method is out of range: it must be >= 1.
"""

import dataclasses
import difflib
import inspect
import math


class OptionError(ValueError):
    """An option value of the wrong type, outside its allowed values or its range."""


class UnknownOptionError(OptionError):
    """An option (keyword) that what receives it does not take."""


@dataclasses.dataclass(frozen=True)
class Option:
    """The definition of one option.

    Arguments
    ---------
    kind : type or tuple of type
        ``int``, ``float`` (an int is accepted), ``bool`` or ``str``; a tuple for an option that
        takes several (e.g. ``(int, str)`` for a count or ``all``).
    default : object
        The default value.
    help : str
        One line: what it sets.
    choices : tuple, optional
        The allowed values (of any kind).
    minimum, maximum : float, optional
        The range of a number (inclusive, unless ``exclusive_minimum``).
    exclusive_minimum : bool
        The number must be greater than ``minimum``.
    nullable : bool
        None is allowed.
    """

    kind: object
    default: object
    help: str
    choices: tuple = None
    minimum: float = None
    maximum: float = None
    exclusive_minimum: bool = False
    nullable: bool = False

    def kinds(self):
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    def allowed(self):
        """What the option takes, in words (``one of a|b``, ``a whole number >= 1``, ...)."""
        parts = []
        if self.choices is not None:
            parts.append("one of " + "|".join(map(_shown, self.choices)))
        numbers = [k for k in self.kinds() if k in (int, float)]
        if numbers:
            what = "a whole number" if numbers == [int] else "a number"
            parts.append(what + (" " + self.bounds() if self.bounds() else ""))
        if bool in self.kinds():
            parts.append("True or False")
        if str in self.kinds() and self.choices is None:
            parts.append("a string")
        if self.nullable:
            parts.append("null")
        return " or ".join(parts)

    def bounds(self):
        """The range of a number in words (``>= 1 and <= 12``), or ``""``."""
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '>='} {_shown(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"<= {_shown(self.maximum)}")
        return " and ".join(bounds)

    def check(self, name, value, owner):
        """``value`` of the option ``name`` (of ``owner``, for messages), checked; raises
        ``OptionError`` naming the option, the value and what it takes."""
        if value is None:
            if self.nullable:
                return None
            raise OptionError(f"{name}=None of {owner} is not allowed: it takes {self.allowed()}.")
        if self.choices is not None and _is_choice(value, self.choices):
            return value
        kinds = self.kinds()
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, bool):
            ok = bool in kinds
        elif isinstance(value, int):
            ok = int in kinds or float in kinds
        elif isinstance(value, float):
            ok = float in kinds
        else:  # a string outside the choices, or another type
            ok = isinstance(value, str) and str in kinds and self.choices is None
        if not ok:
            raise OptionError(f"{name}={value!r:.80} of {owner} is not valid: it takes "
                              f"{self.allowed()}.")
        if number:
            if not math.isfinite(value):
                raise OptionError(f"{name}={value!r} of {owner} is not a finite number.")
            low, high = self.minimum, self.maximum
            if (low is not None and (value <= low if self.exclusive_minimum else value < low)) or \
                    (high is not None and value > high):
                raise OptionError(f"{name}={value!r} of {owner} is out of range: it must be "
                                  f"{self.bounds()}.")
        return value


def _shown(value):
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_choice(value, choices):
    """``value`` is one of ``choices`` (True is not 1, 1 is not True)."""
    return any(type(value) is type(c) and value == c for c in choices)


def option(default, help, kind=None, **constraints):
    """A dataclass field holding one option (``Option`` in its metadata, under ``"option"``);
    ``kind`` defaults to the type of ``default``."""
    spec = Option(kind or type(default), default, help, **constraints)
    return dataclasses.field(default=default, metadata={"option": spec})


def check_options(given, known, owner):
    """Raises ``UnknownOptionError`` for the first key of ``given`` not in ``known``, naming ``owner``
    (who takes the options) and the closest known names (or all of them when none is close)."""
    known = list(known)
    for key in given:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=3)
        hint = (f"did you mean {' or '.join(close)}?" if close
                else f"its options are {', '.join(known) or 'none'}.")
        raise UnknownOptionError(f"unknown option '{key}' of {owner}; {hint}")


def keyword_names(function, skip=0):
    """The names ``function`` (a class or a callable) takes as keywords, its first ``skip``
    parameters left out; None when its signature cannot be read.

    A ``**kwargs`` adds nothing, except for a class whose ``__init__`` passes it on to its bases:
    their named parameters count too (``class MyAdapter(Adapter)`` keeps ``Adapter``'s options).
    """
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params[skip:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if isinstance(function, type) and any(p.kind == p.VAR_KEYWORD for p in params):
        for base in function.__mro__[1:]:
            init = base.__dict__.get("__init__")
            if init is None or base.__module__.startswith(("torch", "builtins")):
                continue
            inherited = keyword_names(init, skip=skip + 1) or []  # + self
            names += [n for n in inherited if n not in names]
    return names
