"""The ``cache`` suite: training epochs without / with cached backbone outputs."""

import time

from benchmarks.common import result, synchronize
from benchmarks.models import build_hparams, fsc_run, load_recipe, make_brain, start_training
from petl_modules.training.recipe import parameter_report

# The methods that train from cached backbone outputs (cache_backbone_outputs).
CACHED_METHODS = ("linear", "layer_sum")


def suite_cache(args):
    """Linear probing epochs without / with cached backbone outputs, on a synthetic FSC set."""
    from speechbrain.utils.epoch_loop import EpochCounter

    from petl_modules.training.cache import use_backbone_cache

    recipe = load_recipe("FSC")
    per_class = 1 if args.quick else 2
    data, out = fsc_run(args, per_class, "cache")
    rows = []
    for method, cached in ((m, c) for m in CACHED_METHODS for c in (False, True)):
        epochs = 3 if cached else 2  # the first is not timed; uncached epochs all cost the same
        hparams = build_hparams(args, method, data_folder=str(data), output_folder=str(out),
                                cache_backbone_outputs=cached, num_workers=2)
        recipe.prepare(hparams)
        datasets, _ = start_training(args, recipe, hparams)
        brain = make_brain(args, hparams)
        times = []
        if cached:
            start = time.perf_counter()
            use_backbone_cache(hparams, datasets, device=args.device)
            build = time.perf_counter() - start
            rows.append(result("cache", f"{method}: building the cache (once)", [build], None, None))
        for _ in range(epochs):
            start = time.perf_counter()
            brain.fit(EpochCounter(1), datasets["train"],
                      train_loader_kwargs=hparams["train_loader_options"])
            synchronize(args.device)
            times.append(time.perf_counter() - start)
        report = parameter_report(hparams["modules"])
        label = "cached" if cached else "uncached"
        rows.append(result("cache", f"{method} epoch, {label} ({len(datasets['train'])} utterances)",
                           times[1:], None, report["trainable_params"], method=method, cached=cached))
        del brain, hparams, datasets
    return rows
