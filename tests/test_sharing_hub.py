"""The Hugging Face Hub: repo ids resolved from the cache (offline), the model card, push, and the
run's metrics.json. Nothing here reaches the network: the cache is built in a temporary folder and
the upload is checked at huggingface_hub's API boundary."""

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants

from petl_modules import classify as classify_cli
from petl_modules import export as export_cli
from petl_modules import push as push_cli
from petl_modules.classify import PETLClassifier
from petl_modules.methods import METHODS
from petl_modules.model.folder import read_config
from petl_modules.model.hub import resolve_model_dir, split_repo_id
from petl_modules.model.metrics_file import (
    METRICS_FILE,
    MetricsError,
    read_metrics,
    write_metrics,
)
from petl_modules.sharing.model_card import model_card
from petl_modules.training.pretrained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PETLModelError,
    save_petl_model,
)

from conftest import REPO, read_results, run_train
from test_after_training import build, pretend_trained, tiny_options, waveforms

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMAND = "python recipes/FSC/train.py hparams/lora.yaml --data_folder=/data/fsc"


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory, tiny_ast):
    """A LoRA petl_model/ folder on the tiny AST (pretend-trained), with its metrics.json."""
    tmp = tmp_path_factory.mktemp("hub_lora")
    hparams, _ = build("lora", tiny_ast, tmp, **tiny_options("lora"))
    pretend_trained(hparams, hparams["backbone"].input_processor)
    folder = tmp / "petl_model"
    save_petl_model(folder, hparams, [f"c{i}" for i in range(31)])
    write_metrics(folder, {"fold": None, "test_accuracy": 0.875, "test_loss": 0.5,
                           "valid_accuracy": 0.9, "best_epoch": 3}, dataset="FSC", command=COMMAND)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (HF_HUB_CACHE) in offline mode; ``add(repo_id, folder)`` puts a
    snapshot of ``folder`` there in the cache's own layout (refs/main -> snapshots/<commit>)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def add(repo_id, folder):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        return repo / "snapshots" / COMMIT

    return add


def probabilities(classifier):
    wavs = torch.nn.utils.rnn.pad_sequence(waveforms(2), batch_first=True)
    return classifier.classify_batch(wavs)[0]


# ==================================================================== resolving
def test_local_paths_and_repo_ids_are_told_apart(tmp_path):
    assert split_repo_id("my-lab/ast-fsc-lora") == ("my-lab/ast-fsc-lora", None)
    assert split_repo_id("my-lab/ast-fsc-lora@v1.0") == ("my-lab/ast-fsc-lora", "v1.0")
    for path in ("./lab/model", "/abs/lab", "~/lab/model", "results/FSC/lora/petl_model",
                 "petl_model", "lab/bad name"):
        assert split_repo_id(path) is None, path
    (tmp_path / "lab" / "model").mkdir(parents=True)
    assert resolve_model_dir(tmp_path / "lab" / "model") == tmp_path / "lab" / "model"
    with pytest.raises(PETLModelError, match="not an existing folder"):
        resolve_model_dir(tmp_path / "missing" / "deeper" / "petl_model")


def test_repo_id_resolves_from_the_offline_cache_everywhere(lora_folder, hub_cache, tmp_path,
                                                            capsys):
    snapshot = hub_cache("my-lab/tiny-lora", lora_folder)
    assert resolve_model_dir("my-lab/tiny-lora") == snapshot
    expected = probabilities(PETLClassifier.from_folder(lora_folder))
    assert torch.equal(probabilities(PETLClassifier.from_folder("my-lab/tiny-lora")), expected)
    wav = tmp_path / "a.wav"
    import soundfile

    soundfile.write(wav, waveforms(1)[0].numpy(), 16000)
    assert classify_cli.main(["my-lab/tiny-lora", str(wav), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] in read_config(lora_folder)["class_names"]
    assert export_cli.main(["my-lab/tiny-lora", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("tool", ["classify", "export", "api"])
def test_repo_id_missing_from_the_offline_cache_says_what_to_do(tool, hub_cache, tmp_path, capsys):
    if tool == "api":
        with pytest.raises(PETLModelError, match="HF_HUB_OFFLINE"):
            PETLClassifier.from_folder("my-lab/not-cached")
        return
    main = {"classify": classify_cli.main, "export": export_cli.main}[tool]
    assert main(["my-lab/not-cached", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'my-lab/not-cached' is not in the Hugging Face cache" in err
    assert "If you meant a local folder" in err
    assert not (tmp_path / "x").exists()


def test_a_cached_repo_that_is_not_a_petl_model_folder_is_refused(hub_cache, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    hub_cache("my-lab/a-transformers-model", tmp_path / "other")
    with pytest.raises(PETLModelError, match="holds no petl_config.json"):
        resolve_model_dir("my-lab/a-transformers-model")


# ==================================================================== metrics.json
def test_metrics_json_is_schema_checked_data(lora_folder, tmp_path):
    metrics = read_metrics(lora_folder)
    assert metrics["test_accuracy"] == 0.875 and metrics["command"] == COMMAND
    assert read_metrics(tmp_path) is None  # optional
    for bad in ({"format_version": 1, "test_accuracy": "!!python/object"},
                {"format_version": 1, "extra": 1}, {"test_accuracy": 0.5}, [1, 2],
                {"format_version": 99}):
        (tmp_path / METRICS_FILE).write_text(json.dumps(bad))
        with pytest.raises(MetricsError):
            read_metrics(tmp_path)


# ==================================================================== model card and push
def test_model_card_has_hub_metadata_and_says_what_the_model_is(lora_folder):
    config = read_config(lora_folder)
    card = model_card(config, read_metrics(lora_folder), "my-lab/tiny-lora")
    front, body = card.content.split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "petl-ast"
    assert meta["pipeline_tag"] == "audio-classification"
    assert {"lora", "ast", "audio-classification"} <= set(meta["tags"])
    assert meta["datasets"] == ["FSC"] and meta["metrics"] == ["accuracy"]
    assert "base_model" not in meta  # a local checkpoint is no Hub id
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == 0.875 and result["dataset"]["name"] == "FSC"
    assert ModelCard(card.content).data.library_name == "petl-ast"  # the Hub's parser reads it
    trained = f"{config['trained_params']:,}"
    for text in ("`lora`", "lora_targets=Wq,Wv", f"checkpoint `{config['backbone_source']}`",
                 "FSC", "87.50%", "90.00% (epoch 3)", trained, COMMAND,
                 "python -m petl_modules.classify my-lab/tiny-lora", "--backbone_source",
                 "2312.03694", "2402.00828", "Soft Mixture of Adapters",
                 "Parameter-Efficient Transfer Learning of Audio Spectrogram Transformers"):
        assert text in body, text


def test_model_card_of_a_hub_backbone_names_it_as_base_model(lora_folder):
    config = dict(read_config(lora_folder), backbone_source="MIT/ast-finetuned-audioset-10-10-0.4593")
    meta = yaml.safe_load(model_card(config).content.split("---\n", 2)[1])
    assert meta["base_model"] == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert "model-index" not in meta  # no metrics.json: no scores claimed


def test_push_creates_the_repo_and_uploads_the_folder_with_its_card(lora_folder, monkeypatch,
                                                                  capsys):
    calls = []

    def create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(**kwargs):
        folder = kwargs["folder_path"]
        files = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder).iterdir()}
        calls.append(("upload_folder", kwargs, files))
        return type("Commit", (), {"oid": "abc", "repo_url": "https://hf.co/my-lab/tiny-lora"})()

    monkeypatch.setattr(push_cli.huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(push_cli.huggingface_hub, "upload_folder", upload_folder)
    assert push_cli.main([str(lora_folder), "my-lab/tiny-lora", "--private"]) == 0
    assert calls[0] == ("create_repo", "my-lab/tiny-lora", {"private": True, "exist_ok": True})
    _, kwargs, files = calls[1]
    assert kwargs["repo_id"] == "my-lab/tiny-lora"
    assert sorted(kwargs["allow_patterns"]) == sorted(files) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, "README.md"])
    assert files[WEIGHTS_FILE] == (lora_folder / WEIGHTS_FILE).read_bytes()
    assert json.loads(files[CONFIG_FILE]) == json.loads((lora_folder / CONFIG_FILE).read_text())
    assert b"library_name: petl-ast" in files["README.md"] and COMMAND.encode() in files["README.md"]
    assert not (lora_folder / "README.md").exists()  # the user's folder is left as it was
    assert "Pushed to https://hf.co/my-lab/tiny-lora" in capsys.readouterr().out


def test_push_refuses_bad_folders_and_repo_ids_before_any_upload(lora_folder, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setattr(push_cli.huggingface_hub, "create_repo", lambda *a, **k: pytest.fail())
    assert push_cli.main([str(tmp_path), "my-lab/x"]) == 2
    assert "is not a PETL model folder" in capsys.readouterr().err
    assert push_cli.main([str(lora_folder), "not a repo"]) == 2
    assert "is not a Hub repo id" in capsys.readouterr().err
    shutil.copytree(lora_folder, tmp_path / "bad")
    (tmp_path / "bad" / METRICS_FILE).write_text('{"format_version": 1, "test_accuracy": [1]}')
    assert push_cli.main([str(tmp_path / "bad"), "my-lab/x"]) == 2
    assert "metrics.json" in capsys.readouterr().err


# ==================================================================== end to end
@pytest.mark.slow
def test_a_run_records_its_metrics_and_push_dry_run_shows_them(fsc_data, tiny_ast, tmp_path,
                                                                capsys):
    out = tmp_path / "run"
    run_train("FSC", "lora", fsc_data, tiny_ast, out, "--reduction_rate=16")
    results = read_results(out)
    metrics = read_metrics(out / "petl_model")
    assert metrics["test_accuracy"] == pytest.approx(results["test_accuracy_mean"])
    assert metrics["dataset"] == "FSC" and "recipes/FSC/train.py" in metrics["command"]
    assert "hparams/lora.yaml" in metrics["command"]
    assert push_cli.main([str(out / "petl_model"), "my-lab/x", "--dry_run"]) == 0
    card = capsys.readouterr().out
    assert f"{100 * metrics['test_accuracy']:.2f}%" in card and metrics["command"] in card


# Every registered method: the card names it with its options (from its config class) and cites
# its own paper where it has one beyond the two PETL-AST papers.
@pytest.mark.parametrize("method", sorted(p.stem for p in (REPO / "hparams").glob("*.yaml")))
def test_model_card_names_every_method_with_its_options_and_paper(method, lora_folder):
    config = read_config(lora_folder)
    defaults = METHODS[method].defaults()
    card = model_card(dict(config, method=method, options=defaults)).content
    body = card.split("---\n", 2)[2]
    assert f"`{method}`" in body and method in yaml.safe_load(card.split("---\n", 2)[1])["tags"]
    for key, value in defaults.items():
        if value is not None:
            assert f"{key}={value}" in body, key
    own = METHODS[method].citation
    assert ("2312.03694" in body) and (not own or own in body)


# ==================================================================== push at the HTTP boundary
ODD_CLASS_NAMES = ["<unk>", "<sil>", "=1+1", "+SUM(A1)", "@x", "C++", "%pct", "!bang", "x**2",
                   "café ü 音", "two words", "tab\there"]  # a newline is refused at preparation


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub's own HTTP client on a mock transport that answers as the Hub does
    (create the repo, validate the card's metadata, pre-upload: every file inline, commit); returns
    ``{"requests", "files", "card_metadata"}``: every
    request's ``(method, url)`` and the committed files ``{path: bytes}``. Nothing leaves the process."""
    import base64

    import httpx2
    from huggingface_hub.utils import _http

    seen = {"requests": [], "files": {}}

    def handler(request):
        seen["requests"].append((request.method, str(request.url)))
        path = request.url.path
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/my-lab/odd", "name": "my-lab/odd"})
        if path == "/api/validate-yaml":  # the card's metadata, checked before the commit
            seen["card_metadata"] = json.loads(request.content)["content"]
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    value = entry["value"]
                    seen["files"][value["path"]] = base64.b64decode(value["content"])
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/my-lab/odd/commit/1",
                                              "commitOid": "1" * 40, "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"not a Hub endpoint this test serves: {path}"})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the transport below is the network
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    _http.close_session()
    yield seen
    _http.set_client_factory(_http.default_client_factory)
    _http.close_session()


def test_push_of_odd_class_names_uploads_them_unchanged_and_no_local_path(tiny_ast, tmp_path,
                                                                         monkeypatch, fake_hub):
    hparams, _ = build("lora", tiny_ast, tmp_path, **tiny_options("lora"))
    names = ODD_CLASS_NAMES + [f"c{i}" for i in range(31 - len(ODD_CLASS_NAMES))]
    folder = tmp_path / "run" / "petl_model"
    save_petl_model(folder, hparams, names)
    script = REPO / "recipes" / "FSC" / "train.py"  # the run's command, as the recipe records it
    monkeypatch.setattr("sys.argv", [str(script), "hparams/lora.yaml", f"--data_folder={tmp_path / 'fsc'}"])
    write_metrics(folder, {"fold": None, "test_accuracy": 0.5, "best_epoch": 1}, dataset="FSC")
    assert push_cli.main([str(folder), "my-lab/odd"]) == 0
    files = fake_hub["files"]
    assert sorted(files) == sorted([CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, "README.md"])
    assert {urlparse(url).netloc for _, url in fake_hub["requests"]} == {"huggingface.co"}
    assert files[WEIGHTS_FILE] == (folder / WEIGHTS_FILE).read_bytes()
    config = json.loads(files[CONFIG_FILE])
    assert config["class_names"] == names  # as they are: data, neither escaped nor evaluated
    assert PETLClassifier.from_folder(folder).labels == names
    card = files["README.md"].decode("utf-8")
    assert ModelCard(card).data.base_model is None and "| Classes | 31 |" in card
    for name, content in files.items():  # no path of this machine in what others download
        text = content.decode("utf-8", errors="replace")
        for local in (str(tmp_path), str(tiny_ast), str(REPO), str(Path.home())):
            assert local not in text, (name, local)
    assert json.loads(files[METRICS_FILE])["command"].endswith("hparams/lora.yaml --data_folder=.../fsc")
    assert "my-lab/odd" in card and "tab\there" not in fake_hub["card_metadata"]  # labels stay out of it
