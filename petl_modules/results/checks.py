"""The checks of every value the results tool reads from a file (a ``results.json``, the published
numbers): each returns the value (possibly normalised) or raises ``ResultsError`` saying what is
wrong, in a user's words."""

import json
import math


class ResultsError(ValueError):
    """A results.json that cannot be used (the message says why)."""


MAX_COUNT = 2 ** 53  # parameter counts: whole numbers that a float holds exactly
MAX_RESULTS_BYTES = 64 * 2 ** 20  # larger files are skipped unread (never a 10 GB string)


def describe(value):
    """``value`` as a user reads it in an error: its JSON type and (shortened) text."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    text = json.dumps(value, allow_nan=True, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def check_name(value, what):
    if not isinstance(value, str) or not value.strip():
        raise ResultsError(f"{what} is {describe(value)}, not a non-empty string")
    return value


def check_optional_string(value, what):
    if value is not None and not isinstance(value, str):
        raise ResultsError(f"{what} is {describe(value)}, not a string")
    return value


def check_param_count(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ResultsError(f"{what} is {describe(value)}, not a parameter count (a whole number >= 0)")
    return value


def number_in(low, high, meaning):
    def check(value, what):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not low <= value <= high):
            raise ResultsError(f"{what} is {describe(value)}, not {meaning}")
        return float(value)
    return check


check_percent = number_in(0, math.inf, "a percentage (a number >= 0)")


def check_fold_id(value, what):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ResultsError(f"{what} is {describe(value)}, not a fold number (or null)")
    return value


def check_fold_ids(value, what):
    if not isinstance(value, list):
        raise ResultsError(f"{what} is {describe(value)}, not a list of fold numbers")
    return [check_fold_id(v, f"{what}[{k}]") for k, v in enumerate(value)]


PLAIN = (str, int, float, bool, type(None))


def check_options(value, what):
    """A fold's ``hparams``: option name -> a plain value or a list of plain values."""
    if not isinstance(value, dict):
        raise ResultsError(f"{what} is {describe(value)}, not an object of options")
    for key, option in value.items():
        if isinstance(option, list):
            bad = [v for v in option if not isinstance(v, PLAIN) or v is None]
        else:
            bad = [] if isinstance(option, PLAIN) else [option]
        if bad:
            raise ResultsError(f"{what}.{key} is {describe(option)}, not a plain value "
                               "(string, number, boolean, null or a list of them)")
    return value
