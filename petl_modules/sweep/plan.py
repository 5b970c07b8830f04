"""A sweep's plan: every run of a sweep file (``PlannedRun``: its recipe command and folder),
checked before anything runs."""

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from petl_modules import results as results_tool
from petl_modules.paths import hparams_folder, read_yaml_tree
from petl_modules.sweep.resources import DEFAULT_RESOURCES
from petl_modules.sweep.sweep_file import (
    ENTRY_KEYS,
    SWEEP_SET,
    SweepError,
    check_keys,
    check_path,
    check_values,
    dataset_yaml,
    grid_of,
    mapping,
    read_setup,
    read_sweep_file,
)
from petl_modules.training.arguments import (
    CommandLineError,
    as_argument,
    parse_run_options,
    read_value,
    run_option_names,
    split_arguments,
)

COMMON_YAML = Path(__file__).resolve().parents[1] / "training" / "recipe.yaml"


@dataclass
class PlannedRun:
    """One recipe command of a sweep."""

    name: str  # its folder below the sweep's output folder
    recipe: str
    method: str
    options: dict  # every --key=value but data_folder, output_folder, seed, fold
    seed: int
    fold: object  # None (official splits), a fold number, or "all"
    folder: Path
    data_folder: Path
    gpus: int = 0  # set by the launcher: > 1 runs the recipe through torchrun


@dataclass
class Settings:
    """What of a sweep file applies to every run (the command line's replacements applied)."""

    where: str  # the sweep file, for messages
    root: Path  # the output folder
    data_root: Path
    common: dict  # top-level overrides and --set
    grid: dict  # the top-level grid
    seeds: list
    folds: object  # "each", "all" or a list of fold numbers
    variant: object  # its name, or None
    variant_options: dict
    setup: dict


def format_value(value):
    """A value as it appears in a run's folder name (``key=value``; lists ``[a, b]``)."""
    if isinstance(value, bool):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def slug(options):
    """A folder name from ``options``: ``key=value,key=value`` (``default`` when empty)."""
    if not options:
        return "default"
    text = ",".join(f"{k}={format_value(v)}" for k, v in options.items())
    text = re.sub(r"[^A-Za-z0-9._,=+-]", "-", text)
    if len(text) > 120:  # file systems limit a name to 255 bytes
        import hashlib

        text = text[:100] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return text


def plan(path, variant=None, data_root=None, output_folder=None, extra=None):
    """Every run of the sweep file ``path`` (``PlannedRun``), checked before anything runs.

    Arguments
    ---------
    path : str or Path
        The sweep file.
    variant : str, optional
        A name under the file's ``variants:``: its overrides apply to every run whose
        configuration has the key (e.g. ``init`` only for methods that have it); its runs go to
        ``<output_folder>-<variant>``.
    data_root, output_folder : str, optional
        Replace the file's ``data_root`` / ``output_folder``.
    extra : dict, optional
        ``--set key=value`` options for every run (not part of the folder names).

    Returns
    -------
    (runs, sweep) : the runs and the file's data (with ``root``: the output folder used, and
    ``setup``: its checked ``setup:``).

    Raises
    ------
    SweepError
        With one message per problem found (values that are not plain data are all listed).
    """
    path = Path(path)
    sweep = read_sweep_file(path)
    settings = read_settings(sweep, str(path), variant, data_root, output_folder, extra)
    runs = plan_runs(sweep, settings)
    for run in runs[:1] + [r for r in runs[1:] if r.options != runs[0].options]:
        try:  # the recipe's own parser takes the command (run options: --precision=..., ...)
            hparams_file, run_args, _ = split_arguments(recipe_command(run)[1:][1:])
            parse_run_options(hparams_file, run_args)
        except CommandLineError as err:
            raise SweepError(f"{settings.where}: run {run.name}: {err}") from None
    finish_sweep(sweep, settings)
    return runs, sweep


def read_settings(sweep, where, variant, data_root, output_folder, extra):
    """The ``Settings`` of a sweep file's data, checked (``plan``'s arguments win)."""
    root = Path(output_folder or sweep.get("output_folder") or f"results/sweeps/{Path(where).stem}")
    variants = mapping(sweep.get("variants"), f"{where}: variants")
    variant_options = {}
    if variant:
        if variant not in variants:
            raise SweepError(f"--variant={variant}: {where} has no such variant "
                             f"(variants: {', '.join(variants) or 'none'}).")
        entry = mapping(variants[variant], f"{where}: variants.{variant}")
        variant_options = mapping(entry.get("overrides"), f"{where}: variants.{variant}.overrides")
        root = Path(f"{root}-{variant}")
    check_path(root, f"{where}: output_folder (or --output_folder)")
    data_root = Path(data_root or sweep.get("data_root") or "data")
    check_path(data_root, f"{where}: data_root (or --data_root)")
    common = {**mapping(sweep.get("overrides"), f"{where}: overrides"), **(extra or {})}
    common_grid = grid_of(sweep.get("grid"), f"{where}: grid")
    seeds = sweep.get("seeds", [10])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise SweepError(f"{where}: seeds must be a list of whole numbers, not {seeds!r}.")
    folds_choice = sweep.get("folds", "each")
    if not (folds_choice in ("each", "all") or (isinstance(folds_choice, list) and all(
            isinstance(f, int) and not isinstance(f, bool) for f in folds_choice) and folds_choice)):
        raise SweepError(f"{where}: folds must be 'each' (one run per fold), 'all' (one run of "
                         f"every fold) or a list of fold numbers, not {folds_choice!r}.")
    setup = read_setup(sweep.get("setup"), where)
    return Settings(where, root, data_root, common, common_grid, seeds, folds_choice, variant,
                    variant_options, setup)


def plan_runs(sweep, settings):
    """Every run of every recipe x method entry x grid point x seed x fold, its options checked
    (unknown keys, values that are not plain data: all listed in one ``SweepError``)."""
    where = settings.where
    recipes = mapping(sweep["recipes"], f"{where}: recipes")
    entries = sweep["methods"]
    if not isinstance(entries, list):
        raise SweepError(f"{where}: methods must be a list of method entries (see docs/sweeps.md).")
    # the yaml keys, and SpeechBrain's run options (--ckpt_interval_steps, --precision, ...)
    common_keys = set(read_yaml_tree(COMMON_YAML)) | set(run_option_names())
    runs, seen, all_known, problems = [], {}, set(), []
    check_values(settings.common, f"{where}: overrides (or --set)", problems)
    check_values(settings.variant_options, f"{where}: variants.{settings.variant}.overrides", problems)
    for key, values in settings.grid.items():
        for value in values:
            check_values({key: value}, f"{where}: grid", problems)
    for recipe, recipe_entry in recipes.items():
        recipe = read_recipe(str(recipe), recipe_entry, settings, problems)
        for k, entry in enumerate(entries):
            method, method_file, name, entry, entry_where = read_method_entry(entry, f"{where}: methods[{k}]")
            known = common_keys | set(read_yaml_tree(method_file)) | set(recipe["tree"])
            all_known |= known
            runs += entry_runs(recipe, method, name, entry, entry_where, known, settings, seen, problems)
    for source, options in (("overrides (or --set)", settings.common),
                            (f"variants.{settings.variant}.overrides", settings.variant_options)):
        unused = sorted(set(options) - all_known)
        if unused:
            check_keys({unused[0]: None}, all_known, f"{where}: {source}")
    check_keys({k: None for k in settings.common if k in SWEEP_SET}, all_known,
               f"{where}: overrides (and --set)")
    if problems:
        raise SweepError(*dict.fromkeys(problems))
    return runs


def read_recipe(recipe, value, settings, problems):
    """One entry of ``recipes:``, checked: ``{"name", "tree"`` (its dataset yaml), ``"data"``
    (its data folder), ``"options"``, ``"folds"`` (the folds its runs take)``}``."""
    where = settings.where
    dataset_tree = read_yaml_tree(dataset_yaml(recipe))
    if isinstance(value, dict):
        value = dict(value)
        data_folder = value.pop("data_folder", None)
        options = mapping(value.pop("overrides", None), f"{where}: recipes.{recipe}.overrides")
        if value:
            raise SweepError(f"{where}: recipes.{recipe}: unknown key(s) {', '.join(value)} "
                             "(a recipe takes 'data_folder' and 'overrides').")
    else:
        data_folder, options = value, {}
    if not isinstance(data_folder, str) or not data_folder:
        raise SweepError(f"{where}: recipes.{recipe} needs its data folder (the dataset's folder "
                         "as unpacked, relative to data_root or absolute).")
    check_path(data_folder, f"{where}: recipes.{recipe}")
    check_values(options, f"{where}: recipes.{recipe}.overrides", problems)
    data = Path(data_folder) if Path(data_folder).is_absolute() else settings.data_root / data_folder
    recipe_folds = [int(f) for f in dataset_tree.get("folds") or []]
    choice = settings.folds
    if not recipe_folds:
        folds = [None]
    elif choice == "each":
        folds = recipe_folds
    elif choice == "all":
        folds = ["all"]
    else:
        wrong = [f for f in choice if f not in recipe_folds]
        if wrong:
            raise SweepError(f"{where}: folds {wrong} are not folds of {recipe} ({recipe_folds}).")
        folds = list(choice)
    return {"name": recipe, "tree": dataset_tree, "data": data, "options": options, "folds": folds}


def read_method_entry(entry, where):
    """One entry of ``methods:`` (a method name, or a mapping), checked: ``(method, its file,
    name, the entry as a mapping, where it is for messages)``."""
    if isinstance(entry, str):
        entry = {"method": entry}
    entry = mapping(entry, where)
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(unknown)} (an entry takes "
                         f"{', '.join(sorted(ENTRY_KEYS))}).")
    method = entry.get("method")
    method_file = hparams_folder() / f"{method}.yaml"
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", method) \
            or not method_file.is_file():
        available = sorted(p.stem for p in hparams_folder().glob("*.yaml"))
        raise SweepError(f"{where}: method '{method}' has no file hparams/{method}.yaml "
                         f"(available: {', '.join(available)}).")
    where += f" ({method})"
    name = str(entry.get("name") or method)
    if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", name):
        raise SweepError(f"{where}: name '{name}' must be a plain folder name (letters, "
                         "digits, . _ + -, not starting with a dot).")
    return method, method_file, name, entry, where


def entry_runs(recipe, method, name, entry, where, known, settings, seen, problems):
    """The runs of one method entry on one recipe: a run per grid point, seed and fold."""
    entry_options = mapping(entry.get("overrides"), f"{where}.overrides")
    grid = {**settings.grid, **grid_of(entry.get("grid"), f"{where}.grid")}
    check_keys(recipe["options"], known, f"{settings.where}: recipes.{recipe['name']}.overrides")
    check_keys(entry_options, known, f"{where}.overrides")
    check_keys(grid, known, f"{where}.grid (or the top-level grid)")
    check_values(entry_options, f"{where}.overrides", problems)
    for key, values in grid_of(entry.get("grid"), f"{where}.grid").items():
        for value in values:
            check_values({key: value}, f"{where}.grid", problems)
    runs = []
    for values in itertools.product(*grid.values()):
        named = {**entry_options, **dict(zip(grid, values))}
        # top-level options and the variant's: for the runs whose configuration has them
        options = {k: v for k, v in settings.common.items() if k in known}
        options.update({**recipe["options"], **named})
        options.update({k: v for k, v in settings.variant_options.items() if k in known})
        for seed in settings.seeds:
            for fold in recipe["folds"]:
                parts = [recipe["name"], name, slug(named), f"seed{seed}"]
                if fold is not None:
                    parts.append(f"fold{fold}")
                run_name = "/".join(parts)
                if run_name in seen:
                    raise SweepError(f"{where}: two runs would share the folder {run_name} (the "
                                     f"other from {seen[run_name]}); give one entry a different "
                                     "'name'.")
                seen[run_name] = where
                folder = (settings.root / run_name).resolve()
                if not folder.is_relative_to(settings.root.resolve()):
                    raise SweepError(f"{where}: the run folder {run_name} is not inside "
                                     f"the sweep's output folder {settings.root}.")
                runs.append(PlannedRun(run_name, recipe["name"], method, options, seed, fold,
                                       folder, recipe["data"].resolve()))
    return runs


def finish_sweep(sweep, settings):
    """Adds to ``sweep`` what the launchers and the report read: ``root``, ``setup``,
    ``resources`` (its keys checked) and ``compare`` (tables of the published numbers, checked)."""
    where = settings.where
    sweep["root"] = settings.root.resolve()
    sweep["setup"] = settings.setup
    sweep["resources"] = mapping(sweep.get("resources"), f"{where}: resources")
    unknown = sorted(set(sweep["resources"]) - set(DEFAULT_RESOURCES))
    if unknown:
        raise SweepError(f"{where}: resources: unknown key(s) {', '.join(unknown)} "
                         f"(keys: {', '.join(DEFAULT_RESOURCES)}).")
    compare = sweep.get("compare") or []
    sweep["compare"] = compare if isinstance(compare, list) else [compare]
    if sweep["compare"]:
        try:
            tables = results_tool.load_published()["tables"]
        except results_tool.ResultsError as err:
            raise SweepError(f"{where}: compare: {err}") from None
        unknown = [str(t) for t in sweep["compare"] if t not in tables]
        if unknown:
            raise SweepError(f"{where}: compare: no table {', '.join(unknown)} in "
                             f"{results_tool.published_file()} (tables: {', '.join(tables)}).")


def recipe_command(run):
    """The recipe command of ``run``: ``python recipes/<D>/train.py hparams/<m>.yaml --...``
    (through ``torch.distributed.run`` when it has more than one GPU). Every value is written so
    that the recipe reads back exactly the sweep's (``arguments.as_argument``)."""
    python = [sys.executable]
    if run.gpus > 1:
        python += ["-m", "torch.distributed.run", f"--nproc_per_node={run.gpus}"]
    args = [f"recipes/{run.recipe}/train.py", f"hparams/{run.method}.yaml",
            f"--data_folder={run.data_folder}", f"--output_folder={run.folder}", f"--seed={run.seed}"]
    if run.fold is not None:
        args.append(f"--fold={run.fold}")
    flags = run_option_names()  # SpeechBrain's run options: {name: nargs}
    for key, value in run.options.items():
        if flags.get(key) == 0:  # a SpeechBrain flag (--debug): given or not
            args += [f"--{key}"] if value else []
        elif flags.get(key) == "*":
            args += [f"--{key}", *[str(v) for v in (value if isinstance(value, list) else [value])]]
        else:
            args.append(f"--{key}={as_argument(value)}")
    _, _, texts = split_arguments(args[1:])
    for key, value in {"output_folder": str(run.folder), "data_folder": str(run.data_folder),
                       **{k: v for k, v in run.options.items() if k not in flags}}.items():
        if read_value(texts[key]) != value:  # never: as_argument round-trips; a last guard
            raise SweepError(f"run {run.name}: --{key} would not reach the recipe as {value!r}.")
    return python + args
