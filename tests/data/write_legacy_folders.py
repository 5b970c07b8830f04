"""Writes the model folders of an older format (``tests/data/legacy_v<N>/``) with the code of that
format: run it with ``PYTHONPATH`` set to a checkout of the commit that wrote format ``N`` (format 2:
dac2dd8, the commit before format 3; format 3: the code before format 4).

    PYTHONPATH=/tmp/old_checkout python tests/data/write_legacy_folders.py --version 2 OUT

Only the JSON is kept: every folder's ``petl_config.json`` and ``expected_v<N>.json`` (the shapes of
its tensors, which base it is on, and the probabilities the old code computed on
``legacy_helpers.waveforms``). The tests regenerate the tensors (``legacy_helpers.fill``, seed 1,
scale 0.05) and the base checkpoints exactly as done here.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # legacy_helpers (tests/)
from legacy_helpers import BASES, fill, probabilities, waveforms  # noqa: E402

import petl_modules  # noqa: E402
from petl_modules.training import pretrained  # noqa: E402
from petl_modules.training.compose import compose_hparams, load_hparams  # noqa: E402

ROOT = Path(petl_modules.__file__).resolve().parents[1]  # the old checkout
SECONDS = [0.5, 0.7]
LONG_SECONDS = [1.5, 2.1]  # sliding windows: several clips of 0.64 s
CLASSES = [f"intent{i}" for i in range(31)]
THRESHOLDS = [round(0.3 + 0.01 * i, 2) for i in range(31)]

# name -> (method, base, extra options); every method on AST, a few on wav2vec2, and (format 3) a
# multi-label model tested with sliding windows.
FOLDERS = {
    **{m: (m, "ast", {}) for m in ("linear", "full_ft", "bitfit", "lora", "prefix_tuning",
                                   "prompt_tuning", "adapter", "dense_moa", "soft_moa")},
    "wav2vec2_lora": ("lora", "wav2vec2", {}),
    "wav2vec2_adapter": ("adapter", "wav2vec2", {"adapter_block": "bottleneck"}),
    "wav2vec2_prompt_tuning": ("prompt_tuning", "wav2vec2", {"prompt_len": 4}),
}
FORMAT3_ONLY = {
    "multilabel_sliding": ("adapter", "ast", {"task": "multilabel", "eval_windows": "sliding",
                                              "window_hop_seconds": 0.32, "window_pooling": "max"}),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("out")
    args = parser.parse_args()
    assert pretrained.FORMAT_VERSION == args.version, pretrained.FORMAT_VERSION
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"legacy_v{args.version}_"))
    bases = {name: make(work / f"tiny_{name}") for name, make in BASES.items()}
    folders = dict(FOLDERS, **(FORMAT3_ONLY if args.version >= 3 else {}))
    expected = {"seconds": SECONDS, "long_seconds": LONG_SECONDS, "bases": {}, "shapes": {},
                "probabilities": {}, "classified": {}}
    for name, (method, base, extra) in sorted(folders.items()):
        method_file = ROOT / "hparams" / f"{method}.yaml"
        keys = method_file.read_text()
        options = {"data_folder": str(work), "output_folder": str(work / "out" / name),
                   "backbone_source": str(bases[base]), "max_frames": 64, **extra}
        if "reduction_rate:" in keys:
            options["reduction_rate"] = 8
        if method == "full_ft" and base != "ast":
            options["unfrozen_layers"] = 1
        hparams = load_hparams(compose_hparams(method_file, ROOT / "recipes" / "FSC" / "fsc.yaml",
                                               options))
        multilabel = extra.get("task") == "multilabel"
        folder = out / f"petl_model_v{args.version}_{name}"
        scratch = work / folder.name
        fingerprint = pretrained.backbone_fingerprint(str(bases[base]))
        if args.version >= 3:
            config = pretrained.build_config(hparams, CLASSES, fingerprint,
                                             THRESHOLDS if multilabel else None)
        else:
            config = pretrained.build_config(hparams, CLASSES, fingerprint)
        pretrained.save_petl_model(scratch, hparams["modules"], config)
        state = load_file(str(scratch / pretrained.WEIGHTS_FILE))
        save_file(fill(state, seed=1, scale=0.05), str(scratch / pretrained.WEIGHTS_FILE))
        modules, _ = pretrained.load_petl_model(scratch)
        expected["bases"][name] = base
        expected["shapes"][name] = {k: list(v.shape) for k, v in sorted(state.items())}
        expected["probabilities"][name] = probabilities(modules, waveforms(SECONDS), multilabel).tolist()
        if args.version >= 3:
            from petl_modules.classify import PETLClassifier

            classifier = PETLClassifier.from_folder(scratch)
            out_prob = classifier.classify_waveforms(waveforms(LONG_SECONDS, seed=1))[0]
            expected["classified"][name] = out_prob.tolist()
        folder.mkdir(exist_ok=True)
        (folder / pretrained.CONFIG_FILE).write_text((scratch / pretrained.CONFIG_FILE).read_text())
        print(name, folder)
    (out / f"expected_v{args.version}.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
