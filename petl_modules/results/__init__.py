"""Collecting runs into a results table and a score-vs-parameters plot.

Usage::

    python -m petl_modules.results RUN_DIR... [--out report.md] [--csv results.csv]
        [--plot accuracy_vs_params.png]

Every ``results.json`` below the given folders is read. Runs are grouped by method (with the
options that differ from the method's defaults: ``lora (lora_targets=Wq,Wk,Wv,Wo)``), dataset and
backbone; a group's test score is the mean +- population std over all its folds and seeds: the
accuracy of single-label runs, the mAP of multi-label ones (``test_map``; ``task: multilabel``), each
table cell naming which. Runs of the two kinds are never averaged together.
Trainable parameters are shown without the head (what the papers count; the same on every dataset)
and as a percentage of the backbone. A malformed or partial ``results.json`` (unreadable JSON, a
missing field, a fold without test accuracy, fewer folds than the run asked for) is listed and
skipped with a warning naming it, never silently; so is one with a field of the wrong type
(every field read is checked first: ``RUN_SCHEMA``, ``FOLD_SCHEMA``), so one bad folder never hides
the table.

A run is labelled by the options it recorded (its first fold's ``hparams``) that differ from the
defaults its own composition gives: ``petl_modules/training/recipe.yaml`` < ``hparams/<method>.yaml`` <
``recipes/<DATASET>/<dataset>.yaml``, with their ``family_defaults`` for the backbone family the run
recorded (``recipe.compose_hparams``). A default wav2vec2 run is thus not labelled by the epochs or
layers its family gets by default.

The tool's parts, one job each: ``checks`` (the check of every value read), ``records`` (finding
and reading ``results.json`` files), ``labels`` (a run's label from its options and its defaults),
``table`` (groups, the markdown report, CSV), ``figure`` (the plot), ``published`` (the papers'
numbers beside ours), ``cli`` (the command line). What they offer other code is imported here.
"""

from petl_modules.results.checks import MAX_RESULTS_BYTES, ResultsError
from petl_modules.results.cli import main
from petl_modules.results.figure import plot
from petl_modules.results.labels import changed_options, default_options, method_label, settings_label
from petl_modules.results.published import (
    compare_published,
    load_published,
    published_file,
    published_markdown,
)
from petl_modules.results.records import (
    FOLD_SCHEMA,
    RUN_SCHEMA,
    SCORES,
    check_run,
    collect,
    find_results,
    read_run,
)
from petl_modules.results.table import CSV_FIELDS, markdown_report, read_csv, summarise, write_csv

__all__ = [
    "CSV_FIELDS", "FOLD_SCHEMA", "MAX_RESULTS_BYTES", "RUN_SCHEMA", "SCORES", "ResultsError",
    "changed_options", "check_run", "collect", "compare_published", "default_options",
    "find_results", "load_published", "main", "markdown_report", "method_label", "plot",
    "published_file", "published_markdown", "read_csv", "read_run", "settings_label", "summarise", "write_csv",
]
