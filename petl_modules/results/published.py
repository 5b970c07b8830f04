"""The papers' numbers (``sweeps/published.json``) and ours beside them."""

import io
import json
import math
import os
from pathlib import Path

from petl_modules.paths import project_root
from petl_modules.results.checks import (
    MAX_RESULTS_BYTES,
    ResultsError,
    check_name,
    check_options,
    describe,
    number_in,
)
from petl_modules.results.labels import same_option
from petl_modules.results.table import markdown_cell


# sweeps/published.json: the papers' tables, as plain JSON data (see docs/sweeps.md). A row names
# the runs it stands for (method, backbone family and the options that define it); a value is the
# paper's number for one dataset, or null where it could not be read from the paper.
def published_file():
    """``<repository>/sweeps/published.json``."""
    return project_root() / "sweeps" / "published.json"


def _published_row(row, where):
    if not isinstance(row, dict):
        raise ResultsError(f"{where} is {describe(row)}, not an object")
    check_name(row.get("label"), f"{where}.label")
    check_name(row.get("method"), f"{where}.method")
    check_name(row.get("backbone"), f"{where}.backbone")
    check_options(row.get("options", {}), f"{where}.options")
    values = row.get("values")
    if not isinstance(values, dict):
        raise ResultsError(f"{where}.values is {describe(values)}, not an object (dataset -> number or null)")
    for dataset, value in values.items():
        if value is not None:
            number_in(-math.inf, math.inf, "a number or null")(value, f"{where}.values.{dataset}")
    return row


def load_published(path=None):
    """The published tables (``{"sources": ..., "tables": {name: table}}``), every field read
    checked (types, not values' truth). Raises ResultsError naming the field."""
    path = Path(path or published_file())
    try:
        if os.path.getsize(path) > MAX_RESULTS_BYTES:
            raise ResultsError("too large")
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError, RecursionError) as err:
        raise ResultsError(f"{path}: not readable as JSON ({err})") from None
    try:
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) \
                or not isinstance(data.get("sources"), dict):
            raise ResultsError("must be an object with 'sources' and 'tables' objects")
        for name, table in data["tables"].items():
            where = f"tables.{name}"
            if not isinstance(table, dict):
                raise ResultsError(f"{where} is {describe(table)}, not an object")
            if table.get("source") not in data["sources"]:
                raise ResultsError(f"{where}.source {describe(table.get('source'))} is not one of sources")
            check_name(table.get("metric"), f"{where}.metric")
            number_in(0, math.inf, "a positive number")(table.get("scale", 1), f"{where}.scale")
            if not isinstance(table.get("rows"), list):
                raise ResultsError(f"{where}.rows is {describe(table.get('rows'))}, not a list")
            for k, row in enumerate(table["rows"]):
                _published_row(row, f"{where}.rows[{k}]")
    except ResultsError as err:
        raise ResultsError(f"{path}: {err}") from None
    return data


_MISSING = object()


def matches_published(run, row):
    """True when ``run`` is one of the runs the published ``row`` stands for: same method and
    backbone family, and every option the row names recorded with the row's value."""
    if run["method"] != row["method"] or run["backbone"] != row["backbone"]:
        return False
    options = run["options"]
    return all(same_option(value, options.get(key, _MISSING)) for key, value in row.get("options", {}).items())


def metric_values(runs, metric):
    """Every fold's ``metric`` of ``runs`` (folds without it are left out)."""
    return [fold[metric] for run in runs for fold in run["folds"] if fold.get(metric) is not None]


def compare_published(published, table_name, runs):
    """One dict per (published row, dataset): the paper's value, ours (mean and population std
    over every fold and seed of the matching runs, in the paper's unit: ``scale``), their
    difference (ours - paper), and how many runs and values. Raises ResultsError for an unknown
    table."""
    tables = published["tables"]
    if table_name not in tables:
        raise ResultsError(f"no table '{table_name}' in the published numbers "
                           f"(tables: {', '.join(tables)})")
    table = tables[table_name]
    scale = float(table.get("scale", 1))
    out = []
    for row in table["rows"]:
        mine = [run for run in runs if matches_published(run, row)]
        for dataset, paper in row["values"].items():
            members = [run for run in mine if run["dataset"] == dataset]
            values = [scale * v for v in metric_values(members, table["metric"])]
            mean = std = None
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            out.append({
                "label": row["label"], "dataset": dataset, "paper": paper, "mean": mean, "std": std,
                "params": members[0].get("trainable_params_without_head", members[0]["trainable_params"])
                if members else None,
                "difference": None if mean is None or paper is None else mean - paper,
                "runs": len(members), "values": len(values),
            })
    return out


def published_markdown(published, table_name, runs):
    """A markdown section: the published table beside ours, with the difference."""
    comparison = compare_published(published, table_name, runs)
    table = published["tables"][table_name]
    source = published["sources"][table["source"]]
    unit = " (%)" if float(table.get("scale", 1)) == 100 else ""
    out = io.StringIO()
    out.write(f"## Published: {markdown_cell(table.get('title', table_name))}\n\n"
              f"Source: {markdown_cell(source.get('citation', table['source']))} ({markdown_cell(source.get('url', ''))}). "
              f"{markdown_cell(table['metric'])}{unit}: paper, ours (mean ± std over folds and seeds), "
              "difference (ours − paper); '—' where there is no number.")
    if table.get("note"):
        out.write(f" {markdown_cell(table['note'])}")
    out.write("\n\n| row | dataset | paper | ours | difference | runs | folds x seeds |\n"
              "|---|---|---:|---:|---:|---:|---:|\n")
    for c in comparison:
        paper = "—" if c["paper"] is None else f"{c['paper']:.2f}"
        ours = "—" if c["mean"] is None else f"{c['mean']:.2f} ± {c['std']:.2f}"
        diff = "—" if c["difference"] is None else f"{c['difference']:+.2f}"
        out.write(f"| {markdown_cell(c['label'])} | {markdown_cell(c['dataset'])} | {paper} | {ours} | {diff} | "
                  f"{c['runs']} | {c['values']} |\n")
    out.write("\n")
    return out.getvalue()
