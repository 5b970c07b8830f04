"""PETL-AST: parameter-efficient transfer learning of audio encoders, as SpeechBrain building blocks.

The package in layers, lowest first. A module imports only from its own part of the package or
from a lower layer; parts that share a layer never import each other, except the tools of the
top layer (``tests/test_layers.py`` reads every module's imports against this table):

    1  options, files, paths, quiet
    2  contract
    3  backbones | methods
    4  model
    5  sharing | training
    6  classify, export, from_peft, push, results, demo, sweep, shard, tiny, synthetic

options        typed option definitions (``Option``), checking keyword options by name (unknown
               ones named with close matches)
files          JSON files of runs and model folders (atomic writes, bounded reads, schema checks)
paths          where the repository's ``hparams/`` and ``recipes/`` are, their yaml read as
               plain trees (training and tools only)
quiet          third-party log lines that say nothing about our runs, silenced by name on import
contract       what the lobes and the methods share: ``PETLModule``, the token mask, the
               prefix-attention hooks
backbones/     the backbone lobes, one file per family behind one contract (``base.py``: registry,
               insertion points, trainable specs, eval-mode policy, input processor, checkpoint
               format and fingerprint): ``ast.py``, ``wav2vec2.py`` (wav2vec2, HuBERT, WavLM),
               ``data2vec_audio.py``, ``whisper.py``, ``beats.py`` (SpeechBrain's BEATs, released
               ``.pt`` files), ``w2v_bert.py`` (w2v-BERT 2.0); ``features.py``, the per-utterance
               input processors (Kaldi fbank, waveform, Whisper log-mel, BEATs' fbank)
methods/       the PETL methods, which never name a backbone family: one config class per method
               (``config.py``: ``MethodConfig``, the registry ``METHODS``) and its modules:
               ``selective.py`` (linear, BitFit, full fine-tuning), ``lora.py`` (LoRA on any
               projection), ``dora.py``, ``ia3.py``, ``vera.py``, ``layer_sum.py`` (the SUPERB
               weighted layer sum), ``adapters.py`` (``adapter_blocks.py``), ``prompt.py`` (prompt and prefix tuning),
               ``moa.py`` (Dense/Soft-MoA);
               ``adapted.py`` (``AdaptedBackbone``: attaches PETL modules at insertion points,
               decides what trains), ``classifier.py`` (pooling + linear head)
model/         a trained model as a self-contained artifact: ``spec.py`` (``ModelSpec``,
               ``petl_config.json`` format 4), ``build.py``, ``folder.py`` (save, load, merge),
               ``petl_model.py`` (``PETLModel``, ``PETLClassifier``), ``multitask.py`` and
               ``multitask_classifier.py`` (several tasks on one backbone), ``bases.py``
               (naming and finding base checkpoints), ``hub.py``, ``audio.py``, ``windows.py``
               (evaluation protocol), ``task.py`` (the task kinds: loss, outputs, scores, result
               fields; one class each), ``scores.py``, ``precision.py``, ``metrics_file.py``;
               no YAML, no ``hparams/`` or ``recipes/``
sharing/       other formats of a trained model: ``peft_lora.py`` (PEFT LoRA, DoRA, (IA)3 and
               VeRA adapters: the format; ``peft_export.py``, ``peft_import.py`` the two
               ways), ``onnx_export.py`` (ONNX, checked with onnxruntime),
               ``int8.py`` (int8 inference on the ONNX graph), ``head.py`` (the head
               beside an exported backbone), ``model_card.py`` (the card ``push`` uploads)
training/      the recipe machinery: ``arguments.py`` (the recipes' command line, each argument
               kept whole), ``compose.py`` (yaml composition, option checks),
               ``recipe.py`` (the run flow the recipes call, folds, results.json), ``brain.py``,
               ``launch.py`` (recipe commands as submitit jobs: local processes, Slurm arrays),
               ``slurm.py`` (what squeue, sacct and scontrol say: states, partition limits),
               ``stop_signals.py`` (a checkpoint and a clean exit on SIGUSR2/SIGTERM),
               ``checkpointing.py`` (resumes, fallback), ``safe_loading.py``, ``run_folder.py`` (run identity,
               lock), ``prepare.py``, ``windows.py`` (random crops, window datasets),
               ``metrics.py`` (score files: the confusion matrix, multi-label per-class scores),
               ``sampling.py`` (class-balanced sampling), ``mixup.py``, ``shards.py``
               (reading tar shards: ``--shards``; ``shard_index.py``, ``shard_plan.py``),
               ``augment.py``, ``cache.py``, ``tracking.py``, ``pretrained.py`` (what of a run
               defines its model folder), ``recipe.yaml`` (shared by every recipe)
tools          ``classify`` (``python -m petl_modules.classify``), ``export`` (plain transformers,
               ``--format=peft|onnx``), ``from_peft``, ``push``, ``results``, ``demo``, ``sweep``
               (many recipe runs from a sweep file), ``shard`` (a recipe's prepared data as tar
               shards): the command lines a user runs; ``tiny``
               (tiny random backbone configs: tests, demo, benchmark) and ``synthetic`` (the
               recipes' ``*_synthetic.py`` generators' helpers)
"""

__version__ = "0.2.0"

from petl_modules import quiet as _quiet  # noqa: E402 (before any module imports the loggers' modules)

_quiet.install()
