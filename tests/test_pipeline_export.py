"""The default export in transformers' own audio-classification classes, checked through
``pipeline("audio-classification", model=OUT)`` itself against ``classify``.

Oracle: ``PETLClassifier.classify_file`` on the PETL model folder (probabilities within 1e-5, the
same top-1) on clips shorter than, as long as and longer than the trained clip; the heads' trained
tensors are moved away from their start (``petl_folder``) so that a wrong mapping shows. Tiny
random checkpoints of every model type the registry holds (AST's is fast, the others slow).
"""

import json

import numpy as np
import pytest
import soundfile
import torch
import transformers
from test_interop import TINY_MODEL_TYPES, check_onnx, petl_folder, save_tiny

from petl_modules.backbones.wav2vec2 import SEQUENCE_CLASSIFIERS
from petl_modules.classify import PETLClassifier
from petl_modules.export import export_petl_model, pipeline_message
from petl_modules.export import main as export_main
from petl_modules.methods.classifier import POOLINGS, Classifier
from petl_modules.sharing.head import read_head
from petl_modules.sharing.peft_lora import import_peft_adapter

# The class each family maps onto, and the pooling that maps (AST: its own CLS + distillation head).
EXPECTED_CLASS = {"audio-spectrogram-transformer": "ASTForAudioClassification",
                  "whisper": "WhisperForAudioClassification",
                  **{t: c.__name__ for t, c in SEQUENCE_CLASSIFIERS.items()},
                  "wav2vec2-bert": "Wav2Vec2BertForSequenceClassification",
                  "beats": None}  # not a transformers model: the base model is written
MAPPED_TYPES = [t for t in TINY_MODEL_TYPES if EXPECTED_CLASS.get(t)]
MAPPING_POOLING = {"audio-spectrogram-transformer": "cls_distill"}
TRAINED_SAMPLES = 400 + 63 * 160  # AST's 64 frames (petl_folder's max_frames); waveforms: whole files


def write_clips(folder, lengths=(4000, TRAINED_SAMPLES, 3 * TRAINED_SAMPLES)):
    generator = np.random.default_rng(0)
    paths = []
    for samples in lengths:
        path = folder / f"clip_{samples}.wav"
        soundfile.write(path, (0.1 * generator.standard_normal(samples)).astype(np.float32), 16000,
                        subtype="FLOAT")
        paths.append(path)
    return paths


def pipeline_scores(out, path, class_names):
    """``pipeline("audio-classification")``'s scores of the file, in ``class_names`` order (audio
    given as an array: reading a file name needs ffmpeg)."""
    pipe = transformers.pipeline("audio-classification", model=str(out))
    wav, rate = soundfile.read(path, dtype="float32")
    found = {row["label"]: row["score"] for row in pipe({"raw": wav, "sampling_rate": rate}, top_k=None)}
    return np.array([found[name] for name in class_names])


def check_pipeline_equals_classify(folder, out, clips):
    classifier = PETLClassifier.from_folder(folder)
    names = classifier.labels
    for path in clips:
        expected = classifier.classify_file(path)[0][0].numpy()
        found = pipeline_scores(out, path, names)
        assert np.abs(found - expected).max() <= 1e-5, (path.name, float(np.abs(found - expected).max()))
        assert found.argmax() == expected.argmax()
        assert expected.max() - expected.min() > 1e-3  # scores that tell the classes apart


def test_every_model_type_of_the_registry_has_its_class():
    assert set(EXPECTED_CLASS) == set(TINY_MODEL_TYPES)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", [t for t in TINY_MODEL_TYPES if not EXPECTED_CLASS.get(t)])
def test_an_unmapped_family_exports_its_base_model_and_says_why(model_type, tmp_path):
    folder = petl_folder("lora", save_tiny(model_type, tmp_path / "base"), tmp_path)
    side = export_petl_model(folder, tmp_path / "exported")
    assert side["transformers_class"] is None and side["pipeline"]
    assert "cannot reproduce this head" in pipeline_message(side, tmp_path / "exported")


@pytest.mark.parametrize("model_type", [t if t == "audio-spectrogram-transformer" else
                                        pytest.param(t, marks=pytest.mark.slow) for t in MAPPED_TYPES])
def test_pipeline_on_the_export_gives_classify_scores(model_type, tmp_path):
    source = save_tiny(model_type, tmp_path / "base")
    options = {"pooling": MAPPING_POOLING.get(model_type, "mean")}
    if model_type != "audio-spectrogram-transformer":
        options["clip_seconds"] = None  # whole files, as pipeline feeds them (Whisper: its 2 s)
    folder = petl_folder("lora", source, tmp_path, **options)
    out = tmp_path / "exported"
    side = export_petl_model(folder, out)
    assert side["transformers_class"] == EXPECTED_CLASS[model_type] and side["pipeline"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [EXPECTED_CLASS[model_type]]
    assert config["id2label"] == {str(i): f"c{i}" for i in range(31)}
    assert config["label2id"] == {f"c{i}": i for i in range(31)}
    model = transformers.AutoModelForAudioClassification.from_pretrained(out)
    assert type(model).__name__ == EXPECTED_CLASS[model_type]
    check_pipeline_equals_classify(folder, out, write_clips(tmp_path))


@pytest.mark.slow
def test_whisper_on_a_clip_of_whole_seconds_exports_its_positions(tmp_path):
    source = save_tiny("whisper", tmp_path / "base")  # a full input of 2 s
    folder = petl_folder("lora", source, tmp_path, clip_seconds=1.0)
    side = export_petl_model(folder, tmp_path / "exported")
    assert side["transformers_class"] == "WhisperForAudioClassification"
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "exported")
    assert extractor.chunk_length == 1 and extractor.feature_size == 80
    check_pipeline_equals_classify(folder, tmp_path / "exported", write_clips(tmp_path))


@pytest.mark.slow
def test_whisper_on_a_clip_of_a_fraction_of_a_second_says_why_not(tmp_path):
    source = save_tiny("whisper", tmp_path / "base")
    folder = petl_folder("lora", source, tmp_path)  # clip_seconds 0.64
    side = export_petl_model(folder, tmp_path / "exported")
    assert side["transformers_class"] is None and "whole seconds" in side["pipeline"]


def test_a_multilabel_export_is_scored_with_sigmoids_by_pipeline(tmp_path, tiny_ast):
    folder = petl_folder("linear", tiny_ast, tmp_path, pooling="cls_distill", task="multilabel")
    side = export_petl_model(folder, tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert side["transformers_class"] == "ASTForAudioClassification"
    assert config["problem_type"] == "multi_label_classification"
    check_pipeline_equals_classify(folder, tmp_path / "exported", write_clips(tmp_path, (4000,)))


def test_ast_export_writes_the_run_input_settings(tmp_path, tiny_ast):
    folder = petl_folder("linear", tiny_ast, tmp_path, pooling="cls_distill")  # max_frames 64
    export_petl_model(folder, tmp_path / "exported")
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "exported")
    assert type(extractor).__name__ == "ASTFeatureExtractor"
    assert (extractor.max_length, extractor.num_mel_bins, extractor.do_normalize) == (64, 128, True)
    assert (extractor.mean, extractor.std) == (-4.2677393, 4.5689974)
    head = read_head(tmp_path / "exported")  # the side files, with the head's LayerNorm
    assert set(head[0]) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p in ("mean", "cls")])
def test_other_ast_poolings_write_the_base_model_and_say_why(pooling, tmp_path, tiny_ast, capsys):
    folder = petl_folder("lora", tiny_ast, tmp_path, pooling=pooling)
    assert export_main([str(folder), str(tmp_path / "exported")]) == 0
    printed = capsys.readouterr().out
    assert "cannot reproduce this head" in printed and "--pooling=cls_distill" in printed
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architectures"] == ["ASTModel"]
    assert (tmp_path / "exported" / "preprocessor_config.json").is_file()


def test_a_waveform_run_cut_to_a_clip_says_which_files_pipeline_scores_otherwise(tmp_path):
    source = save_tiny("wav2vec2", tmp_path / "base")  # group-norm CNN: no attention mask
    folder = petl_folder("lora", source, tmp_path)  # clip_seconds 0.64
    side = export_petl_model(folder, tmp_path / "exported")
    assert side["transformers_class"] == "Wav2Vec2ForSequenceClassification"
    message = pipeline_message(side, tmp_path / "exported")
    assert "clip_seconds=0.64" in message and "shorter ones too" in message


def test_cls_distill_pools_as_ast_for_audio_classification_with_two_d_more_parameters():
    """Oracle: transformers' ASTMLPHead on ASTModel's pooler output ((CLS + distillation) / 2)."""
    torch.manual_seed(0)
    head = Classifier(8, 3, pooling="cls_distill")
    with torch.no_grad():
        head.norm.weight.normal_(), head.norm.bias.normal_()
    assert sum(p.numel() for p in head.parameters()) == 8 * 3 + 3 + 2 * 8
    config = transformers.ASTConfig(hidden_size=8, num_labels=3)
    theirs = transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer.ASTMLPHead(config)
    theirs.layernorm.load_state_dict(head.norm.state_dict())
    theirs.dense.load_state_dict(head.head.state_dict())
    hidden = torch.randn(2, 5, 8)
    assert torch.equal(head(hidden), theirs((hidden[:, 0] + hidden[:, 1]) / 2))


def test_cls_distill_is_refused_with_prompt_tuning():
    with pytest.raises(ValueError, match="CLS and distillation.*prompts in place of the second"):
        Classifier(8, 3, pooling="cls_distill", prompt_span=[1, 5])


def test_peft_base_folder_has_the_run_preprocessor_config(tiny_ast, tmp_path):
    """The PEFT export's ``base/`` (the run cut AST's positions to 64 frames; the tiny checkpoint
    has no preprocessor config of its own) holds the run's input settings."""
    folder = petl_folder("lora", tiny_ast, tmp_path)
    export_petl_model(folder, tmp_path / "peft", format="peft")
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "peft" / "base")
    assert type(extractor).__name__ == "ASTFeatureExtractor" and extractor.max_length == 64


def test_a_cls_distill_head_goes_through_peft_export_and_import(tiny_ast, tmp_path):
    """Its LayerNorm is in the side files (read_head) and comes back: the same scores."""
    folder = petl_folder("lora", tiny_ast, tmp_path, pooling="cls_distill")
    export_petl_model(folder, tmp_path / "peft", format="peft")
    import_peft_adapter(tmp_path / "peft", tmp_path / "imported", max_frames=64)
    (clip,) = write_clips(tmp_path, (8000,))
    ours = PETLClassifier.from_folder(folder).classify_file(clip)[0][0]
    imported = PETLClassifier.from_folder(tmp_path / "imported").classify_file(clip)[0][0]
    assert torch.allclose(ours, imported, atol=1e-5)


@pytest.mark.slow
def test_a_cls_distill_head_exports_to_onnx(tiny_ast, tmp_path):
    check_onnx(petl_folder("lora", tiny_ast, tmp_path, pooling="cls_distill"), tmp_path / "onnx")
