"""The results tool (``python -m petl_modules.results``) on malformed results.json files and on
runs whose backbone family has its own defaults (issues 14 and 15).

Each malformed case is one row: a valid run next to the malformed file -> the table holds the valid
run and the warning names the malformed file and what is wrong. No recipe runs here.
"""

import copy
import json
import logging
from pathlib import Path

import pytest
import ruamel.yaml
import transformers
from hyperpyyaml import resolve_references

from petl_modules import results as results_cli
from petl_modules.training.compose import compose_hparams, scalar_hparams

from conftest import REPO


def valid_run(accuracy=0.8, **extra):
    """A results.json as a finished one-split run writes it (the fields the tool reads)."""
    return {
        "dataset": "FSC", "method": "lora", "backbone": "ast", "model_type": "audio-spectrogram-transformer",
        "backbone_source": "MIT/ast-finetuned-audioset-10-10-0.4593", "seed": 10, "requested_folds": [],
        "total_params": 100_000, "trainable_params": 1100, "trainable_params_without_head": 1000,
        "trainable_percent": 1.1,
        "folds": [{"fold": None, "valid_accuracy": accuracy, "test_accuracy": accuracy,
                   "hparams": {"seed": 10, "lr": 0.005, "reduction_rate": 128}}],
        "test_accuracy": accuracy, **extra,
    }


def write(folder, content):
    """Writes ``content`` (a dict, or raw text or bytes) as ``folder/results.json``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def fold_of(**fields):
    fold = valid_run()["folds"][0]
    fold.update(fields)
    return fold


def changed(**fields):
    run = valid_run(0.5)
    run.update(fields)
    return run


def without(key):
    run = valid_run(0.5)
    del run[key]
    return run


def nested(depth):
    return "[" * depth + "]" * depth


# id -> (malformed content, a phrase the warning must hold)
MALFORMED = {
    "dataset a list": (changed(dataset=["FSC"]), "dataset is"),
    "dataset empty": (changed(dataset=" "), "dataset is"),
    "method an int": (changed(method=3), "method is 3"),
    "backbone null": (changed(backbone=None), "backbone is null"),
    "backbone_source an object": (changed(backbone_source={"a": 1}), "backbone_source is"),
    "model_type a number": (changed(model_type=1.5), "model_type is"),
    "fold hparams a list": (changed(folds=[fold_of(hparams=["lr", 0.1])]), "folds[0].hparams is"),
    "fold hparams nested": (changed(folds=[fold_of(hparams={"lr": {"a": [1]}})]), "folds[0].hparams.lr"),
    "fold hparams list of lists": (changed(folds=[fold_of(hparams={"t": [[1]]})]), "folds[0].hparams.t"),
    "requested_folds an int": (changed(requested_folds=5), "requested_folds is 5"),
    "requested_folds of strings": (changed(requested_folds=["1"]), "requested_folds[0]"),
    "fold id a list": (changed(folds=[fold_of(fold=[1, 2])]), "folds[0].fold is"),
    "fold id a string": (changed(folds=[fold_of(fold="1")]), "folds[0].fold is"),
    "fold id a boolean": (changed(folds=[fold_of(fold=True)]), "folds[0].fold is true"),
    "fold twice": (changed(folds=[fold_of(fold=1), fold_of(fold=1)]), "fold(s) 1 appear more than once"),
    "trainable_percent a string": (changed(trainable_percent="1.1"), "trainable_percent is \"1.1\""),
    "trainable_percent negative": (changed(trainable_percent=-1), "trainable_percent is -1"),
    "folds not a list": (changed(folds={"0": fold_of()}), "folds is"),
    "folds a string": (changed(folds="done"), "folds is"),
    "folds empty": (changed(folds=[]), "no fold results"),
    "fold not an object": (changed(folds=[0.8]), "folds[0] is 0.8"),
    "fold without test accuracy": (changed(folds=[{"fold": None}]), "folds[0].missing field(s) test_accuracy"),
    "accuracy a string": (changed(folds=[fold_of(test_accuracy="0.9")]), "folds[0].test_accuracy is"),
    "accuracy a boolean": (changed(folds=[fold_of(test_accuracy=True)]), "folds[0].test_accuracy is true"),
    "accuracy a percentage": (changed(folds=[fold_of(test_accuracy=85.0)]), "not a fraction in [0, 1]"),
    "total_params a string": (changed(total_params="100000"), "total_params is"),
    "total_params a boolean": (changed(total_params=True), "total_params is true"),
    "total_params a float": (changed(total_params=1e5), "total_params is"),
    "trainable_params negative": (changed(trainable_params=-3), "trainable_params is -3"),
    "trainable_params huge": (changed(trainable_params=10 ** 400), "trainable_params is"),
    "without head a list": (changed(trainable_params_without_head=[1]), "trainable_params_without_head is"),
    "missing method": (without("method"), "missing field(s) method"),
    "NaN accuracy": ('{"dataset": "FSC", "method": "lora", "backbone": "ast", "total_params": 10, '
                     '"trainable_params": 1, "folds": [{"fold": null, "test_accuracy": NaN}]}',
                     "folds[0].test_accuracy is NaN"),
    "Infinity percent": (json.dumps(changed(trainable_percent=0)).replace('"trainable_percent": 0',
                                                                          '"trainable_percent": Infinity'),
                         "trainable_percent is Infinity"),
    "huge exponent": (json.dumps(changed(trainable_percent=0)).replace('"trainable_percent": 0',
                                                                       '"trainable_percent": 1e999'),
                      "trainable_percent is Infinity"),
    "not an object": ("[1, 2, 3]", "not a JSON object"),
    "null": ("null", "not a JSON object"),
    "truncated": ('{"dataset": "FSC", "method": ', "not readable as JSON"),
    "empty file": ("", "not readable as JSON"),
    "not UTF-8": (b'{"dataset": "\xff"}', "not readable as JSON"),
    "nested garbage": (nested(100_000), "not readable as JSON"),
    "nested garbage in a field": (changed(dataset=json.loads(nested(50))), "dataset is"),
}


@pytest.mark.parametrize("content, reason", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_results_json_is_skipped_with_a_warning_naming_it(content, reason, tmp_path, capsys):
    write(tmp_path / "good", valid_run(0.8))
    bad = write(tmp_path / "bad", content)
    out = tmp_path / "report.md"
    csv_file = tmp_path / "table.csv"
    assert results_cli.main([str(tmp_path), "--out", str(out), "--csv", str(csv_file)]) == 0
    stderr = capsys.readouterr().err
    warning = next(line for line in stderr.splitlines() if line.startswith("Skipped"))
    assert str(bad) in warning and reason in warning, warning
    report = out.read_text()
    assert "| lora | 1.0K (1.00%) | 80.00 ± 0.00 |" in report  # the valid run, alone in its group
    assert str(bad) in report.split("## Skipped (1 ")[1]
    assert csv_file.read_text().count("\n") == 2  # header + the valid run's row


def test_collect_logs_the_warning_and_keeps_the_valid_runs(tmp_path, caplog):
    write(tmp_path / "good", valid_run(0.8))
    bad = write(tmp_path / "bad", changed(method=7))
    with caplog.at_level(logging.WARNING, logger="petl_modules.results"):
        runs, skipped = results_cli.collect([tmp_path])
    assert [run["path"] for run in runs] == [str(tmp_path / "good" / "results.json")]
    assert skipped == [(str(bad), "method is 7 (a number), not a non-empty string")]
    assert f"Skipped {bad}: method is 7" in caplog.text


def test_every_read_field_is_in_the_schema():
    """``read_run`` gives later code only checked fields (nothing unchecked slips through)."""
    run = valid_run(0.8, extra_field={"anything": [1]}, requested_folds=[])
    checked = results_cli.check_run(copy.deepcopy(run))
    assert set(checked) <= set(results_cli.RUN_SCHEMA)
    assert set(checked["folds"][0]) <= set(results_cli.FOLD_SCHEMA)


def test_strings_that_would_break_the_table_or_the_plot_are_shown_as_text(tmp_path):
    write(tmp_path / "a", changed(dataset="F|S\nC $x$", method="lora"))
    out, png = tmp_path / "r.md", tmp_path / "p.png"
    assert results_cli.main([str(tmp_path), "--out", str(out), "--plot", str(png)]) == 0
    assert "F\\|S C $x$" in out.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_own_datasets_get_a_column_each_by_their_dataset_name(tmp_path):
    """Runs on two own datasets (``dataset`` AudioFolder for both) are two columns, named by
    ``dataset_name``; a run written before the field existed falls back to ``dataset``."""
    write(tmp_path / "birds", changed(dataset="AudioFolder", dataset_name="birds"))
    write(tmp_path / "words", changed(dataset="AudioFolder", dataset_name="words"))
    write(tmp_path / "older", changed(dataset="AudioFolder"))
    write(tmp_path / "fsc", valid_run(0.8, dataset_name="FSC"))
    bad = write(tmp_path / "bad", changed(dataset_name=""))
    runs, skipped = results_cli.collect([tmp_path])
    assert skipped == [(str(bad), 'dataset_name is "" (a string), not a non-empty string')]
    assert sorted(r["dataset"] for r in results_cli.summarise(runs)) == [
        "AudioFolder", "FSC", "birds", "words"]
    table = results_cli.markdown_report(results_cli.summarise(runs), [])
    assert "| AudioFolder | FSC | birds | words |" in table


# ==================================================================== labels from what a run recorded
def checkpoint_config(family, folder):
    """A backbone folder holding only a config (all that composition reads of a checkpoint)."""
    config = (transformers.Wav2Vec2Config() if family == "wav2vec2" else transformers.ASTConfig())
    config.save_pretrained(folder)
    return folder


def recorded_run(tmp_path, name, method, dataset, family, accuracy=0.7, **overrides):
    """Writes a results.json shaped as ``run_recipe`` writes one for ``python recipes/<D>/train.py
    hparams/<method>.yaml --backbone_source=<a family checkpoint> --key=value...``: its header and
    one fold whose ``hparams`` are the run's plain values (here from the composed yaml with its
    references resolved, as the run's objects would hold them)."""
    source = checkpoint_config(family, tmp_path / f"checkpoint_{family}")
    recipe = {"FSC": "FSC/fsc.yaml", "ESC50": "ESC50/esc50.yaml"}[dataset]
    text = compose_hparams(REPO / "hparams" / f"{method}.yaml", REPO / "recipes" / recipe,
                           {"backbone_source": str(source), "data_folder": str(tmp_path / "data"),
                            "output_folder": str(tmp_path / name), **overrides})
    tree = ruamel.yaml.YAML().load(resolve_references(text).getvalue())
    hparams = scalar_hparams({k: v for k, v in tree.items() if getattr(v, "tag", None) is None
                              or not v.tag.value})
    hparams = json.loads(json.dumps(hparams))
    assert hparams["method"] == method  # the composition worked
    multi = dataset == "ESC50"
    run = {
        "dataset": dataset, "method": method, "backbone": family,
        "model_type": "wav2vec2" if family == "wav2vec2" else "audio-spectrogram-transformer",
        "backbone_source": str(source), "seed": hparams["seed"],
        "requested_folds": [1] if multi else [],
        "total_params": 95_000_000, "trainable_params": 50_000, "trainable_params_without_head": 48_000,
        "trainable_percent": 0.05,
        "folds": [{"fold": 1 if multi else None, "valid_accuracy": accuracy, "best_epoch": 3,
                   "test_accuracy": accuracy, "test_loss": 1.2, "experiment_folder": "x",
                   "class_names": ["a", "b"], "hparams": dict(hparams, fold=1) if multi else hparams}],
        "test_accuracy_mean": accuracy, "test_accuracy_std": 0.0, "test_accuracy": accuracy,
        "valid_accuracy": accuracy,
    }
    write(tmp_path / "runs" / name, run)
    return run


def labels(tmp_path):
    runs, skipped = results_cli.collect([tmp_path / "runs"])
    assert not skipped
    return {Path(run["path"]).parent.name: (results_cli.method_label(run), results_cli.settings_label(run))
            for run in runs}


LABEL_CASES = {
    # name: (method, dataset, family, command-line options, expected (method label, settings))
    "default wav2vec2 FSC run: its family's 50 epochs are no change": (
        "linear", "FSC", "wav2vec2", {}, ("linear", "")),
    "default full FT on wav2vec2: its family's 3 layers are no change": (
        "full_ft", "FSC", "wav2vec2", {}, ("full_ft", "")),
    "default full FT on AST": ("full_ft", "FSC", "ast", {}, ("full_ft", "")),
    "wav2vec2 FSC run with AST's epoch count": (
        "linear", "FSC", "wav2vec2", {"number_of_epochs": 75}, ("linear", "number_of_epochs=75")),
    "AST FSC run with wav2vec2's epoch count": (
        "linear", "FSC", "ast", {"number_of_epochs": 50}, ("linear", "number_of_epochs=50")),
    "full FT of every wav2vec2 layer": (
        "full_ft", "FSC", "wav2vec2", {"unfrozen_layers": "all"}, ("full_ft (unfrozen_layers=all)", "")),
    "full FT of 3 AST layers": (
        "full_ft", "FSC", "ast", {"unfrozen_layers": 3}, ("full_ft (unfrozen_layers=3)", "")),
    "prompt tuning on wav2vec2 pools speech by default": (
        "prompt_tuning", "FSC", "wav2vec2", {}, ("prompt_tuning", "")),
    "prompt tuning on AST pooling speech": (
        "prompt_tuning", "FSC", "ast", {"pooling": "speech"}, ("prompt_tuning (pooling=speech)", "")),
    "LoRA options on ESC-50 folds, a batch size": (
        "lora", "ESC50", "ast", {"reduction_rate": 64, "lr": 0.01, "batch_size": 8},
        ("lora (reduction_rate=64)", "batch_size=8, lr=0.01")),
}


@pytest.mark.parametrize("method, dataset, family, options, expected", list(LABEL_CASES.values()),
                         ids=list(LABEL_CASES))
def test_a_run_is_labelled_by_what_differs_from_its_own_composition(
        method, dataset, family, options, expected, tmp_path):
    recorded_run(tmp_path, "run", method, dataset, family, **options)
    assert labels(tmp_path) == {"run": expected}


# Every method file: a default run is labelled by the method alone on either family.
@pytest.mark.parametrize("method", sorted(p.stem for p in (REPO / "hparams").glob("*.yaml")))
def test_a_default_run_of_every_method_file_is_labelled_by_its_name(method, tmp_path):
    recorded_run(tmp_path, "ast", method, "FSC", "ast")
    recorded_run(tmp_path, "w2v", method, "FSC", "wav2vec2")
    assert labels(tmp_path) == {"ast": (method, ""), "w2v": (method, "")}


def test_the_new_methods_options_show_in_their_labels(tmp_path):
    recorded_run(tmp_path, "targets", "lora", "FSC", "ast", lora_targets="q,k,v,o,ffn_in,ffn_out")
    recorded_run(tmp_path, "dora", "dora", "FSC", "ast", reduction_rate=64)
    recorded_run(tmp_path, "ia3", "ia3", "FSC", "ast", ia3_targets="k,v")
    recorded_run(tmp_path, "vera", "vera", "FSC", "ast", rank=128)
    got = labels(tmp_path)
    assert got["targets"][0] == "lora (lora_targets=q,k,v,o,ffn_in,ffn_out)"
    assert got["dora"][0] == "dora (reduction_rate=64)"
    assert got["ia3"][0] == "ia3 (ia3_targets=k,v)" and got["vera"][0] == "vera (rank=128)"


def test_default_runs_of_both_families_share_the_method_row(tmp_path):
    recorded_run(tmp_path, "ast", "full_ft", "FSC", "ast", accuracy=0.9)
    recorded_run(tmp_path, "w2v", "full_ft", "FSC", "wav2vec2", accuracy=0.6)
    out = tmp_path / "r.md"
    assert results_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    report = out.read_text()
    assert "number_of_epochs" not in report and "unfrozen_layers" not in report
    assert report.count("| full_ft | 48.0K") == 2  # one row in each backbone's table


def test_an_unknown_method_or_dataset_is_tabulated_without_options(tmp_path, caplog):
    write(tmp_path / "runs" / "a", changed(method="my_method"))
    write(tmp_path / "runs" / "b", changed(dataset="MyData"))
    with caplog.at_level(logging.WARNING, logger="petl_modules.results"):
        assert labels(tmp_path) == {"a": ("my_method", ""), "b": ("lora", "")}
