"""PETL model folders on the Hugging Face Hub: a repo id where a local folder is expected.

``classify``, ``PETLClassifier.from_folder`` and ``export`` take either a local ``petl_model/``
folder or a Hub repo id (``owner/name``, optionally ``owner/name@revision``). An existing local
path always wins; anything else that is a valid repo id is fetched with
``huggingface_hub.snapshot_download``, which keeps it in the Hugging Face cache (``HF_HOME`` /
``HF_HUB_CACHE``) and, with ``HF_HUB_OFFLINE=1``, reads only the cache. Only the files of a PETL
model folder are fetched (``HUB_FILES``); they are then read as data like any local folder
(``petl_modules.model.folder.read_spec``).

Example
-------
>>> resolve_model_dir("results/FSC/lora/10/petl_model")  # doctest: +SKIP
PosixPath('results/FSC/lora/10/petl_model')
>>> resolve_model_dir("my-lab/ast-fsc-lora")  # doctest: +SKIP
PosixPath('~/.cache/huggingface/hub/models--my-lab--ast-fsc-lora/snapshots/<commit>')
"""

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, errors

from petl_modules.model.metrics_file import METRICS_FILE
from petl_modules.model.spec import CONFIG_FILE, WEIGHTS_FILE, PETLModelError

# What a PETL model folder holds on the Hub (README.md: the model card).
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, "README.md"]


def split_repo_id(text):
    """``(repo_id, revision)`` when ``text`` is a Hub repo id (``owner/name``, ``name`` is not
    accepted: a bare word is taken as a local folder), with an optional ``@revision``; else None.

    Example
    -------
    >>> split_repo_id("my-lab/ast-fsc-lora@v1")
    ('my-lab/ast-fsc-lora', 'v1')
    >>> split_repo_id("./results/petl_model") is None
    True
    """
    text = str(text)
    repo_id, _, revision = text.partition("@")
    if text.startswith(("/", ".", "~")) or os.sep in repo_id.replace("/", "") \
            or repo_id.count("/") != 1:
        return None
    try:
        huggingface_hub.utils.validate_repo_id(repo_id)
    except errors.HFValidationError:
        return None
    return repo_id, (revision or None)


def resolve_model_dir(model_dir):
    """A local folder for ``model_dir``: itself when it exists locally, else the Hub snapshot of
    the repo id it names (downloaded once, then read from the cache).

    Raises
    ------
    PETLModelError
        Neither an existing local path nor a repo id that could be fetched, with what to do.
    """
    path = Path(str(model_dir)).expanduser()
    if path.exists():
        return path
    parts = split_repo_id(model_dir)
    if parts is None:
        raise PETLModelError(
            f"'{model_dir}' is not an existing folder (and not a Hugging Face Hub repo id of the "
            "form owner/name). Give the petl_model/ folder a training run wrote, or a Hub repo id."
        )
    repo_id, revision = parts
    where = f"the Hugging Face Hub repo '{repo_id}'" + (f" (revision {revision})" if revision else "")
    local_hint = (f" If you meant a local folder, '{model_dir}' does not exist: check the path "
                  "(relative paths start from the current folder).")
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=constants.HF_HUB_OFFLINE
        )
    except errors.LocalEntryNotFoundError:
        raise PETLModelError(
            f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be "
            "downloaded now (HF_HUB_OFFLINE=1 or no connection). Download it once with a "
            "connection (unset HF_HUB_OFFLINE), or point HF_HOME/HF_HUB_CACHE at a cache holding "
            "it." + local_hint
        ) from None
    except errors.GatedRepoError:
        raise PETLModelError(
            f"{where} is gated: accept its conditions on huggingface.co and log in "
            "(`hf auth login` or HF_TOKEN)."
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as err:
        raise PETLModelError(
            f"{where} was not found ({type(err).__name__}): check the name and revision; a private "
            "repo needs a login (`hf auth login` or HF_TOKEN)." + local_hint
        ) from None
    except (errors.HfHubHTTPError, OSError) as err:
        raise PETLModelError(f"Could not download {where}: {err}" + local_hint) from None
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise PETLModelError(
            f"{where} holds no {CONFIG_FILE}: it is not a PETL model folder (push one with "
            "python -m petl_modules.push FOLDER REPO_ID)."
        )
    return folder
