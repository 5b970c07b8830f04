"""The weighted layer sum (petl_modules/methods/layer_sum.py): the SUPERB sum of the states that
transformers' own ``output_hidden_states`` gives, exact caching of every layer's pooled state, what
trains."""

import pytest
import torch
import transformers

from petl_modules.backbones import Backbone
from petl_modules.methods.classifier import Classifier
from petl_modules.methods.layer_sum import LayerSumConfig, WeightedLayerSum
from petl_modules.training.cache import check_cacheable, head_input, normalised_pooled

from methods_helpers import count


def test_the_sum_is_over_the_embedding_every_layer_and_the_output_as_transformers_gives_them(tiny_ast):
    model = LayerSumConfig().build(Backbone(tiny_ast, max_frames=64)).eval()
    plain = transformers.ASTModel.from_pretrained(tiny_ast).eval()
    plain.embeddings.position_embeddings = model.adapted_model.model.embeddings.position_embeddings
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        reference = plain(input_values=x, output_hidden_states=True)
        # h_0 ... h_{L-1}: the embeddings and the first L - 1 layers; h_L: the output (final LN)
        expected = list(reference.hidden_states[:-1]) + [reference.last_hidden_state]
        states, _ = model.states(x)
        torch.testing.assert_close(list(states), expected, rtol=0, atol=1e-6)
        weights = torch.tensor([0.3, -1.0, 2.0])
        model.layer_weights.copy_(weights)
        mixed = sum(w * h for w, h in zip(torch.softmax(weights, 0), expected))
        torch.testing.assert_close(model(x)[0], mixed, rtol=1e-5, atol=1e-6)


def test_only_the_layer_weights_train_and_they_start_equal(ast_base_folder):
    model = LayerSumConfig().build(Backbone(ast_base_folder))
    assert isinstance(model, WeightedLayerSum)
    assert count(model) == 13 and torch.equal(model.layer_weights, torch.zeros(13))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["layer_weights"]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_cached_layer_states_give_the_uncached_logits_and_gradients(pooling, tiny_ast):
    torch.manual_seed(0)
    model = LayerSumConfig().build(Backbone(tiny_ast, max_frames=64))
    with torch.no_grad():
        model.layer_weights.normal_()
    head = Classifier(64, 5, pooling=pooling)
    check_cacheable({"method": "layer_sum", "petl_model": model, "pooling": pooling, "augmentation": None})
    inputs = torch.randn(3, 64, 128)
    plain = head(*model(inputs))
    plain.square().sum().backward()
    grad = model.layer_weights.grad.clone()
    model.zero_grad()
    cached = normalised_pooled(model, head, inputs)
    assert cached.shape == (3, 3, 64)  # every clip: the pooled state of each of the 3 layers
    logits = head(head_input(model, cached))
    logits.square().sum().backward()
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.layer_weights.grad, grad, rtol=1e-4, atol=1e-6)
