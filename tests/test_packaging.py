"""The package installs without the repository: every third-party module it imports is declared in
pyproject.toml, and a wheel built from the repository, installed into a fresh virtual environment
(reusing this one's packages: nothing is downloaded) and used from a folder outside any checkout,
loads a model folder a recipe wrote, classifies, exports (merged, PEFT, ONNX), imports a PEFT
adapter and serves several tasks; ``pip check`` passes there."""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO, run_train

PACKAGE = REPO / "petl_modules"


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def declared():
    """Normalised names of the distributions pyproject.toml declares (dependencies and extras)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {normalized(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in requirements}


def third_party_imports():
    """``{top-level module: [files importing it]}`` of every import in the package that is neither
    the standard library nor the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "petl_modules":
                    found.setdefault(top, []).append(path.relative_to(REPO).as_posix())
    return found


def test_every_third_party_module_the_package_imports_is_declared():
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in third_party_imports().items():
        names = {normalized(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported by {files[0]}) is not installed"
        if not names & declared():
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_package_declares_no_repository_files_as_data():
    """``hparams/`` and ``recipes/`` stay in the repository: loading a model never needs them."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert data["packages"]["find"]["include"] == ["petl_modules*"]
    assert data["package-data"] == {"petl_modules.training": ["*.yaml"]}


# ==================================================================== the wheel, end to end
USE_OUTSIDE = r'''
import json, sys
from pathlib import Path

import petl_modules
from petl_modules import paths
from petl_modules.classify import PETLClassifier, main as classify_main
from petl_modules.export import export_petl_model
from petl_modules.model import PETLModel
from petl_modules.sharing.peft_lora import import_peft_adapter

folder, other, wav, venv, out = map(Path, sys.argv[1:6])
assert Path(petl_modules.__file__).is_relative_to(venv), petl_modules.__file__
try:
    paths.project_root()
    raise AssertionError("a repository was found around the installed package")
except paths.ProjectRootError:
    pass
model = PETLModel.from_pretrained(folder)
result = model.classify(wav)
export_petl_model(folder, out / "merged")
export_petl_model(folder, out / "peft", format="peft")
onnx = export_petl_model(folder, out / "onnx", format="onnx")
imported = import_peft_adapter(out / "peft", out / "imported")
again = PETLModel.from_pretrained(out / "imported")
tasks = PETLClassifier.from_folders([str(folder), str(other)])
found, errors = tasks.classify_files([wav])
assert classify_main([str(folder), str(wav), "--json"]) == 0
print(json.dumps({
    "label": result["label"], "classes": model.labels,
    "imported": again.classify(wav)["probabilities"].tolist(),
    "original": result["probabilities"].tolist(),
    "tasks": sorted(found[0]["tasks"]) if not errors else errors,
    "onnx_parity": onnx["parity"]["max_abs_difference"],
    "merged": sorted(p.name for p in (out / "merged").iterdir()),
}))
'''


@pytest.mark.slow
def test_a_wheel_installed_without_the_repository_serves_a_recipes_model(fsc_data, tiny_ast, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    run_train("FSC", "lora", fsc_data, tiny_ast, run, "--reduction_rate=16")
    run_train("FSC", "linear", fsc_data, tiny_ast, other)
    source = tmp_path / "source"  # the build writes beside its sources: a copy, not the checkout
    shutil.copytree(PACKAGE, source / "petl_modules", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PETL_AST_ROOT")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                    "--no-index", "-w", str(tmp_path / "wheels"), str(source)],
                   check=True, env=env, capture_output=True, text=True)
    (wheel,) = (tmp_path / "wheels").glob("petl_ast-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]  # this pip, for the new environment
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages (torch, ...) without its own petl_modules: a path line in a
    # .pth file adds the folder, whose own .pth files (the editable install) are not run.
    (venv / purelib.split(str(venv) + "/")[1] / "reuse_packages.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", str(wheel)], check=True, env=env,
                   capture_output=True, text=True)
    check = subprocess.run([*pip, "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    work = tmp_path / "elsewhere"  # no checkout above it
    work.mkdir()
    wav = next(fsc_data.rglob("*.wav"))
    script = work / "use.py"
    script.write_text(USE_OUTSIDE)
    proc = subprocess.run([python, str(script), str(run / "petl_model"), str(other / "petl_model"),
                           str(wav), str(venv), str(work)], cwd=work, env=dict(env, OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["label"] in found["classes"]
    assert found["tasks"] == sorted([str(run / "petl_model"), str(other / "petl_model")])
    assert found["onnx_parity"] <= 1e-4
    assert {"config.json", "model.safetensors", "classifier_head.json"} <= set(found["merged"])
    assert max(abs(a - b) for a, b in zip(found["imported"], found["original"])) < 1e-4
