"""Plumbing of benchmarks/ that runs in the unit tier: the Markdown report's cells and the
long_audio suite's ``--long_audio_cases``."""

import sys

import pytest

from conftest import REPO


@pytest.fixture
def benchmarks_importable(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])


def test_cells_print_flags_as_words_and_numbers_as_numbers(benchmarks_importable):
    from benchmarks import report

    table = report.markdown_table(["value"], [[True], [False], [None], [12345], [0.25], ["x"]])
    cells = [line.strip("| ") for line in table.splitlines()[2:]]
    assert cells == ["yes", "no", "-", "12,345", "0.250", "x"]


def test_long_audio_cases_parse_to_the_suite_cases_and_default_to_all(benchmarks_importable):
    from benchmarks.suites.long_audio import ALL_CASES, parse_cases

    assert parse_cases(None) == ALL_CASES and len(ALL_CASES) == 7
    assert parse_cases("fp32:shared:8,bf16:window:8,int8:shared:1") == [
        ("fp32", True, 8), ("bf16", False, 8), ("int8", True, 1)]
    assert parse_cases("fp32:shared:8,int8:shared:8,fp32:shared:8") == [("fp32", True, 8), ("int8", True, 8)]
    assert set(parse_cases(",".join(f"{p}:{'shared' if s else 'window'}:{b}"
                                    for p, s, b in ALL_CASES))) == set(ALL_CASES)


@pytest.mark.parametrize("text, says", [("fp16:shared:8", "fp16:shared:8"),
                                        ("fp32:both:8", "fp32:both:8"),
                                        ("fp32:shared", "fp32:shared"),
                                        ("fp32:shared:0", "fp32:shared:0"),
                                        ("int8:shared:8,fp32:shared:8", "fp32 case first")])
def test_long_audio_cases_refuse_what_they_cannot_run(benchmarks_importable, text, says):
    from benchmarks.suites.long_audio import parse_cases

    with pytest.raises(SystemExit, match=says):
        parse_cases(text)
