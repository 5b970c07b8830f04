"""JSON files that a run or a model folder holds: written atomically with the user's umask, read
with a size bound and no NaN/Infinity constants, checked against a schema of key -> types.

A file may come from someone else: ``read_json`` never reads more than ``max_bytes`` into memory,
refuses what is not plain JSON, and ``schema_problems`` lists what in an object is unexpected.
"""

import json
import os
import tempfile
from pathlib import Path

MAX_JSON_BYTES = 16 * 2 ** 20  # our JSON files are a few KB; never read a huge file into memory


def write_json_atomic(path, obj):
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename; the file gets the
    permissions the user's umask gives new files (``mkstemp`` alone would make it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(obj, stream, indent=2)
            stream.write("\n")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask():
    """The process's umask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_as_umask(folder):
    """Gives every file under ``folder`` the mode the umask gives new files (safetensors, and so
    transformers' and PEFT's ``save_pretrained``, write owner-only files)."""
    mode = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def human_size(num_bytes):
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as file managers show them)."""
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def read_json(path, what, error=ValueError, max_bytes=MAX_JSON_BYTES, hint=""):
    """The JSON content of ``path`` (``what`` it is, for messages); raises ``error`` when the file
    is larger than ``max_bytes`` (nothing read), not a regular file, or not plain JSON (NaN and
    Infinity refused, nesting too deep), the message ending with ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is not a regular file; {what} was expected there.{hint}")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path} is {human_size(size)}, too large for {what} (at most "
                    f"{human_size(max_bytes)}); not read.{hint}")

    def no_constants(name):
        raise ValueError(f"the JSON constant {name} is not allowed")

    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise error(f"{path} is not valid JSON ({reason}).{hint}") from None


def schema_problems(data, schema):
    """What in the JSON object ``data`` breaks ``schema`` (``{key: (types, required)}``): unknown
    and missing keys, values of other types (a bool is no int); a list of str."""
    problems = [f"unknown key '{key}'" for key in sorted(set(data) - set(schema))]
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                problems.append(f"missing key '{key}'")
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"'{key}' is {type(value).__name__} ({value!r:.60}), expected {allowed}")
    return problems


# ==================================================================== text others open
# A cell a spreadsheet would run as a formula (OWASP, CSV injection): one starting with "=", "@", a
# tab or a carriage return, or with "+" / "-" when it is not a number. Such a cell is written with a
# leading "'" (so is one that starts with "'", so that reading strips exactly one back).
FORMULA_STARTS = ("=", "@", "\t", "\r")


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value):
    """``value`` as a CSV cell that a spreadsheet shows as text (see above); numbers and other
    text unchanged. ``csv_value`` reads it back."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(FORMULA_STARTS + ("'",)) or (value[0] in "+-" and not _is_number(value)):
        return "'" + value
    return value


def csv_value(cell):
    """The text ``csv_cell`` wrote as ``cell``."""
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") else cell


def printable(text):
    """``text`` with its control characters (line breaks, tabs, NUL, ...) escaped as ``\\n``,
    ``\\t``, ``\\x00``, so that a label printed on one line stays one field of one line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                   for c in text)
