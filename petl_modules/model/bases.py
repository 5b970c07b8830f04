"""The base checkpoint of a model folder: how it is named without a local path, and found again.

A model folder names its base the way another machine can use it:

- ``hub_id``: the Hugging Face Hub id the run loaded it by (``MIT/ast-finetuned-...``), also when
  the run was given a snapshot folder of the Hugging Face cache
  (``.../models--MIT--ast-.../snapshots/<commit>``);
- otherwise ``local_name``: the name of the local folder (or checkpoint file) the run loaded, with
  the weights' fingerprint; whoever loads the model points at a copy with ``--backbone_source``
  (``backbone_source=``), and the fingerprint says whether it is the same checkpoint.

On the machine that trained it, a model on a local base loads without ``--backbone_source``: every
save of a model folder records ``fingerprint -> absolute folder`` in a file of the user's cache,
``$PETL_AST_HOME/local_bases.json`` (default ``~/.cache/petl-ast``), never in the model folder;
loading looks the fingerprint up there (and checks it again once the base is loaded).
"""

import os
import re
from pathlib import Path

from filelock import FileLock

from petl_modules.files import read_json, write_json_atomic

LOCAL_BASES_FILE = "local_bases.json"
MAX_PATHS_PER_BASE = 8


def home():
    """``$PETL_AST_HOME``, or ``$XDG_CACHE_HOME/petl-ast``, or ``~/.cache/petl-ast``."""
    given = os.environ.get("PETL_AST_HOME")
    if given:
        return Path(given).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "petl-ast"


def hub_id_of_cache_folder(path):
    """``owner/name`` when ``path`` is a snapshot folder of the Hugging Face cache
    (``models--owner--name/snapshots/<commit>``), else None."""
    path = Path(path)
    if path.parent.name != "snapshots" or not path.parent.parent.name.startswith("models--"):
        return None
    parts = path.parent.parent.name[len("models--"):].split("--")
    return "/".join(parts) if all(parts) and len(parts) <= 2 else None


def identify(source):
    """``{"hub_id": ..., "local_name": ...}`` (one of them None) of the ``backbone_source`` a model
    was built from: a local folder or file by its name (a Hub cache snapshot by its Hub id), and
    anything else as the Hub id it is."""
    path = Path(str(source)).expanduser()
    if path.exists():
        hub_id = hub_id_of_cache_folder(path.resolve())
        if hub_id:
            return {"hub_id": hub_id, "local_name": None}
        return {"hub_id": None, "local_name": path.resolve().name}
    return {"hub_id": str(source), "local_name": None}


def _record_path():
    return home() / LOCAL_BASES_FILE


def _read_record():
    path = _record_path()
    if not path.is_file():
        return {}
    try:
        record = read_json(path, "the record of local base checkpoints", max_bytes=4 * 2 ** 20)
    except ValueError:
        return {}  # a damaged record only costs a --backbone_source
    bases = record.get("bases") if isinstance(record, dict) else None
    if not isinstance(bases, dict):
        return {}
    return {k: [p for p in v if isinstance(p, str)] for k, v in bases.items() if isinstance(v, list)}


def remember_local_base(source, sha256):
    """Records that the local checkpoint ``source`` has the weights fingerprint ``sha256`` (in the
    user's cache, for ``find_local_base``); a source that is not a local path is not recorded.
    Never fails a save: an unwritable cache only means a later ``--backbone_source``."""
    path = Path(str(source)).expanduser()
    if not sha256 or not path.exists() or hub_id_of_cache_folder(path.resolve()):
        return
    try:
        home().mkdir(parents=True, exist_ok=True)
        with FileLock(str(_record_path()) + ".lock", timeout=30):
            bases = _read_record()
            paths = [str(path.resolve())] + [p for p in bases.get(sha256, []) if p != str(path.resolve())]
            bases[sha256] = [p for p in paths if Path(p).exists()][:MAX_PATHS_PER_BASE]
            write_json_atomic(_record_path(), {"format_version": 1, "bases": bases})
    except OSError:
        pass


def find_local_base(sha256, local_name=None):
    """The local folder recorded for the fingerprint ``sha256`` (named ``local_name``, when given)
    that still exists, or None."""
    for candidate in _read_record().get(sha256, []):
        path = Path(candidate)
        if path.exists() and (local_name is None or path.name == local_name):
            return str(path)
    return None


def valid_local_name(name):
    """Whether ``name`` is a plain folder or file name (no path)."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and not re.search(r"[/\\\x00]", name)


def is_local_path(text):
    """Whether ``text`` reads as a path of this machine (absolute, home-relative, ./ or ../,
    Windows), rather than a Hub id or a plain name."""
    text = str(text)
    return (text.startswith(("/", "~", "./", "../", "\\")) or bool(re.match(r"[A-Za-z]:[\\/]", text))
            or text.count("/") > 1)


def shareable_name(source):
    """How a file meant to be shared names the checkpoint or folder ``source``: its Hub id (a Hub
    cache snapshot by its id), or the last part of a local path, never the path."""
    if source is None:
        return None
    if Path(str(source)).expanduser().exists():
        found = identify(source)
        return found["hub_id"] or found["local_name"]
    text = str(source).rstrip("/\\")
    return re.split(r"[/\\]", text)[-1] or text if is_local_path(text) else text
