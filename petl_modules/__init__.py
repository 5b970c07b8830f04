"""PETL-AST: parameter-efficient transfer learning of audio encoders, as SpeechBrain building blocks.

The package in layers:

backbones/     the backbone lobes, one file per family behind one contract (``base.py``: registry,
               insertion points, trainable specs, eval-mode policy, input processor, checkpoint
               format, the prefix-attention hook): ``ast.py``, ``wav2vec2.py`` (wav2vec2, HuBERT,
               WavLM), ``data2vec_audio.py``, ``whisper.py``; ``features.py``, the per-utterance
               input processors (Kaldi fbank, waveform, Whisper log-mel)
methods/       the PETL methods, which never name a backbone family: ``adapted.py``
               (``AdaptedBackbone``: attaches PETL modules at insertion points, decides what trains;
               ``PETLModule`` and the token-mask context the lobes set), ``adapters.py``,
               ``lora.py``, ``prompt.py`` (prompt and prefix tuning), ``moa.py`` (Dense/Soft-MoA),
               ``classifier.py`` (pooling + linear head)
training/      the recipe machinery: ``arguments.py`` (the recipes' command line, each argument
               kept whole), ``compose.py`` (yaml composition, option checks),
               ``recipe.py`` (the run flow the recipes call, folds, results.json), ``brain.py``,
               ``launch.py`` (recipe commands as submitit jobs: local processes, Slurm arrays),
               ``slurm.py`` (what squeue, sacct and scontrol say: states, partition limits),
               ``stop_signals.py`` (a checkpoint and a clean exit on SIGUSR2/SIGTERM),
               ``checkpointing.py`` (safe loading, fallback), ``run_folder.py`` (run identity,
               lock), ``prepare.py``, ``audio.py``, ``windows.py`` (random crops, sliding
               windows), ``metrics.py`` (single- and multi-label scores, thresholds, class
               weights, d-prime), ``sampling.py`` (class-balanced sampling), ``mixup.py``,
               ``shards.py`` (reading tar shards: ``--shards``), ``augment.py``, ``cache.py``,
               ``tracking.py``,
               ``pretrained.py`` (the PETL model folder), ``model_metrics.py`` (its optional
               ``metrics.json``), ``recipe.yaml`` (shared by every recipe)
sharing/       sharing and serving trained models: ``peft_lora.py`` (PEFT LoRA adapters, both
               ways), ``onnx_export.py`` (ONNX, checked with onnxruntime), ``head.py`` (the head
               beside an exported backbone), ``hub.py`` (Hub repo ids where a folder is expected),
               ``model_card.py`` (the card ``push`` uploads), ``multitask.py`` (several tasks'
               PETL modules on one frozen backbone: ``TaskRouter`` at the insertion points)
tools          ``classify`` (``PETLClassifier``, ``python -m petl_modules.classify``), ``export``
               (plain transformers, ``--format=peft|onnx``), ``from_peft``, ``push``, ``results``,
               ``demo``, ``sweep`` (many recipe runs from a sweep file), ``shard`` (a recipe's
               prepared data as tar shards): the command lines a user runs
options        checking keyword options by name (unknown ones named with close matches)
tiny           tiny random backbone configs (tests, demo, benchmark)
synthetic      shared helpers of the recipes' ``*_synthetic.py`` generators, and finding them
paths          where the repository's ``hparams/`` and ``recipes/`` are
quiet          third-party log lines that say nothing about our runs, silenced by name on import

The lobes import ``methods/adapted.py`` (``PETLModule``, the token-mask context) and ``prompt.py``
imports the base contract's prefix-attention hook; nothing in ``backbones/`` or ``methods/``
imports ``training/``, ``sharing/`` or the tools; ``sharing/`` imports the layers below it, never
the tools; and no module imports another in a cycle.
"""

from petl_modules import quiet as _quiet  # noqa: E402 (before any module imports the loggers' modules)

_quiet.install()
