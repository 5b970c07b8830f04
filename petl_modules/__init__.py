"""PETL-AST: parameter-efficient transfer learning of audio encoders, as SpeechBrain building blocks.

Modules
-------
backbones   the backbone lobes (AST, ...) and their named insertion points
adapted     ``AdaptedBackbone``: attaches PETL modules at insertion points, decides what trains
features    per-utterance input processors (Kaldi fbank for AST)
audio       reading any audio file as 16 kHz mono
classifier  pooling + linear head
brain       the classification Brain shared by every recipe
recipe      composing the yaml files, data loading, folds, results.json
synthetic   generators of small datasets in the official layouts (tests and demo)
"""
