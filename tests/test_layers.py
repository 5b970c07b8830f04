"""The package's layering, as its docstring declares it: every import of every module (at the top
or inside a function) goes to its own part or to a lower layer; the model layer needs no YAML
parser and never the repository's method files or recipes; no module imports another in a cycle
at import time."""

import ast
import re

import pytest

import petl_modules

from conftest import REPO

PACKAGE = REPO / "petl_modules"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
YAML_PARSERS = ("hyperpyyaml", "ruamel", "yaml")


def declared_layers():
    """``{part: layer}`` from the table of ``petl_modules``' docstring (``1  a, b | c``)."""
    rows = re.findall(r"^\s{4}(\d)\s{2}(.+)$", petl_modules.__doc__, re.M)
    assert rows, "petl_modules' docstring declares no layers"
    return {part.strip(): int(layer) for layer, parts in rows for part in re.split(r"[,|]", parts)}


LAYERS = declared_layers()
TOP = max(LAYERS.values())


def part(dotted):
    """The part of the package a dotted module name belongs to (``model``, ``classify``)."""
    pieces = dotted.split(".")
    return pieces[1] if len(pieces) > 1 else None


def module_name(path):
    relative = path.relative_to(REPO).with_suffix("")
    names = list(relative.parts)
    if names[-1] == "__init__":
        names = names[:-1]
    return ".".join(names)


def imports(path, top_only=False):
    """Dotted names a module imports (``from x import y``: ``x.y`` when that is a module of ours,
    else ``x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (REPO / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                    (REPO / candidate.replace(".", "/") / "__init__.py").is_file()
                found.append(candidate if is_module else node.module)
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {part(module_name(p)) for p in MODULES} - {None}
    assert parts <= set(LAYERS), f"parts without a layer in the docstring: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    name = module_name(path)
    mine = part(name)
    if mine is None:
        return
    wrong = []
    for target in imports(path):
        theirs = part(target) if target.startswith("petl_modules.") else None
        if theirs is None or theirs == mine:
            continue
        if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and LAYERS[mine] != TOP):
            wrong.append(f"{target} (layer {LAYERS[theirs]} {theirs})")
    assert not wrong, f"{name} (layer {LAYERS[mine]} {mine}) imports against the layers: {wrong}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "model").rglob("*.py")), ids=lambda p: p.name)
def test_the_model_layer_reads_no_yaml_and_no_repository_files(path):
    found = [t for t in imports(path) if t.split(".")[0] in YAML_PARSERS or t == "petl_modules.paths"]
    assert not found, f"{module_name(path)} imports {found}"


def test_no_module_imports_another_in_a_cycle():
    graph = {module_name(p): {t for t in imports(p, top_only=True) if t.startswith("petl_modules.")}
             for p in MODULES}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(target):] + [target])}")
            if target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
