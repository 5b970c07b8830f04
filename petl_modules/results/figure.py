"""The score-vs-parameters plot of a results table (matplotlib, drawn only when asked)."""

from petl_modules.results.table import row_name

MARKERS = "osD^v<>pP*Xh"


def plot(rows, path, published=()):
    """Accuracy (%) against trainable parameters without the head (log x): one panel per
    dataset, one marker per method, one colour per method variant; error bars are the std.
    ``published``: papers' numbers (``compare_published`` entries with a value), drawn as black
    bars at our runs' parameter counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["base_method"] for r in rows})
    labels = sorted({(row_name(r), r["backbone"]) for r in rows})
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == dataset):
            index = labels.index((row_name(r), r["backbone"]))
            name = row_name(r) if len({b for _, b in labels}) == 1 else f"{row_name(r)} {{{r['backbone']}}}"
            name = name.replace("$", r"\$")  # no mathtext from a results.json
            ax.errorbar(max(1, r["trainable_params_without_head"]), 100 * r["test_mean"],
                        yerr=100 * r["test_std"], fmt=MARKERS[methods.index(r["base_method"]) % len(MARKERS)],
                        color=colours(index % 20), markersize=8, capsize=3, label=name)
        for point in (p for p in published if p["dataset"] == dataset and p.get("params")):
            ax.plot(max(1, point["params"]), point["paper"], "k_", markersize=16, mew=2,
                    label="published (paper)")
        ax.set_xscale("log")
        ax.set_title(dataset.replace("$", r"\$"))
        ax.set_xlabel("trainable parameters (without head)")
        metrics = sorted({r["metric"] for r in rows if r["dataset"] == dataset})
        ax.set_ylabel(f"test {' / '.join(metrics)} (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="center left", fontsize="small",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside, right
    plt.close(fig)
