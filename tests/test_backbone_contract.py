"""The backbone contract (``petl_modules.backbones.base``): methods never name a family, and a lobe
that is not a transformers model hosts the methods through the contract's hooks alone."""

import ast
import json
import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from petl_modules.backbones import FAMILIES, Backbone, lobe_class
from petl_modules.backbones.base import attend_with_prefix, checkpoint_fingerprint, prefix_key_width
from petl_modules.methods.adapted import AdaptedBackbone
from petl_modules.methods.adapters import Adapter
from petl_modules.methods.lora import LoRA
from petl_modules.methods.prompt import PrefixTuning, prompt_tuning

from conftest import TINY_BACKBONES

METHODS = Path(__file__).resolve().parents[1] / "petl_modules" / "methods"


# ==================================================================== methods name no family
def family_names():
    """Words naming a registered family (model types, lobe families) and the class-name prefixes
    of their transformers models (``WavLMModel`` -> ``WavLM``), from the registry."""
    words = set(FAMILIES) | {lobe.family for lobe in FAMILIES.values()}
    words |= {w.replace("-", "_") for w in words}
    mapping = transformers.models.auto.modeling_auto.MODEL_MAPPING_NAMES
    prefixes = {mapping[t].removesuffix("Model") for t in FAMILIES if t in mapping}
    prefixes |= {lobe.__name__.removesuffix("Backbone") for lobe in FAMILIES.values()}
    return sorted(words), sorted(prefixes), ["transformers"]


def code_names(tree):
    """``[(line, text, is_identifier)]``: identifiers, imported modules and non-docstring strings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append((node.lineno, node.id, True))
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr, True))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            found.append((node.lineno, node.name, True))
        elif isinstance(node, ast.arg):
            found.append((node.lineno, node.arg, True))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [(node.lineno, part, True) for m in modules for part in m.split(".")]
            found += [(node.lineno, a.asname, True) for a in node.names if a.asname]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            found.append((node.lineno, node.value, False))
    return found


def test_family_names_come_from_the_registry():
    words, prefixes, _ = family_names()
    assert {"ast", "wav2vec2", "wavlm", "hubert"} <= set(words)
    assert {"AST", "WavLM", "Wav2Vec2", "Hubert"} <= set(prefixes)


@pytest.mark.parametrize("path", sorted(METHODS.glob("*.py")), ids=lambda p: p.name)
def test_no_method_module_names_a_backbone_family(path):
    """Code of ``petl_modules/methods/*`` (identifiers, imports, strings; docstrings and comments
    may cite the reference's models) names no registered family, model class nor transformers."""
    words, prefixes, banned = family_names()
    word = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, words + banned)) + r")(?![a-z0-9])")
    prefix = re.compile(r"^(" + "|".join(map(re.escape, prefixes)) + r")(?![a-z])")
    hits = [
        f"{path.name}:{line}: {text!r}"
        for line, text, identifier in code_names(ast.parse(path.read_text()))
        if word.search(text.lower()) or (identifier and prefix.search(text))
    ]
    assert hits == []


# ==================================================================== a lobe without transformers
class PlainAttention(torch.nn.Module):
    """Multi-head attention of q/k/v/o Linear layers, called as ``(x, attention_mask)``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, attention_mask=None):
        def split(t):
            return t.view(*t.shape[:2], self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                             split(self.v_proj(x)), attn_mask=attention_mask)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape)), None


class FusedAttention(torch.nn.Module):
    """An attention the default hook cannot run (one fused projection; returns a tensor)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x, extra_keys=None, extra_values=None):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if extra_keys is not None:
            k = torch.cat([extra_keys.expand(x.shape[0], -1, -1), k], 1)
            v = torch.cat([extra_values.expand(x.shape[0], -1, -1), v], 1)

        def split(t):
            return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(x.shape)


@attend_with_prefix.register(FusedAttention)
def _fused_attend_with_prefix(attention, hidden, prefix_keys, prefix_values, start, *args, **kwargs):
    assert start == 0
    return attention(hidden, prefix_keys, prefix_values)


@prefix_key_width.register(FusedAttention)
def _fused_key_width(attention):
    return attention.qkv.out_features // 3


class Layer(torch.nn.Module):
    def __init__(self, dim, attention):
        super().__init__()
        self.attention = attention
        self.mlp = torch.nn.Linear(dim, dim)

    def forward(self, h):
        out = self.attention(h)
        h = h + (out[0] if isinstance(out, tuple) else out)
        return h + self.mlp(h)


@pytest.fixture
def plain_checkpoint(tmp_path, monkeypatch):
    """A folder with a non-transformers ``config.json`` and the lobe of its ``model_type``."""
    monkeypatch.setitem(FAMILIES, "plain-test", PlainLobe)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "plain-test", "fused": False}))
    return tmp_path


class PlainLobe(Backbone):
    """A lobe of plain torch modules: inputs ``[B, T, 4]`` -> ``(hidden [B, T, 8], None)``."""

    INSERTION_POINTS = {
        "embeddings": ["embed"],
        "layer": ["layers.[0-9]"],
        "later_layers": ["layers.[1-9]"],
        "attention": ["layers.*.attention"],
        "ffn": ["layers.*.mlp"],
        "q": ["layers.*.attention.q_proj"],
        "v": ["layers.*.attention.v_proj"],
    }
    family = "plain"
    input_kind = "spectrogram"

    def __init__(self, source, fused=None, **other_options):
        super().__init__(other_options)
        config = json.loads((Path(source) / "config.json").read_text())
        fused = config["fused"] if fused is None else fused
        self.config = types.SimpleNamespace(hidden_size=8, num_hidden_layers=2)
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(4, 8)
        make = FusedAttention if fused else PlainAttention
        self.layers = torch.nn.ModuleList(Layer(8, make(8, 2)) for _ in range(2))
        self.remember_checkpoint(*self.checkpoint_state(source))

    @classmethod
    def checkpoint_state(cls, source):
        return {"w": torch.arange(6.0)}, set()

    def forward(self, inputs, lengths=None):
        h = self.embed(inputs)
        for layer in self.layers:
            h = layer(h)
        return h, None


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_a_non_transformers_lobe_is_found_and_fingerprinted_through_the_contract(plain_checkpoint):
    assert lobe_class(plain_checkpoint) is PlainLobe
    assert isinstance(Backbone(str(plain_checkpoint)), PlainLobe)
    assert checkpoint_fingerprint(str(plain_checkpoint))["tensors"] == 1  # its checkpoint_state
    assert Backbone(str(plain_checkpoint)).fingerprint() == checkpoint_fingerprint(str(plain_checkpoint))


def test_a_non_transformers_lobe_hosts_lora_adapters_prompts_and_prefixes(plain_checkpoint):
    x = torch.randn(2, 5, 4)
    plain = Backbone(str(plain_checkpoint)).eval()
    reference = plain(x)[0]

    lora = AdaptedBackbone(Backbone(str(plain_checkpoint)), LoRA, ["q", "v"],
                           adapter_kwargs={"reduction_rate": 4})
    assert trainable(lora) == 2 * 2 * (2 * 8 + 8 * 2)  # rank 2 on q and v of 2 layers
    torch.testing.assert_close(lora.eval()(x)[0], reference)  # B = 0 at the start

    adapter = AdaptedBackbone(Backbone(str(plain_checkpoint)), Adapter, ["ffn"],
                              adapter_kwargs={"adapter_block": "bottleneck", "reduction_rate": 4})
    assert trainable(adapter) > 0 and adapter.eval()(x)[0].shape == (2, 5, 8)

    prompts = AdaptedBackbone(Backbone(str(plain_checkpoint)), prompt_tuning,
                              ["embeddings", "later_layers"], adapter_kwargs={"prompt_len": 3})
    assert prompts.eval()(x)[0].shape == (2, 8, 8)  # prepended: PROMPT_POSITION (0, 0)

    prefix = AdaptedBackbone(Backbone(str(plain_checkpoint)), PrefixTuning, ["attention"],
                             adapter_kwargs={"prompt_len": 4})
    assert trainable(prefix) == 2 * 4 * 8
    assert prefix.eval()(x)[0].shape == (2, 5, 8)
    for module in prefix.modules():  # no prefix tokens: the host's own attention
        if isinstance(module, PrefixTuning):
            module.prefix_keys = torch.nn.Parameter(torch.empty(0, 8))
            module.prefix_values = torch.nn.Parameter(torch.empty(0, 8))
    torch.testing.assert_close(prefix(x)[0], reference)


def test_prefix_tuning_runs_the_hook_a_lobe_file_registers(plain_checkpoint):
    """An attention the default cannot run is reached through ``attend_with_prefix.register``."""
    lobe = PlainLobe(str(plain_checkpoint), fused=True).eval()
    x = torch.randn(2, 5, 4)
    reference = lobe(x)[0]
    model = AdaptedBackbone(lobe, PrefixTuning, ["attention"], adapter_kwargs={"prompt_len": 4})
    wrapper = next(m for m in model.modules() if isinstance(m, PrefixTuning))
    assert wrapper.prefix_keys.shape == (2, 8)  # prefix_key_width of the registered class
    assert not torch.allclose(model.eval()(x)[0], reference)
    with pytest.raises(TypeError, match="attend_with_prefix"):  # unknown layout: a clear error
        PrefixTuning(torch.nn.Linear(8, 8), 8, prompt_len=2)


@pytest.mark.parametrize("lobe_fixture,kind", [("tiny_ast", "spectrogram"), ("tiny_wav2vec2", "waveform")])
def test_transformers_lobes_implement_the_checkpoint_format_once(lobe_fixture, kind, request, tmp_path):
    source = str(request.getfixturevalue(lobe_fixture))
    lobe = Backbone(source, max_frames=64)
    assert lobe.input_kind == kind and type(lobe).checkpoint_state.__func__ is Backbone.checkpoint_state.__func__
    lobe.export_pretrained(tmp_path / "out")
    lobe.copy_preprocessor_config(source, tmp_path / "out")
    assert lobe_class(tmp_path / "out") is type(lobe)
    state, missing = type(lobe).checkpoint_state(tmp_path / "out")  # what the fingerprint hashes
    expected = lobe.pretrained_model().state_dict()
    assert missing == set() and sorted(state) == sorted(expected)
    assert all(torch.equal(state[name], expected[name]) for name in state)
    extractor = Path(source, "preprocessor_config.json")
    assert (tmp_path / "out" / "preprocessor_config.json").exists() == extractor.exists()


def test_a_misspelt_backbone_option_names_the_close_match(tiny_ast):
    from petl_modules.backbones import Backbone
    from petl_modules.options import UnknownOptionError

    with pytest.raises(UnknownOptionError, match="unknown option 'max_frame' of the ast backbone.*"
                                                 "did you mean max_frames"):
        Backbone(str(tiny_ast), max_frame=64)
    Backbone(str(tiny_ast), max_frames=64, clip_seconds=1.0)  # another family's option: ignored


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_a_lobe_fingerprints_its_checkpoint_while_loading_it_as_a_second_load_would(backbone, tiny_backbones):
    """The base is loaded once per run or classify: the lobe hashes the tensors it loaded, before
    it changes any (AST's position embeddings fitted to 64 frames), and gets what loading the
    checkpoint again would give."""
    source = tiny_backbones[backbone]
    lobe = Backbone(source, max_frames=64, clip_seconds=0.5)
    assert lobe.fingerprint() == checkpoint_fingerprint(source)
    assert lobe.model_options() == {name: getattr(lobe, name) for name in type(lobe).MODEL_OPTIONS}
    assert set(type(lobe).MODEL_OPTIONS) <= set(type(lobe).options())
    excluded = sorted(type(lobe).checkpoint_state(source)[0])[:1]  # left out when first taken
    assert lobe.fingerprint(exclude=excluded) == checkpoint_fingerprint(source, exclude=excluded)
    assert lobe.fingerprint(exclude=excluded) != lobe.fingerprint()
