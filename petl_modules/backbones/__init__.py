"""Backbone lobes: one file per family behind the contract of ``base.Backbone``.

``Backbone(source, ...)`` builds the lobe of a checkpoint's family from its ``config.json``
``model_type`` (the registry ``FAMILIES``, filled by each family file's ``@register``):

- ``ast.py``: the Audio Spectrogram Transformer;
- ``wav2vec2.py``: wav2vec 2.0, HuBERT and WavLM;
- ``whisper.py``: the Whisper encoder;
- ``data2vec_audio.py``: data2vec-audio (``Wav2Vec2Backbone`` with its positional convolutions);
- ``beats.py``: BEATs (SpeechBrain's model, released ``.pt`` checkpoints);
- ``w2v_bert.py``: w2v-BERT 2.0 (a Conformer: two half-step FFNs, a convolution module);
- ``features.py``: the per-utterance input processors (Kaldi fbank, waveform, Whisper log-mel).
"""

from petl_modules.backbones import ast, wav2vec2, whisper  # noqa: F401  (each registers its model types
from petl_modules.backbones import data2vec_audio  # noqa: F401  (registers data2vec-audio)
from petl_modules.backbones import beats  # noqa: F401  (registers beats: .pt files)
from petl_modules.backbones import w2v_bert  # noqa: F401  (registers wav2vec2-bert)
from petl_modules.backbones.base import FAMILIES, Backbone, lobe_class, lobe_for, register
from petl_modules.backbones.loading import read_config

__all__ = ["FAMILIES", "Backbone", "lobe_class", "lobe_for", "read_config", "register"]
