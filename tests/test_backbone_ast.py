"""The AST lobe: loading through backbone_source, equivalence with transformers, position
embeddings, the insertion-point map (pinned against the installed transformers), what trains."""

import pytest
import torch
import transformers

from petl_modules.backbones import Backbone
from petl_modules.backbones.ast import ASTBackbone
from petl_modules.methods.adapted import AdaptedBackbone, PETLModule
from petl_modules.methods.classifier import Classifier


@pytest.fixture(scope="module")
def ast_base():
    """The AST-base shape (transformers.ASTConfig() defaults), random weights, no download."""
    torch.manual_seed(0)
    return transformers.ASTModel(transformers.ASTConfig())


def lobe_on(model, tmp_path, **options):
    model.save_pretrained(tmp_path)
    return Backbone(str(tmp_path), **options)


def test_backbone_dispatches_on_model_type_from_a_local_folder(tiny_ast):
    lobe = Backbone(str(tiny_ast), max_frames=64)
    assert isinstance(lobe, ASTBackbone) and lobe.family == "ast"


def test_lobe_output_equals_plain_transformers_ast(tiny_ast):
    plain = transformers.ASTModel.from_pretrained(tiny_ast).eval()
    lobe = Backbone(str(tiny_ast), max_frames=plain.config.max_length).eval()
    x = torch.randn(2, plain.config.max_length, 128)
    hidden, mask = lobe(x)
    assert mask is None
    torch.testing.assert_close(hidden, plain(x).last_hidden_state)


def test_sdpa_and_eager_attention_agree(tiny_ast):
    x = torch.randn(2, 64, 128)
    sdpa = Backbone(str(tiny_ast), max_frames=64).eval()(x)[0]
    eager = Backbone(str(tiny_ast), max_frames=64, attn_implementation="eager").eval()(x)[0]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_position_embeddings_cut_keeps_the_pretrained_values_around_the_centre(tiny_ast):
    plain = transformers.ASTModel.from_pretrained(tiny_ast)
    old = plain.embeddings.position_embeddings.data
    old_time = (plain.config.max_length - 16) // 10 + 1  # 12 patches along time for 128 frames
    lobe = Backbone(str(tiny_ast), max_frames=64)  # 5 patches along time
    new = lobe.model.embeddings.position_embeddings.data
    assert new.shape == (1, 2 + 12 * 5, 64)
    torch.testing.assert_close(new[:, :2], old[:, :2])
    old_grid = old[0, 2:].reshape(12, old_time, 64)
    start = old_time // 2 - 5 // 2
    torch.testing.assert_close(new[0, 2:].reshape(12, 5, 64), old_grid[:, start:start + 5])
    assert lobe(torch.randn(1, 64, 128))[0].shape == (1, 62, 64)


def test_position_embeddings_interpolate_for_longer_inputs(tiny_ast):
    lobe = Backbone(str(tiny_ast), max_frames=256)
    assert lobe.model.embeddings.position_embeddings.shape == (1, 2 + 12 * 25, 64)
    assert lobe(torch.randn(1, 256, 128))[0].shape == (1, 302, 64)


def test_position_embeddings_zeros_reproduces_the_reference(tiny_ast):
    lobe = Backbone(str(tiny_ast), max_frames=64, position_embeddings="zeros")
    assert torch.count_nonzero(lobe.model.embeddings.position_embeddings) == 0


def test_insertion_points_match_the_installed_transformers_ast(tiny_ast):
    lobe = Backbone(str(tiny_ast), max_frames=64)
    n = lobe.num_layers
    expected = {
        "embeddings": (1, "ASTEmbeddings"), "layer": (n, "ASTLayer"), "later_layers": (n - 1, "ASTLayer"),
        "attention": (n, "ASTAttention"), "ffn": (n, "ASTMLP"), "ffn_in": (n, "Linear"),
        "ffn_out": (n, "Linear"), "ln_attention": (n, "LayerNorm"),
        "ln_ffn": (n, "LayerNorm"), "q": (n, "Linear"), "k": (n, "Linear"), "v": (n, "Linear"),
        "o": (n, "Linear"), "final_norm": (1, "LayerNorm"),
    }
    assert set(expected) == set(lobe.INSERTION_POINTS)
    for point, (count, cls) in expected.items():
        found = lobe.modules_at(point)
        assert len(found) == count, point
        assert {type(m).__name__ for _, m in found} == {cls}, point


def test_zero_parallel_branch_at_ffn_keeps_the_plain_output(tiny_ast):
    """Wrapping `ffn` (transformers 5 `mlp`) with a branch whose output is zero changes nothing:
    the wrapped sublayer sees LN2(h) and its output is added to the residual by the layer."""

    class ZeroBranch(PETLModule):
        def __init__(self, module):
            super().__init__()
            self.pretrained_module = module
            self.up = torch.nn.Linear(64, 64)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, x):
            return self.pretrained_module(x) + self.up(x)

    x = torch.randn(2, 64, 128)
    plain = Backbone(str(tiny_ast), max_frames=64).eval()(x)[0]
    adapted = AdaptedBackbone(Backbone(str(tiny_ast), max_frames=64), ZeroBranch, ["ffn"]).eval()
    torch.testing.assert_close(adapted(x)[0], plain)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == 2 * (64 * 64 + 64)


def test_frozen_backbone_stays_in_eval_mode_when_the_brain_calls_train(tiny_ast):
    class Branch(PETLModule):
        def __init__(self, module):
            super().__init__()
            self.pretrained_module = module
            self.drop = torch.nn.Dropout(0.1)

        def forward(self, x):
            return self.pretrained_module(x) + self.drop(x)

    model = AdaptedBackbone(Backbone(str(tiny_ast), max_frames=64), Branch, ["ffn"], ["final_norm"])
    model.train()
    for name, module in model.named_modules():
        if isinstance(module, Branch) or name.endswith("mlp.drop"):
            assert module.training, name  # the inserted PETL module follows train mode
        elif name.endswith("model.layernorm"):
            assert module.training, name  # trained as a whole (final_norm)
        elif "model." in name:
            assert not module.training, name  # frozen pretrained modules, wrapped ones included


def test_full_fine_tuning_puts_the_whole_backbone_in_train_mode(tiny_ast):
    model = AdaptedBackbone(Backbone(str(tiny_ast), max_frames=64), trainable=["top_layers:all", "final_norm"])
    model.train()
    leaves = [m for m in model.modules()
              if isinstance(m, torch.nn.Dropout) or any(True for _ in m.parameters(recurse=False))]
    assert all(m.training for m in leaves)
    assert all(p.requires_grad for p in model.parameters())


def test_ast_base_total_parameters_equal_transformers(ast_base, tmp_path):
    lobe = lobe_on(ast_base, tmp_path, max_frames=1024)
    assert sum(p.numel() for p in lobe.parameters()) == sum(p.numel() for p in ast_base.parameters())


@pytest.mark.parametrize("trainable,expected", [
    (["final_norm"], 2 * 768),                      # linear: final LayerNorm (+ head)
    (["biases"], 12 * 8448 + 768),                  # BitFit: SPEC table, 102,144
    (["top_layers:all", "final_norm"], None),       # full FT: everything
])
def test_ast_base_trains_exactly_what_the_method_says(ast_base, tmp_path, trainable, expected):
    lobe = lobe_on(ast_base, tmp_path, max_frames=400)
    total = sum(p.numel() for p in lobe.parameters())
    model = AdaptedBackbone(lobe, trainable=trainable)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == (total if expected is None else expected)
    if trainable == ["biases"]:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert all(n.endswith(".bias") for n in names)
        assert not any("embeddings" in n for n in names)


def test_classifier_pools_mean_or_cls_and_ignores_masked_tokens():
    head = Classifier(4, 3, pooling="mean")
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(head.pool(hidden, mask), hidden[:, :3].mean(dim=1))
    assert torch.equal(Classifier(4, 3, pooling="cls").pool(hidden), hidden[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        Classifier(4, 3, pooling="max")


def test_unknown_model_type_is_refused_with_the_supported_list(tmp_path):
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="Supported model types: .*audio-spectrogram-transformer"):
        Backbone(str(tmp_path))


def test_unreadable_backbone_source_says_how_to_run_offline(tmp_path):
    with pytest.raises(OSError, match="save_pretrained"):
        Backbone(str(tmp_path / "nowhere"))


def test_unknown_insertion_point_or_trainable_spec_is_a_clear_error(tiny_ast):
    lobe = Backbone(str(tiny_ast), max_frames=64)
    with pytest.raises(ValueError, match="Unknown insertion point 'mlp'"):
        lobe.insertion_patterns(["mlp"])
    with pytest.raises(ValueError, match="Unknown trainable spec 'head'"):
        lobe.trainable_parameter_names(["head"])


@pytest.mark.parametrize("checkpointing,calls", [(False, 1), (True, 2)])
def test_gradient_checkpointing_recomputes_frozen_layers_in_backward(tiny_ast, checkpointing, calls):
    """transformers only checkpoints layers in train mode; a frozen layer stays in eval mode, so
    the lobe must flag its layers itself for PETL methods to save memory."""

    class Branch(PETLModule):
        def __init__(self, module):
            super().__init__()
            self.pretrained_module = module
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.pretrained_module(x) * self.scale

    lobe = Backbone(str(tiny_ast), max_frames=64, gradient_checkpointing=checkpointing)
    model = AdaptedBackbone(lobe, Branch, ["ffn"]).train()
    seen = []
    model.adapted_model.model.layers[0].attention.register_forward_hook(lambda *_: seen.append(1))
    model(torch.randn(2, 64, 128))[0].sum().backward()
    assert len(seen) == calls
