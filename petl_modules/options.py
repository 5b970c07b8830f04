"""Explicit options: an unknown keyword is an error that names the close matches.

Used wherever a yaml mapping becomes keyword arguments (a method's ``adapter_kwargs``, a backbone
lobe's options), so that a misspelt key fails at build instead of vanishing into a ``**kwargs``.

Example
-------
>>> check_options({"reduction_rat": 8}, ["reduction_rate", "kernel_size"], "Adapter")
Traceback (most recent call last):
    ...
petl_modules.options.UnknownOptionError: unknown option 'reduction_rat' of Adapter; did you mean reduction_rate?
"""

import difflib
import inspect


class UnknownOptionError(ValueError):
    """An option (keyword) that what receives it does not take."""


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
