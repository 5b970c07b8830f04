"""Uploading a PETL model folder to the Hugging Face Hub, with a generated model card.

Usage::

    python -m petl_modules.push MODEL_DIR REPO_ID [--private] [--commit_message=...] [--dry_run]

``MODEL_DIR`` is a local ``petl_model/`` folder (or the experiment folder holding one); it is
checked as loading checks it (``read_spec``) before anything is sent. One commit uploads
``petl_config.json`` (as format 4: a folder of an older format is uploaded without the local paths
it recorded), ``petl_weights.safetensors``, ``metrics.json`` (when the run wrote one) and
``README.md``, the model card (``petl_modules.sharing.model_card``). The repo is created when it
does not exist (``--private`` makes a new repo private). Log in first (``hf auth login``, or
``HF_TOKEN``). ``--dry_run`` prints the card and the file list and uploads nothing.

Afterwards anyone can run ``python -m petl_modules.classify REPO_ID FILE...``.
"""

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import errors

from petl_modules.files import write_json_atomic
from petl_modules.model.folder import folder_view, read_spec
from petl_modules.model.hub import split_repo_id
from petl_modules.model.metrics_file import METRICS_FILE, MetricsError, read_metrics
from petl_modules.model.spec import CONFIG_FILE, WEIGHTS_FILE, PETLModelError
from petl_modules.sharing.model_card import is_hub_id, model_card

logger = logging.getLogger(__name__)


def stage_folder(model_dir, repo_id, out_dir):
    """Copies what is uploaded into ``out_dir`` and writes the card there; returns
    ``(config, card, [file names])``."""
    spec, folder = read_spec(model_dir)
    config = folder_view(spec, folder)
    try:
        metrics = read_metrics(folder)
    except MetricsError as err:
        raise PETLModelError(f"{err} Remove or repair it before pushing.") from None
    names = [CONFIG_FILE, WEIGHTS_FILE] + ([METRICS_FILE] if metrics is not None else [])
    for name in names[1:]:
        shutil.copyfile(folder / name, Path(out_dir) / name)
    # The config as format 4 (a folder of an older format loses the paths it recorded).
    write_json_atomic(Path(out_dir) / CONFIG_FILE, spec.to_json())
    card = model_card(config, metrics, repo_id)
    card.save(Path(out_dir) / "README.md")
    return config, card, names + ["README.md"]


def push_petl_model(model_dir, repo_id, private=False, commit_message=None):
    """Creates ``repo_id`` if needed and uploads the folder and its card in one commit.

    Returns
    -------
    huggingface_hub.CommitInfo
    """
    if split_repo_id(repo_id) is None or "@" in repo_id:
        raise PETLModelError(f"'{repo_id}' is not a Hub repo id: use owner/name (e.g. "
                             "my-lab/ast-lora).")
    with tempfile.TemporaryDirectory(prefix="petl_push_") as staging:
        config, _, names = stage_folder(model_dir, repo_id, staging)
        if not is_hub_id(config["backbone_source"]):
            logger.warning(f"The model was trained on a local checkpoint "
                           f"({config['backbone_source']}): users of {repo_id} will need a copy of "
                           "it (--backbone_source).")
        # private=None: a new repo gets the account's default visibility; an existing one keeps its own.
        huggingface_hub.create_repo(repo_id, private=True if private else None, exist_ok=True)
        return huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=staging, allow_patterns=names,
            commit_message=commit_message or f"Upload {config['method']} PETL model",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.push",
        description="Upload a PETL model folder to the Hugging Face Hub with a model card.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a local petl_model/ folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo (owner/name)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--commit_message", default=None, help="the commit's message")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the model card and the files; upload nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.dry_run:
            with tempfile.TemporaryDirectory(prefix="petl_push_") as staging:
                _, card, names = stage_folder(args.model_dir, args.repo_id, staging)
            print(card.content)
            print(f"Would upload to {args.repo_id}: {', '.join(names)}", file=sys.stderr)
            return 0
        commit = push_petl_model(args.model_dir, args.repo_id, args.private, args.commit_message)
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    except errors.HfHubHTTPError as err:
        print(f"Error: the upload to {args.repo_id} failed: {err}\nLog in with `hf auth login` "
              "(or set HF_TOKEN) with a token that may write to that namespace.", file=sys.stderr)
        return 2
    print(f"Pushed to {getattr(commit, 'repo_url', args.repo_id)} "
          f"(commit {getattr(commit, 'oid', '?')}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
