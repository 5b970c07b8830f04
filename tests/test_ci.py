"""`.ci/run`: its stages in order, named and timed, the first failing one ends the run, and its unit
stage is the README's test command. The stages run a stand-in interpreter that records its
arguments (PYTHON=...), so the test checks the commands without running them."""
import re
import shlex
import subprocess

from conftest import REPO

CI = REPO / ".ci" / "run"
CHECKED = ["lint", "layers", "doctests", "unit", "slow"]  # all but install (a fresh venv)


def run_ci(tmp_path, *stages, fail_on=None):
    """Runs ``.ci/run stages`` with a stand-in PYTHON that appends its arguments to a log (one
    per line, then ``--``) and exits 3 when they contain ``fail_on``. Returns (process, commands)."""
    log = tmp_path / "log"
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" -- >> "$LOG"\n'
                    '[[ -n "$FAIL_ON" && " $* " == *" $FAIL_ON "* ]] && exit 3\nexit 0\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "LOG": str(log), "FAIL_ON": fail_on or ""}
    process = subprocess.run([str(CI), *stages], env=env, capture_output=True, text=True)
    text = log.read_text() if log.exists() else ""
    commands = [block.split("\n") for block in text.split("\n--\n") if block.strip("-\n")]
    return process, [[arg for arg in command if arg] for command in commands]


def readme_test_command():
    """The arguments after ``python`` of the README's test command (its set-up block)."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("python -m pytest"))
    return shlex.split(line.split("#")[0])[1:]


def modules_with_examples():
    return sorted(str(path.relative_to(REPO)) for folder in ("petl_modules", "recipes", "benchmarks")
                  for path in (REPO / folder).rglob("*.py") if ">>>" in path.read_text())


def test_stages_run_in_order_each_named_and_timed(tmp_path):
    process, commands = run_ci(tmp_path, *CHECKED)
    assert process.returncode == 0, process.stdout + process.stderr
    assert re.findall(r"^==== stage (\w+): passed in \d+ s$", process.stdout, re.M) == CHECKED
    assert commands == [
        ["-m", "ruff", "check", "."],
        ["-m", "pytest", "tests/test_layers.py"],
        ["-m", "pytest", "--doctest-modules", *modules_with_examples()],
        ["-m", "pytest", "-m", "not slow"],
        ["-m", "pytest", "-m", "slow"],
    ]


def test_the_unit_stage_is_the_readme_test_command(tmp_path):
    process, commands = run_ci(tmp_path, "unit")
    assert process.returncode == 0, process.stdout + process.stderr
    assert commands == [readme_test_command()]


def test_the_first_failing_stage_ends_the_run_with_its_status(tmp_path):
    process, commands = run_ci(tmp_path, *CHECKED, fail_on="tests/test_layers.py")
    assert process.returncode == 3
    assert "==== stage layers: FAILED (exit 3)" in process.stdout
    assert "stage doctests" not in process.stdout
    assert [command[:3] for command in commands] == [["-m", "ruff", "check"],
                                                     ["-m", "pytest", "tests/test_layers.py"]]


def test_an_unknown_stage_is_an_error_naming_the_stages(tmp_path):
    process, commands = run_ci(tmp_path, "lint", "typo")
    assert process.returncode == 2 and commands == []
    assert "Error: no stage 'typo' (stages: install lint layers doctests unit slow)" in process.stderr
