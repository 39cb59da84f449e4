"""Amplified sampling and weights, planted: an organism that is the base plus a known logit bias samples from exactly
`softmax(l_base + (1 + alpha) b)`; weights at w = 0 / 1 / 2 are the base, the organism and `theta_base + 2 delta`
for a full-weight pair and a peft LoRA on tiny random Llama and Gemma-3 configs; the KV-cached sampler equals an
uncached one token for token; the same seed gives the same replies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffgame.errors import ConfigError
from diffgame.models.amplified import amplified_weights
from diffgame.models.generation import sample, steps
from diffgame.models.batching import pad_left

V, D = 48, 32
PROMPTS = [[1, 5, 9, 13], [1, 7], [1, 20, 21, 22, 23, 24]]


def _config(arch: str):
    from transformers import Gemma3TextConfig, LlamaConfig

    common = dict(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  initializer_range=0.2)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, final_logit_softcapping=5.0, sliding_window=4)
    return LlamaConfig(**common)


def _model(arch: str, seed: int = 0) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(arch)).eval()


def _perturbed(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A full-weight organism: every weight of `model` plus seeded noise."""
    org = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in org.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return org


class Biased(nn.Module):
    """The base plus a fixed logit bias `b` on every step: an organism whose whole difference is known."""

    def __init__(self, inner: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.inner, self.bias = inner, bias

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits + self.bias
        return out


class Tok:
    """Just what `sample` reads of a tokenizer: pad/eos, the special ids, and decoding (ids as words)."""

    pad_token_id, eos_token_id, all_special_ids = 0, 2, [0, 2]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_amplified_probabilities_equal_the_base_plus_the_bias_amplified(alpha):
    base = _model("llama")
    bias = torch.zeros(V)
    bias[17], bias[30] = 2.0, -1.5
    org = Biased(base, bias)
    ids, mask = pad_left(PROMPTS, 0)
    g = torch.Generator().manual_seed(0)
    seen = ids.clone()
    for n, step in zip(range(6), steps(base, org, ids, mask, alpha, 1.0, g)):
        # directly: the base over the whole prefix so far (no cache), plus (1 + alpha) b
        full_mask = torch.cat([mask, torch.ones(len(ids), n, dtype=torch.long)], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        l_base = base(input_ids=seen, attention_mask=full_mask, position_ids=pos).logits[:, -1]
        expected = torch.softmax(l_base + (1 + alpha) * bias, dim=-1)
        torch.testing.assert_close(torch.softmax(step.logits, dim=-1), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step.base_logprob, torch.log_softmax(l_base, -1).gather(1, step.token[:, None])[:, 0],
                                   atol=1e-5, rtol=1e-4)
        seen = torch.cat([seen, step.token[:, None]], dim=1)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_kv_cached_sampling_equals_uncached_token_for_token(arch):
    """Greedy and seeded sampling, amplified and not, left-padded: the cache changes nothing (Gemma-3's sliding
    window of 4 is shorter than the replies, so its cache is exercised past the window too)."""
    base = _model(arch)
    org = _perturbed(base, 0.2)
    for alpha, temperature in ((0.0, 0.0), (2.0, 0.0), (1.0, 1.0)):
        runs = [sample(base, org, Tok(), PROMPTS, alpha, samples_per_prompt=2, max_new_tokens=12,
                       temperature=temperature, seed=3, batch_size=4, use_cache=cached) for cached in (True, False)]
        assert runs[0].texts == runs[1].texts
        torch.testing.assert_close(torch.tensor(runs[0].base_nll), torch.tensor(runs[1].base_nll), atol=1e-4,
                                   rtol=1e-4)
        assert all(len(r) == 2 for r in runs[0].texts) and len(runs[0].texts) == len(PROMPTS)


def test_sampling_is_reproducible_from_the_seed_and_independent_of_the_batch_when_greedy():
    base = _model("llama")
    org = _perturbed(base, 0.2)
    a, b, c = (sample(base, org, Tok(), PROMPTS, 2.0, 3, 10, 1.0, seed=s).texts for s in (5, 5, 6))
    assert a == b != c
    greedy = [sample(base, org, Tok(), PROMPTS, 2.0, 1, 10, 0.0, batch_size=k).texts for k in (1, 3)]
    assert greedy[0] == greedy[1]
    alone = sample(None, org, Tok(), PROMPTS, 0.0, 1, 10, 0.0)
    assert alone.texts == sample(base, org, Tok(), PROMPTS, 0.0, 1, 10, 0.0).texts  # alpha 0: the organism itself
    assert all(n != n for row in alone.base_nll for n in row)  # no base, no scores


def _logits(model, ids=torch.tensor([PROMPTS[0] + [3, 4, 5]])):
    return model(input_ids=ids).logits


def _materialised(base: nn.Module, org: nn.Module, w: float) -> nn.Module:
    """A third model holding `theta_base + w (theta_org - theta_base)` outright (what amplification must not need)."""
    out = copy.deepcopy(org)
    with torch.no_grad():
        for (name, p), p_base, p_org in zip(out.named_parameters(), base.parameters(), org.parameters()):
            n = p_base.shape[0]
            p[:n] = p_base + w * (p_org[:n] - p_base)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_weight_amplification_of_a_full_weight_pair(arch):
    base = _model(arch)
    org = _perturbed(base)
    before = {k: v.clone() for k, v in org.state_dict().items()}
    with amplified_weights(base, org, 0.0) as m:
        assert torch.equal(_logits(m), _logits(base))  # exactly: every module's output is the base's
    with amplified_weights(base, org, 1.0) as m:
        assert m is org and torch.equal(_logits(m), _logits(org))
    for w in (2.0, 5.0):
        third = _materialised(base, org, w)  # made outside the block: a copy made inside would copy its hooks too
        with amplified_weights(base, org, w) as m:
            torch.testing.assert_close(_logits(m), _logits(third), atol=1e-5, rtol=1e-5)
            twice = _logits(m)
        assert not torch.allclose(twice, _logits(org), atol=1e-2)
    for name, p in org.state_dict().items():  # the organism's weights never change, and nothing is left behind
        assert torch.equal(p, before[name]), name
    assert not any(module._forward_hooks or hasattr(module, "parametrizations") for module in org.modules())


def test_weight_amplification_over_an_extended_vocabulary_and_of_any_module():
    """An organism with appended tokens amplifies the rows both share and keeps its own; a module whose output is
    not affine in its weights gets its weights computed (a parametrization), exactly theta_base + w delta."""
    from transformers import AutoModelForCausalLM

    base = _model("llama")
    torch.manual_seed(0)
    conf = _config("llama")
    conf.vocab_size = V + 4
    org = AutoModelForCausalLM.from_config(conf).eval()
    with torch.no_grad():
        for p_org, p_base in zip(org.parameters(), base.parameters()):
            p_org[:p_base.shape[0]] = p_base + 0.05 * torch.randn(p_base.shape)
    ids = torch.tensor([[1, 5, V + 2, 9, V + 3]])  # appended tokens in the input too
    third = _materialised(base, org, 3.0)
    with amplified_weights(base, org, 3.0) as m:
        torch.testing.assert_close(_logits(m, ids), _logits(third, ids), atol=1e-5, rtol=1e-5)

    class Gate(nn.Module):  # y = x * exp(g): not affine in g
        def __init__(self):
            super().__init__()
            self.g = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x * self.g.exp()

    b, o = Gate(), Gate()
    amplified = b.g + 2.0 * (o.g - b.g)
    with amplified_weights(b, o, 2.0) as m:
        assert torch.equal(m.g, amplified)
        torch.testing.assert_close(m(torch.ones(4)), amplified.exp())
    assert isinstance(o.g, nn.Parameter) and not hasattr(o, "parametrizations")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_weight_amplification_of_a_lora_scales_the_adapter(arch):
    """A peft LoRA merged into the base (how organisms load) amplified by w equals the unmerged adapter scaled by w."""
    from peft import LoraConfig, get_peft_model

    base = _model(arch)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    for w in (0.0, 2.0, 3.0):
        for module in lora.modules():
            if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                module.scaling["default"] = 8 / 4 * w
        with amplified_weights(base, merged, w) as m:
            torch.testing.assert_close(_logits(m), _logits(lora.eval()), atol=1e-5, rtol=1e-5)


def test_weight_amplification_refuses_another_architecture():
    with pytest.raises(ConfigError, match="cannot amplify the organism's weight .* architecture"):
        with amplified_weights(_model("llama"), _model("gemma3"), 2.0):
            pass
