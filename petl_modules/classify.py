"""Classifying audio with a trained PETL model (a ``petl_model/`` folder on its base checkpoint).

Python, in the style of SpeechBrain's pretrained interfaces (``EncoderClassifier``)::

    from petl_modules.classify import PETLClassifier
    classifier = PETLClassifier.from_folder("results/FSC/adapter/10/petl_model")
    out_prob, score, index, text_lab = classifier.classify_file("utterance.wav")
    out_prob, score, index, text_lab = classifier.classify_batch(wavs, wav_lens)  # [B, S], [B]

Command line::

    python -m petl_modules.classify MODEL_DIR FILE... [--backbone_source=...] [--top_k=K] [--json]
        [--merge] [--device=...] [--batch_size=N]

Files are read as in training (``petl_modules.audio.load_audio``: any format soundfile reads,
mixed to mono, resampled to 16 kHz) and turned into inputs by the backbone lobe's own
``input_processor`` (same clip length, normalisation and padding as the recipe). A file that
cannot be read is reported by name on stderr; the others are still classified and the exit code is
1.
"""

import argparse
import json
import logging
import sys

import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from petl_modules.audio import AudioError, load_audio
from petl_modules.pretrained import PETLModelError, load_petl_model, merge_petl_model

logger = logging.getLogger(__name__)


class PETLClassifier(torch.nn.Module):
    """A trained PETL model ready for inference: backbone + PETL modules + head, eval mode.

    Build it with ``PETLClassifier.from_folder``. The ``classify_*`` methods return, as
    SpeechBrain's ``EncoderClassifier`` does, ``(out_prob [B, C], score [B], index [B],
    text_lab)``: class probabilities, the best one's probability, its index and its label.

    Arguments
    ---------
    modules : dict
        ``{"petl_model", "classifier"}`` (``petl_modules.pretrained.load_petl_model``).
    config : dict
        The PETL model folder's config.
    device : str
        Where the modules are.
    """

    def __init__(self, modules, config, device="cpu"):
        super().__init__()
        self.mods = torch.nn.ModuleDict(modules)
        self.config = config
        self.device = device
        self.labels = list(config["class_names"])
        self.input_processor = self.mods["petl_model"].adapted_model.input_processor
        self.merged = []  # names of the LoRA modules folded into the backbone

    @classmethod
    def from_folder(cls, model_dir, backbone_source=None, device="cpu", merge=False, check=True):
        """Loads a PETL model folder onto its base checkpoint.

        Arguments
        ---------
        model_dir : str or Path
            A ``petl_model/`` folder (or the experiment folder holding one).
        backbone_source : str, optional
            Another local copy of the base checkpoint (its weights' fingerprint must match).
        device : str
            ``cpu``, ``cuda``, ``cuda:1``, ...
        merge : bool
            Fold LoRA into the backbone weights (inference then costs what the plain backbone
            costs).
        check : bool
            Check the base checkpoint's fingerprint (default).

        Example
        -------
        >>> clf = PETLClassifier.from_folder("results/FSC/lora/10/petl_model")  # doctest: +SKIP
        >>> clf.classify_file("turn_on_the_lights.wav")[3]  # doctest: +SKIP
        ['activate,lights,none']
        """
        modules, config = load_petl_model(model_dir, backbone_source, device=device, check=check)
        classifier = cls(modules, config, device)
        if merge:
            classifier.merged = merge_petl_model(modules)
        return classifier

    # ---------------------------------------------------------------- inputs
    def load_audio(self, path):
        """Reads ``path`` as training does: ``[S]`` mono float32 at 16 kHz (``AudioError`` if not)."""
        return load_audio(path)

    def prepare_inputs(self, waveforms):
        """Per-utterance input processing, then the padding of the training batches.

        ``waveforms``: list of ``[S_i]`` tensors -> ``(inputs, relative lengths [B])``.
        """
        features = [self.input_processor(wav.detach().cpu().float()) for wav in waveforms]
        return batch_pad_right(features)

    # ---------------------------------------------------------------- classification
    @torch.no_grad()
    def classify_waveforms(self, waveforms):
        """Classifies a list of ``[S_i]`` 16 kHz waveforms of any lengths (see the class doc)."""
        inputs, lengths = self.prepare_inputs(waveforms)
        hidden, mask = self.mods["petl_model"](inputs.to(self.device), lengths.to(self.device))
        logits = self.mods["classifier"](hidden, mask)
        out_prob = torch.softmax(logits.float(), dim=-1)
        score, index = out_prob.max(dim=-1)
        return out_prob, score, index, [self.labels[i] for i in index.tolist()]

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies a padded batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, S]`` (or ``[S]``) waveforms, right-padded.
        wav_lens : torch.Tensor, optional
            ``[B]`` lengths relative to ``S`` (SpeechBrain convention); default all 1.0.

        Returns
        -------
        (out_prob [B, C], score [B], index [B], text_lab list of str)
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        samples = (wav_lens.float().cpu() * wavs.shape[1]).round().long().tolist()
        return self.classify_waveforms([w[:n] for w, n in zip(wavs, samples)])

    def classify_file(self, path):
        """Classifies one audio file (any format, rate and channel count soundfile reads)."""
        return self.classify_waveforms([self.load_audio(path)])

    def classify_files(self, paths, batch_size=8, progressbar=False):
        """Classifies many files in batches; unreadable files are reported, not fatal.

        Returns
        -------
        (list of dict, list of (str, str))
            Per readable file, in order: ``{"file", "label", "score", "probabilities" [C]}``; and
            ``(file, reason)`` of each file that could not be read.
        """
        results, errors, pending = [], [], []

        def flush():
            if pending:
                out_prob = self.classify_waveforms([wav for _, wav in pending])[0].cpu()
                for (path, _), prob in zip(pending, out_prob):
                    index = int(prob.argmax())
                    results.append({"file": str(path), "label": self.labels[index],
                                    "score": float(prob[index]), "probabilities": prob})
                pending.clear()

        for path in tqdm(paths, desc="classify", unit="file", disable=not progressbar):
            try:
                pending.append((path, self.load_audio(path)))
            except AudioError as err:
                errors.append((str(path), str(err)))
            if len(pending) >= batch_size:
                flush()
        flush()
        return results, errors

    def top_k(self, probabilities, k):
        """``[{"label", "score"}]`` of the ``k`` most probable classes of ``[C]`` probabilities."""
        scores, indices = probabilities.topk(min(int(k), len(self.labels)))
        return [{"label": self.labels[i], "score": float(s)}
                for s, i in zip(scores.tolist(), indices.tolist())]

    def forward(self, wavs, wav_lens=None):
        """Same as ``classify_batch``."""
        return self.classify_batch(wavs, wav_lens)


# ==================================================================== command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.classify",
        description="Classify audio files with a trained PETL model folder (petl_model/).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a petl_model/ folder (or the experiment folder holding it)")
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--backbone_source", default=None,
                        help="another local copy of the base checkpoint (default: the run's)")
    parser.add_argument("--top_k", type=int, default=1, help="how many classes to list per file")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"file", "label", "score", "top_k"}')
    parser.add_argument("--merge", action="store_true", help="fold LoRA into the backbone weights")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=8, help="files per forward pass")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {args.top_k}.")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}.")
    return args


def main(argv=None):
    """Runs the command line; returns the exit code (0, or 1 when a file could not be read)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.disable(logging.INFO)  # no "Setting seed" chatter from rebuilding the model
    try:
        classifier = PETLClassifier.from_folder(
            args.model_dir, args.backbone_source, device=args.device, merge=args.merge
        )
    except (PETLModelError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    results, errors = classifier.classify_files(
        args.files, batch_size=args.batch_size, progressbar=len(args.files) > 1
    )
    rows = [{"file": r["file"], "label": r["label"], "score": r["score"],
             "top_k": classifier.top_k(r["probabilities"], args.top_k)} for r in results]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            others = "".join(f"  {t['label']} {t['score']:.4f}" for t in row["top_k"][1:])
            print(f"{row['file']}\t{row['label']}\t{row['score']:.4f}{others}")
    for path, reason in errors:
        print(f"Error: could not classify {path}: {reason}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(args.files)} file(s) could not be read; the others were "
              "classified.", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
