"""The library lists no dataset: each recipe folder owns its synthetic generator
(``recipes/<DATASET>/*_synthetic.py``) and ``petl_modules`` finds it on disk.

- no ``petl_modules/**/*.py`` names a recipe folder in code or comments (docstrings of files other
  than the dataset machinery may carry a documentation example; ``synthetic.py`` and ``demo.py``
  name none at all);
- every recipe folder has one generator, with ``generate`` and ``DEMO``, and the list of datasets
  comes from the folders;
- a recipe folder added under another root (``PETL_AST_ROOT``) is found, imported by path and
  offered by the demo without touching the library.
"""

import ast
import io
import re
import sys
import tokenize

import pytest

from petl_modules import demo, synthetic
from petl_modules.synthetic import (
    NoGeneratorError,
    available_datasets,
    generator_module,
    make_dataset,
)

from conftest import REPO

PACKAGE = REPO / "petl_modules"
RECIPE_FOLDERS = sorted(p.name for p in (REPO / "recipes").iterdir() if p.is_dir()
                        and not p.name.startswith((".", "_")))
# Files about datasets: not even a docstring may name one.
DATASET_MACHINERY = {"synthetic.py", "demo.py"}


def name_pattern(folder):
    """A recipe folder name, case-insensitive, also spelt with '-', '_' or ' ' between its letter
    and digit runs ('ESC-50', 'Speech Commands', 'urban_sound_8k'), not inside a longer word."""
    parts = re.findall(r"[A-Z]+[a-z]*|[a-z]+|\d+", folder)
    body = r"[-_ ]?".join(re.escape(part) for part in parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


PATTERNS = {folder: name_pattern(folder) for folder in RECIPE_FOLDERS}


def docstring_lines(source):
    """Line numbers of the module, class and function docstrings of ``source``."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def mentions(path, skip_docstrings):
    """``[(line, token text, folder)]`` for every token of ``path`` naming a recipe folder."""
    source = path.read_text()
    skipped = docstring_lines(source) if skip_docstrings else set()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.start[0] in skipped and token.type == tokenize.STRING:
            continue
        for folder, pattern in PATTERNS.items():
            if pattern.search(token.string):
                found.append((token.start[0], token.string.strip()[:80], folder))
    return found


def test_recipe_folders_are_known_and_the_pattern_catches_their_spellings():
    assert {"FSC", "ESC50", "IEMOCAP"} <= set(RECIPE_FOLDERS)
    for folder in RECIPE_FOLDERS:
        assert PATTERNS[folder].search(f"x = make_{folder.lower()}()")
    assert PATTERNS["ESC50"].search("ESC-50-master") and PATTERNS["ESC50"].search("esc50_prepare")
    if "SpeechCommands" in PATTERNS:
        assert PATTERNS["SpeechCommands"].search("Speech Commands v2")
    assert not PATTERNS["FSC"].search("fscore = misfscale")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_module_names_a_dataset(path):
    strict = path.name in DATASET_MACHINERY and path.parent == PACKAGE
    found = mentions(path, skip_docstrings=not strict)
    assert not found, (
        f"{path.relative_to(REPO)} names recipe folders "
        f"({'anywhere' if strict else 'outside docstrings'}): {found}. Dataset-specific code and "
        "settings belong in recipes/<DATASET>/ (e.g. its *_synthetic.py)."
    )


def test_every_recipe_folder_has_one_generator_with_generate_and_demo_settings():
    assert available_datasets() == sorted(RECIPE_FOLDERS, key=str.lower)
    defaults = []
    for dataset in available_datasets():
        module = generator_module(dataset)
        assert module.__file__.startswith(str(REPO / "recipes" / dataset))
        assert callable(module.generate)
        assert {"per_class", "release", "options"} <= set(module.DEMO)
        assert generator_module(dataset) is module  # imported once
        defaults += [dataset] if module.DEMO.get("default") else []
    assert len(defaults) == 1
    assert demo.parse_args([]).dataset == defaults[0]
    # Each generator has its own module name: none is importable as a top-level module by accident.
    names = {generator_module(d).__name__ for d in available_datasets()}
    assert len(names) == len(available_datasets())


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(NoGeneratorError, match="No synthetic generator for 'TIMIT'.*Known: "):
        make_dataset("TIMIT", "/nonexistent")


NEW_GENERATOR = '''
from pathlib import Path

from petl_modules.synthetic import class_signal, write_csv, write_wav

DEMO = {"per_class": 3, "release": "toy_release", "options": ["--fold=1"]}


def generate(root, per_class=1, seed=0, seconds=0.1):
    folder = Path(root) / "toy_release"
    rows = []
    for index in range(2):
        for k in range(per_class):
            name = f"{index}-{k}.wav"
            write_wav(folder / name, class_signal(index, 2, seconds))
            rows.append([name, index])
    write_csv(folder / "meta.csv", ["file", "label"], rows)
    return folder
'''


def test_a_new_recipe_folder_is_found_without_changing_the_library(tmp_path, monkeypatch):
    """A dataset added as recipes/<D>/<d>_synthetic.py under PETL_AST_ROOT is listed, imported by
    path (no sys.path entry, own module name) and offered by the demo."""
    (tmp_path / "hparams").mkdir()
    (tmp_path / "hparams" / "soft_moa.yaml").write_text("{}\n")
    for name in ("ToySet", "OtherSet"):
        (tmp_path / "recipes" / name).mkdir(parents=True)
    (tmp_path / "recipes" / "ToySet" / "toyset_synthetic.py").write_text(NEW_GENERATOR)
    (tmp_path / "recipes" / "OtherSet" / "otherset_synthetic.py").write_text(
        NEW_GENERATOR.replace('"options": ["--fold=1"]}', '"options": [], "default": True}'))
    (tmp_path / "recipes" / "NoGenerator").mkdir()
    monkeypatch.setenv("PETL_AST_ROOT", str(tmp_path))
    path_before = list(sys.path)

    assert available_datasets() == ["OtherSet", "ToySet"]
    folder = make_dataset("ToySet", tmp_path / "data", per_class=2, seconds=0.05)
    assert folder == tmp_path / "data" / "toy_release"
    assert len(list(folder.glob("*.wav"))) == 4 and (folder / "meta.csv").is_file()
    assert sys.path == path_before
    assert generator_module("ToySet").__name__ != generator_module("OtherSet").__name__
    assert synthetic.demo_settings("ToySet")["options"] == ["--fold=1"]
    with pytest.raises(NoGeneratorError, match="Known: OtherSet, ToySet"):
        make_dataset("NoGenerator", tmp_path / "data")

    assert demo.parse_args([]).dataset == "OtherSet"  # the generator marked default
    assert demo.parse_args(["--dataset=toyset"]).dataset == "ToySet"
    with pytest.raises(SystemExit):
        demo.parse_args(["--dataset=FSC"])


def test_two_generators_in_one_recipe_folder_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "hparams").mkdir()
    (tmp_path / "recipes" / "Toy").mkdir(parents=True)
    (tmp_path / "recipes" / "Toy" / "a_synthetic.py").write_text(NEW_GENERATOR)
    (tmp_path / "recipes" / "Toy" / "b_synthetic.py").write_text(NEW_GENERATOR)
    monkeypatch.setenv("PETL_AST_ROOT", str(tmp_path))
    with pytest.raises(NoGeneratorError, match="more than one"):
        available_datasets()
