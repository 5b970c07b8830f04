"""Running a recipe in-process, as ``python recipes/<D>/train.py ARGS`` would (no subprocess)."""

import importlib.util
import sys

from conftest import REPO


def recipe_module(recipe):
    """The module of ``recipes/<recipe>/train.py`` (imported once, under a unique name)."""
    name = f"petl_recipe_{recipe.lower()}_train"
    if name not in sys.modules:
        path = REPO / "recipes" / recipe / "train.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_in_process(recipe, argv):
    """Runs the recipe's ``main(argv)``; returns results.json's content, or the error message the
    recipe exits with (a ``str``)."""
    module = recipe_module(recipe)
    try:
        return module.main(argv)
    except SystemExit as exit_:
        return str(exit_.code)
