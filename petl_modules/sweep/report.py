"""The report of a sweep: the results tool's table, CSV and plot, with the papers' numbers."""

import sys

from petl_modules import results as results_tool

def write_report(sweep, out=None):
    """The results tool's table, CSV and plot of every run below the sweep's output folder, with
    the published numbers of the tables the sweep file names under ``compare:``."""
    out = out or sys.stdout
    root = sweep["root"]
    runs, skipped = results_tool.collect([root], warn=lambda m: print(m, file=sys.stderr))
    rows = results_tool.summarise(runs)
    report = results_tool.markdown_report(rows, skipped)
    papers = []  # published accuracies (%) with a matching run: drawn in the plot
    if sweep["compare"]:
        published = results_tool.load_published()
        for table in sweep["compare"]:
            report += results_tool.published_markdown(published, table, runs)
            spec = published["tables"][table]
            if spec["metric"] == "test_accuracy" and float(spec.get("scale", 1)) == 100:
                papers += [c for c in results_tool.compare_published(published, table, runs)
                           if c["paper"] is not None]
    (root / "report.md").write_text(report)
    results_tool.write_csv(rows, root / "results.csv")
    written = [root / "report.md", root / "results.csv"]
    if rows:
        results_tool.plot(rows, root / "results.png", published=papers)
        written.append(root / "results.png")
    print(f"[sweep] Results of {len(runs)} run(s): {', '.join(map(str, written))}", file=out, flush=True)
