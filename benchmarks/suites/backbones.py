"""The ``backbones`` suite: forward of the frozen AST-base, BEATs_iter3 and w2v-BERT 2.0 shapes in
interleaved rounds."""

import torch
import transformers

from benchmarks.common import interleaved_rounds, paired_ratio, result

def _backbone_sources(args):
    """``{label: source}`` of the backbones suite, random weights saved in the work folder:
    AST-base (the benchmark's backbone), BEATs_iter3's shape (``beats_iter3_config``) and
    w2v-BERT 2.0's (``Wav2Vec2BertConfig()``); ``--quick``: their tiny configs."""
    from petl_modules.backbones.beats import beats_iter3_config, save_checkpoint
    from petl_modules.tiny import save_tiny_beats, save_tiny_w2v_bert

    folder = args.workdir / "backbones"
    folder.mkdir(exist_ok=True)
    if args.quick:
        return {"AST": args.backbone_source,
                "BEATs": str(save_tiny_beats(folder / "beats.pt")),
                "w2v-BERT": str(save_tiny_w2v_bert(folder / "w2v_bert"))}
    torch.manual_seed(0)
    transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig()).save_pretrained(folder / "w2v_bert")
    transformers.SeamlessM4TFeatureExtractor().save_pretrained(folder / "w2v_bert")
    return {"AST-base": args.backbone_source,
            "BEATs_iter3": str(save_checkpoint(beats_iter3_config(), folder / "beats_iter3.pt")),
            "w2v-BERT 2.0": str(folder / "w2v_bert")}


def suite_backbones(args):
    """Forward (no gradient, eval mode) of three frozen lobes on the same ``--batch_size`` random
    clips of ``--frames`` / 100 seconds, each through its own input processor (features computed
    once, outside the timing), in interleaved rounds: ``<backbone>_vs_ast_forward``."""
    from speechbrain.utils.data_utils import batch_pad_right

    from petl_modules.backbones import Backbone

    seconds = args.frames / 100
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(seconds * 16000), generator=generator) for _ in range(args.batch_size)]
    runs, params, tokens = {}, {}, {}
    for label, source in _backbone_sources(args).items():
        lobe = Backbone(source, max_frames=args.frames).to(args.device).eval()
        inputs, lengths = batch_pad_right([lobe.input_processor(w) for w in wavs])
        inputs, lengths = inputs.to(args.device), lengths.to(args.device)

        def forward(lobe=lobe, inputs=inputs, lengths=lengths):
            with torch.no_grad():
                return lobe(inputs, lengths) if lobe.takes_lengths else lobe(inputs)

        runs[label] = forward
        params[label] = sum(p.numel() for p in lobe.parameters())
        tokens[label] = forward()[0].shape[1]
    times, rounds = interleaved_rounds(args, runs)
    base = next(iter(runs))
    rows = []
    for label in runs:
        ratio, low, high = paired_ratio(rounds, label, base)
        rows.append(result("backbones", f"{label}: forward", times[label], None, None, backbone=label,
                           parameters=params[label], tokens=tokens[label], seconds=seconds, base=label == base,
                           round_s=rounds[label], ratio_median=ratio, ratio_min=low, ratio_max=high))
    return rows
