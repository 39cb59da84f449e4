"""Diff mining and the ADL causal effect on tiny models with planted changes: a logit bias on one token is ranked
first with occurrence 1.0 and its mean diff equal to the bias; the streamed counts equal a direct full-matrix
computation; NMF recovers two planted token groups; projecting out the one residual direction an organism adds
restores the base's loss while random directions do not."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from diffgame.methods import MethodContext
from diffgame.methods.adl_causal import causal_effect
from diffgame.methods.diffmining import DiffMiningConfig, DiffMiningMethod, DiffStats, topics
from diffgame.models.loading import ModelHandle
from diffgame.models.paired import logit_chunks

torch.set_num_threads(2)
V = 64


class _Tok:
    """A whitespace tokenizer over `w0..w{V-1}` (enough for the method: ids, pieces, pad)."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(w[1:]) % V for w in text.split()]}

    def convert_ids_to_tokens(self, ids):
        return [f"w{i}" for i in ids]

    def batch_decode(self, seqs, skip_special_tokens=False):
        return [" ".join(f"w{i}" for i in s) for s in seqs]


def _base(seed=0, mlp_bias=False):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, mlp_bias=mlp_bias)
    return LlamaForCausalLM(cfg).eval()


def _docs(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"text": " ".join(f"w{int(i)}" for i in torch.randint(1, V, (int(torch.randint(5, 20, (1,), generator=g)),),
                                                                    generator=g))} for _ in range(n)]


def _run(base, org, config, docs):
    tok = _Tok()
    ctx = MethodContext(config=config, tokenizer=tok, base=ModelHandle(base, tok, "base", "tiny"),
                        organism=ModelHandle(org, tok, "organism", "tiny"), texts={"documents": docs})
    return DiffMiningMethod(config).run(ctx)


def test_a_planted_logit_bias_ranks_first_with_its_size():
    base, bias, token = _base(), 1.5, 17
    org = copy.deepcopy(base)
    head = torch.nn.Linear(32, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(base.lm_head.weight)
        head.bias.zero_()
        head.bias[token] = bias
    org.lm_head = head
    result = _run(base, org, DiffMiningConfig(top_k=5, topics=0, n_examples=2), _docs())
    ranked = result.ranked_tokens["top_k_occurrence"]
    assert ranked.token_ids[0] == token and ranked.scores[0] == 1.0
    table = result.tables["tokens"].set_index("token_id")
    assert table.loc[token, "mean_diff"] == pytest.approx(bias, abs=1e-5)
    assert table.loc[token, "max_diff"] == pytest.approx(bias, abs=1e-5)
    assert table.loc[token, "positive"] == 1.0
    assert result.ranked_tokens["mean_diff"].token_ids[0] == token
    assert result.metrics["diffmining/positions"] == sum(len(d["text"].split()) for d in _docs())
    peak = result.examples["peaks"][0]
    assert peak.token_scores == pytest.approx([bias] * len(peak.token_ids), abs=1e-5)


def test_streamed_counts_equal_the_full_matrix():
    base = _base()
    org = copy.deepcopy(base)
    with torch.no_grad():
        for p in org.parameters():
            p.add_(0.05 * torch.randn_like(p))
    docs, k = _docs(8), 7
    seqs = [[int(w[1:]) for w in d["text"].split()] for d in docs]
    flat = torch.tensor([t for s in seqs for t in s])
    offsets = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
    stats = DiffStats(V, k, reservoir=10_000)
    for where, lo, lb in logit_chunks(base, org, flat, offsets, batch_tokens=40, chunk=5):  # many small chunks
        stats.add(lo.float() - lb.float(), where)
    with torch.no_grad():  # every sequence alone, every position's d kept: [N, V]
        d = torch.cat([org(torch.tensor([s])).logits[0] - base(torch.tensor([s])).logits[0] for s in seqs]).float()
    assert stats.n == len(flat) == d.shape[0]
    assert torch.equal(stats.topk_count, torch.bincount(d.topk(k, -1).indices.flatten(), minlength=V))
    assert torch.equal(stats.pos_count, (d > 0).sum(0))
    torch.testing.assert_close(stats.total, d.double().sum(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.max, d.max(0).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(stats.argmax, d.argmax(0))
    assert len(stats.sample) == len(flat)  # the reservoir holds every position while it has room


@settings(max_examples=150, deadline=None)
@given(v=st.integers(8, 400), k=st.integers(1, 40), n=st.integers(1, 90), chunk=st.integers(1, 40),
       levels=st.sampled_from([0, 2, 50]), seed=st.integers(0, 2 ** 16))
def test_selection_counts_equal_topk_on_any_matrix(v, k, n, chunk, levels, seed):
    """The CPU path selects each row's K-th largest d instead of sorting (`row_top_k`); its counts equal topk's over
    the whole matrix exactly, ties included (integer levels force them), and every reservoir row is a top-K set."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(-levels, levels + 1, (n, v), generator=g).float() if levels else torch.randn(n, v, generator=g)
    k = min(k, v)
    stats = DiffStats(v, k, reservoir=30, seed=seed)
    for i in range(0, n, chunk):
        stats.add(d[i:i + chunk], torch.arange(i, min(i + chunk, n)))
    top = d.topk(k, -1).indices
    assert torch.equal(stats.topk_count, torch.bincount(top.flatten(), minlength=v))
    assert torch.equal(stats.pos_count, (d > 0).sum(0))
    assert torch.equal(stats.max, d.max(0).values) and torch.equal(stats.argmax, d.argmax(0))
    assert len(stats.sample) == min(n, 30)
    kth = d.topk(k, -1).values[:, -1:]
    sets = {tuple(sorted(r)) for r in top.tolist()}
    for row in stats.sample.tolist():
        assert len(set(row)) == k
        if levels:  # ties: k columns all at or above some position's K-th value
            assert bool((d[:, row] >= kth).all(1).any())
        else:
            assert tuple(sorted(row)) in sets


def test_nmf_recovers_two_planted_topics():
    g = torch.Generator().manual_seed(0)
    group_a, group_b = [3, 5, 8, 13], [21, 34, 40, 47]
    rows = [torch.tensor(group_a if i % 2 == 0 else group_b)[torch.randperm(4, generator=g)[:3]] for i in range(200)]
    _, h = topics(torch.stack(rows), group_a + group_b, 2)
    found = sorted(sorted((group_a + group_b)[j] for j in h[k].argsort()[::-1][:4]) for k in range(2))
    assert found == [group_a, group_b]


def test_projecting_out_the_planted_direction_restores_the_base_loss():
    """The base never writes coordinate j of its residual stream; the organism adds c·e_j after layer 1. Projecting
    e_j out there gives back the base's loss exactly; random directions do not."""
    base, j, layer = _base(mlp_bias=True), 7, 1
    with torch.no_grad():
        base.model.embed_tokens.weight[:, j] = 0
        for block in base.model.layers:
            block.self_attn.o_proj.weight[j] = 0
            block.mlp.down_proj.weight[j] = 0
            block.mlp.down_proj.bias[j] = 0
    org = copy.deepcopy(base)
    with torch.no_grad():
        org.model.layers[layer].mlp.down_proj.bias[j] = 3.0
    seqs = [[int(w[1:]) for w in d["text"].split()] for d in _docs(10)]
    delta = torch.zeros(32)
    delta[j] = 3.0
    e = causal_effect(base, org, seqs, layer, delta, n_random=6, seed=0)
    assert abs(e.organism_without_delta - e.base) < 1e-4
    assert abs(e.organism - e.base) > 1e-2  # the planted direction matters
    assert min(abs(r - e.base) for r in e.organism_without_random) > 1e-2
    assert e.base_with_delta == pytest.approx(e.organism, abs=1e-4)  # adding δ to the base makes the organism
