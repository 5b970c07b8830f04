"""PETL-AST: parameter-efficient transfer learning of audio encoders, as SpeechBrain building blocks.

Modules
-------
backbones      the backbone lobes (AST; wav2vec2/HuBERT/WavLM) and their named insertion points
adapted        ``AdaptedBackbone``: attaches PETL modules at insertion points, decides what trains
adapters       adapter blocks (bottleneck, conformer, convpass) and the adapter wrapper
lora           LoRA on the attention projections, and merging it
prompt         prompt tuning (shallow/deep) and prefix tuning
moa            Dense-MoA and Soft-MoA with batched experts
features       per-utterance input processors (Kaldi fbank for AST, waveform for wav2vec2)
augment        SpecAugment that fits the input (fbank masks for AST, a time mask on waveforms)
audio          reading any audio file as 16 kHz mono
classifier     pooling + linear head
brain          the classification Brain shared by every recipe
recipe         composing the yaml files, data loading, folds, results.json
prepare        what every dataset preparation script shares
checkpointing  the random state of every process as a checkpoint recoverable
tracking       file train log, optional Weights & Biases
cache          linear probing from cached backbone outputs
pretrained     the PETL model folder (save, rebuild on the base checkpoint, merge)
classify       inference: ``PETLClassifier`` and ``python -m petl_modules.classify``
export         ``python -m petl_modules.export``: merged backbone as a transformers folder
results        ``python -m petl_modules.results``: table, CSV and plot of many runs
synthetic      generators of small datasets in the official layouts (tests and demo)
demo           ``python -m petl_modules.demo``: a whole run offline on synthetic data
"""
