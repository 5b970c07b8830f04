"""benchmarks/report.py's cells: what the Markdown report prints for each kind of value."""

import sys

from conftest import REPO


def test_cells_print_flags_as_words_and_numbers_as_numbers(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    from benchmarks import report

    table = report.markdown_table(["value"], [[True], [False], [None], [12345], [0.25], ["x"]])
    cells = [line.strip("| ") for line in table.splitlines()[2:]]
    assert cells == ["yes", "no", "-", "12,345", "0.250", "x"]
