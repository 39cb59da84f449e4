"""Steering and patching hooks: the steered forward equals a hand-built residual edit; prompt mode leaves
generated tokens unsteered; bad layers, modes and shapes fail with one-line errors."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from diffgame.errors import ConfigError
from diffgame.models.loading import logits_from_residual
from diffgame.models.residuals import capture_residuals
from diffgame.models.steering import patch, steer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_steer_last_layer_equals_lens_of_shifted_residual(model):
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    v = torch.randn(32)
    h = capture_residuals(model, ids, None, [2])[2]  # [1, T, D], last layer output
    with torch.no_grad(), steer(model, v, layer=2, scale=0.5):
        steered = model(ids).logits
        expected = logits_from_residual(model, h + 0.5 * v)
    torch.testing.assert_close(steered, expected, rtol=1e-4, atol=1e-4)
    # the hook is gone after the block
    torch.testing.assert_close(model(ids).logits, logits_from_residual(model, h), rtol=1e-4, atol=1e-4)


def test_steer_middle_layer_shifts_that_layer_only(model):
    ids = torch.tensor([[2, 4, 6, 8]])
    v = torch.randn(32)
    before = capture_residuals(model, ids, None, [0, 1])
    with steer(model, v, layer=0):
        after = capture_residuals(model, ids, None, [0, 1])
    torch.testing.assert_close(after[0], before[0] + v)
    assert not torch.allclose(after[1], before[1] + v)  # the shift propagates non-linearly


def test_prompt_mode_steers_only_the_prompt_pass(model):
    prompt, nxt = torch.tensor([[1, 5, 9]]), torch.tensor([[4]])
    v = 3 * torch.randn(32)
    with torch.no_grad():
        with steer(model, v, layer=1, mode="all"):
            cache = model(prompt, use_cache=True).past_key_values
        reference = model(nxt, past_key_values=cache, use_cache=True).logits  # unsteered step on a steered cache
        with steer(model, v, layer=1, mode="prompt"):
            out = model(prompt, use_cache=True)
            got = model(nxt, past_key_values=out.past_key_values, use_cache=True).logits
        with steer(model, v, layer=1, mode="all"):
            out = model(prompt, use_cache=True)
            all_mode = model(nxt, past_key_values=out.past_key_values, use_cache=True).logits
    torch.testing.assert_close(got, reference)
    assert not torch.allclose(all_mode, reference)


def test_patch_replaces_last_position(model):
    ids = torch.tensor([[3, 3, 7, 2]])
    v = torch.randn(32)
    before = capture_residuals(model, ids, None, [1])[1]
    with patch(model, v, layer=1):
        after = capture_residuals(model, ids, None, [1])[1]
    torch.testing.assert_close(after[0, -1], v)
    torch.testing.assert_close(after[0, :-1], before[0, :-1])


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": 3}, "layer 3 is out of range for a model with 3 layers"),
    ({"layer": 0, "mode": "tokens"}, "invalid steering mode 'tokens'; valid: all, prompt"),
    ({"layer": 0, "vector": torch.zeros(2, 32)}, r"must be 1-D \[d_model\]"),
])
def test_bad_steering_arguments(model, kwargs, match):
    vector = kwargs.pop("vector", torch.zeros(32))
    with pytest.raises(ConfigError, match=match):
        with steer(model, vector, **kwargs):
            pass


def test_wrong_width_vector_names_the_layer(model):
    with pytest.raises(ConfigError, match="steering vector has 16 dims but layer 0 outputs 32"):
        with steer(model, torch.zeros(16), layer=0):
            model(torch.tensor([[1, 2]]))
