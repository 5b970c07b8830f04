"""Where the repository's method files and recipes are, and their yaml read as plain trees.

The recipes (``recipes/<DATASET>/``) and method files (``hparams/*.yaml``) are not part of the
installed package: they live in the repository, beside ``petl_modules/``. ``project_root`` finds
that folder: ``$PETL_AST_ROOT`` if set, else the first folder holding both ``hparams/`` and
``recipes/`` among the folder of the installed package, the current directory and their parents.
The package's own repository comes first: method files are instantiated and generators imported,
so a folder the user merely works in (an unpacked download) must never supply them.
"""

import os
from pathlib import Path


class ProjectRootError(FileNotFoundError):
    """The repository folder (with hparams/ and recipes/) was not found."""


def _is_root(folder):
    return (folder / "hparams").is_dir() and (folder / "recipes").is_dir()


def project_root():
    """The repository folder holding ``hparams/`` and ``recipes/``.

    Raises
    ------
    ProjectRootError
        Naming where it looked and how to point at it (``PETL_AST_ROOT``).
    """
    given = os.environ.get("PETL_AST_ROOT")
    if given:
        if not _is_root(Path(given)):
            raise ProjectRootError(f"PETL_AST_ROOT={given} does not hold hparams/ and recipes/.")
        return Path(given).resolve()
    starts = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for folder in (start, *start.parents):
            if _is_root(folder):
                return folder
    raise ProjectRootError(
        f"Cannot find the PETL-AST repository (a folder with hparams/ and recipes/) above "
        f"{' or '.join(str(s) for s in starts)}: run from inside the repository, or set "
        "PETL_AST_ROOT=/path/to/the/repository."
    )


def recipes_folder():
    """``<repository>/recipes``."""
    return project_root() / "recipes"


def hparams_folder():
    """``<repository>/hparams``: the method files."""
    return project_root() / "hparams"


def read_yaml_tree(path):
    """The top-level mapping of a repository yaml file (``recipe.yaml``, a method file, a dataset
    yaml) as a round-trip tree: tags are kept as data, nothing is built or evaluated. ``{}`` when
    the file is missing, unreadable or not a mapping (callers name what they looked for)."""
    import ruamel.yaml

    try:
        with open(path) as stream:
            tree = ruamel.yaml.YAML().load(stream)
    except (OSError, ruamel.yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}
