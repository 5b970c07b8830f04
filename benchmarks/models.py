"""Models built as users build them (``compose_hparams`` of a method file with the FSC yaml, then
``load_hparams``), the method variants the suites measure, and the recipes' data steps."""

import importlib.util
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from benchmarks.common import timed
from petl_modules.training.brain import ClassificationBrain
from petl_modules.training.compose import compose_hparams, load_hparams

REPO = Path(__file__).resolve().parents[1]

FSC_YAML = REPO / "recipes" / "FSC" / "fsc.yaml"
MOA_AT = {"adapter_type": "Pfeiffer", "location": "MHSA", "adapter_block": "bottleneck",
          "reduction_rate": 128}


# (name, method file, overrides): every hparams file, the paper's variants, and the comparisons.
METHODS = [
    ("full_ft", "full_ft", {}),
    ("linear", "linear", {}),
    ("bitfit", "bitfit", {}),
    ("lora", "lora", {}),
    ("prefix_tuning", "prefix_tuning", {}),
    ("prompt_tuning deep P=25", "prompt_tuning", {}),
    ("prompt_tuning shallow P=300", "prompt_tuning", {"deep_prompt": False, "prompt_len": 300}),
    ("adapter conformer Pfeiffer", "adapter", {}),
    ("adapter conformer Houlsby", "adapter", {"adapter_type": "Houlsby"}),
    ("adapter bottleneck Pfeiffer", "adapter", {"adapter_block": "bottleneck", "reduction_rate": 64}),
    ("adapter bottleneck Houlsby", "adapter",
     {"adapter_block": "bottleneck", "reduction_rate": 64, "adapter_type": "Houlsby"}),
    ("adapter bottleneck MHSA RR128", "adapter", dict(MOA_AT)),
    *[(f"dense_moa N={n}", "dense_moa", {"num_adapters": n}) for n in (2, 7, 15)],
    *[(f"soft_moa N={n}", "soft_moa", {"num_adapters": n}) for n in (2, 7, 15)],
    ("full_ft [eager attention]", "full_ft", {"attn_implementation": "eager"}),
    ("full_ft [gradient checkpointing]", "full_ft", {"gradient_checkpointing": True}),
    ("adapter conformer Pfeiffer [gradient checkpointing]", "adapter",
     {"gradient_checkpointing": True}),
    ("lora [gradient checkpointing]", "lora", {"gradient_checkpointing": True}),
    ("lora q,k,v,o,ffn_in,ffn_out", "lora", {"lora_targets": "q,k,v,o,ffn_in,ffn_out"}),
]
# Every other method file joins with its defaults (a new hparams/<method>.yaml needs no line here).
METHODS += [(stem, stem, {}) for stem in sorted(p.stem for p in (REPO / "hparams").glob("*.yaml"))
            if stem not in {file for _, file, _ in METHODS}]


def build_hparams(args, method_file, overrides=None, dataset_yaml=FSC_YAML, **extra):
    """``compose_hparams`` of a method file with the FSC yaml and the benchmark's overrides, then
    ``load_hparams``: the model exactly as ``recipes/FSC/train.py`` builds it."""
    options = {
        "data_folder": str(args.workdir / "no_data"),
        "output_folder": str(args.workdir / "out"),
        "backbone_source": args.backbone_source,
        "batch_size": args.batch_size,
        "max_frames": args.frames,
        "num_workers": 0,
    }
    options.update(overrides or {})
    options.update(extra)
    return load_hparams(compose_hparams(REPO / "hparams" / f"{method_file}.yaml", dataset_yaml, options))


def make_brain(args, hparams, precision=None, compile=False):
    """A ``ClassificationBrain`` on the run's modules, optimiser and scheduler ready; with
    ``compile``, its modules ``torch.compile``-d as ``--compile`` does when ``fit`` starts."""
    brain = ClassificationBrain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts={"device": args.device, "precision": precision or args.precision,
                  "noprogressbar": True, "compile": compile},
        checkpointer=None,
    )
    if compile:
        brain._compile()  # what on_fit_start runs (EagerFallback around each compiled module)
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN)
    return brain


def random_batch(args, hparams):
    """A batch of ``batch_size`` random utterances through the lobe's own input processor."""
    processor = hparams["backbone"].input_processor
    seconds = args.frames / 100
    generator = torch.Generator().manual_seed(0)
    items = [
        {"id": f"utt{i}", "inputs": processor(0.1 * torch.randn(int(seconds * 16000), generator=generator)),
         "label_index": torch.tensor([i % int(hparams["n_classes"])])}
        for i in range(args.batch_size)
    ]
    return PaddedBatch(items)


def model_flops(hparams, method, tokens, batch_size):
    """Rough FLOPs of one forward (matmuls of the transformer: projections, FFN, attention) and
    of one train step (3x forward when every weight trains, 2x when gradients only flow through
    the backbone to inserted modules, 1x for linear probing). For the MFU estimate only."""
    config = hparams["backbone"].config
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    forward = batch_size * layers * (8 * tokens * d * d + 4 * tokens * d * f + 4 * tokens * tokens * d)
    factor = {"full_ft": 3, "linear": 1}.get(method, 2)
    return forward, factor * forward


def token_count(hparams, batch):
    with torch.no_grad():
        hidden, _ = hparams["petl_model"](batch.inputs.data[:1])
    return hidden.shape[1]


def time_steps(args, brain, batch):
    """Timings (``timed``) of a train step and of an evaluation forward pass of ``batch``."""
    brain.modules.train()
    train = timed(lambda: brain.fit_batch(batch), args.steps, args.warmup, args.device)
    brain.modules.eval()

    def forward():
        with torch.no_grad(), brain.evaluation_ctx:
            brain.compute_forward(batch, sb.Stage.TEST)

    return train, timed(forward, args.steps, args.warmup, args.device)


def load_recipe(name):
    """The ``recipes/<name>/train.py`` module (its ``prepare`` and ``make_datasets``)."""
    folder = REPO / "recipes" / name
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", folder / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fsc_run(args, per_class, tag):
    """A synthetic FSC release with ``per_class`` training utterances per intent, prepared."""
    from petl_modules.synthetic import make_dataset

    root = args.workdir / f"fsc_{tag}"
    data = make_dataset("FSC", root, per_class=per_class, seconds=min(args.frames / 100, 4.0))
    return data, root / "out"


def start_training(args, recipe, hparams):
    """What a recipe does from the manifests to the training datasets (``recipe.fold_datasets``:
    labels checked and encoded, input pipelines); returns the datasets and the class names."""
    from petl_modules.training.recipe import fold_datasets

    Path(hparams["experiment_folder"]).mkdir(parents=True, exist_ok=True)
    return fold_datasets(recipe.make_datasets(hparams, None), hparams, {"device": args.device})
