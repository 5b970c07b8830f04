"""``python -m petl_modules.results``: the command line of the results tool."""

import argparse
import sys
from pathlib import Path

from petl_modules.results.checks import ResultsError
from petl_modules.results.figure import plot
from petl_modules.results.published import load_published, published_markdown
from petl_modules.results.records import collect
from petl_modules.results.table import markdown_report, summarise, write_csv


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.results",
        description="Table and plot of every results.json below the given run folders.",
    )
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="folders to search")
    parser.add_argument("--out", help="write the markdown report here (default: print it)")
    parser.add_argument("--csv", help="write one row per method x dataset x backbone here")
    parser.add_argument("--plot", help="write the score-vs-parameters plot here (PNG, PDF, SVG): "
                                       "accuracy, or mAP for multi-label runs")
    parser.add_argument("--compare", action="append", default=[], metavar="TABLE",
                        help="add a published table of sweeps/published.json beside ours (repeatable)")
    args = parser.parse_args(argv)
    try:
        runs, skipped = collect(args.run_dirs, warn=lambda message: print(message, file=sys.stderr))
    except FileNotFoundError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    rows = summarise(runs)
    report = markdown_report(rows, skipped)
    try:
        published = load_published() if args.compare else None
        for table in args.compare:
            report += published_markdown(published, table, runs)
    except ResultsError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(report)
    else:
        print(report)
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot and rows:
        plot(rows, args.plot)
    print(f"{len(runs)} run(s) in {len(rows)} group(s); {len(skipped)} results.json skipped.",
          file=sys.stderr)
    return 0 if rows else 1
