"""PETL-AST: parameter-efficient transfer learning of audio encoders, as SpeechBrain building blocks.

The package in layers (each imports only from the layers above it in this list):

backbones/     the backbone lobes, one file per family behind one contract (``base.Backbone``):
               ``ast.py`` (AST), ``wav2vec2.py`` (wav2vec2/HuBERT/WavLM); ``features.py``, the
               per-utterance input processors (Kaldi fbank, waveform)
methods/       the PETL methods: ``adapted.py`` (``AdaptedBackbone``: attaches PETL modules at
               insertion points, decides what trains; the token-mask context), ``adapters.py``,
               ``lora.py``, ``prompt.py`` (prompt and prefix tuning), ``moa.py`` (Dense/Soft-MoA),
               ``classifier.py`` (pooling + linear head)
training/      the recipe machinery: ``compose.py`` (yaml composition, option checks),
               ``recipe.py`` (the run flow, folds, results.json), ``brain.py``, ``checkpointing.py``
               (safe loading, fallback), ``run_folder.py`` (run identity, lock), ``prepare.py``,
               ``audio.py``, ``augment.py``, ``cache.py``, ``tracking.py``, ``pretrained.py`` (the
               PETL model folder), ``recipe.yaml`` (shared by every recipe)
tools          ``classify`` (``PETLClassifier``, ``python -m petl_modules.classify``), ``export``,
               ``results``, ``demo``: the command lines a user runs
tiny           tiny random backbone configs (tests, demo, benchmark)
synthetic      small datasets in the official layouts (tests and demo)
paths          where the repository's ``hparams/`` and ``recipes/`` are
"""
