"""normdiff: per-token measures by hand, a planted shift of known norm recovered from a real store, zero on identical
activations, and the runner's numbers equal a direct two-model computation on the micro zoo."""

import math

import pytest
import torch

from diffgame.data.sequences import ASSISTANT, TEMPLATE, TEXT, USER
from diffgame.methods.base import MethodContext
from diffgame.methods.normdiff import NormDiffConfig, NormDiffMethod, token_measures
from diffgame.models.loading import ModelHandle

from _paired_store import word_tokenizer, write_store

D = 8
V_PLANT, Z_POS, U_TEMPLATE = 3.0 * torch.eye(D)[0], torch.eye(D)[1], 4.0 * torch.eye(D)[2]


def test_token_measures_by_hand():
    base = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    org = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    m = token_measures(base, org)
    assert m["norm"].tolist() == pytest.approx([0.0, math.sqrt(5)])
    assert m["base_norm"].tolist() == pytest.approx([5.0, 1.0])
    assert m["organism_norm"].tolist() == pytest.approx([5.0, 2.0])
    assert m["cosine"].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)  # orthogonal -> distance 1
    assert m["relative"].tolist() == pytest.approx([0.0, math.sqrt(5)])


def _sequences():
    """Text docs and chats; chats: user tokens at positions 0-5, template 7 at 6, assistant replies, template 8 last."""
    gen = torch.Generator().manual_seed(0)
    text = [(torch.randint(10, 50, (n,), generator=gen).tolist(), [TEXT] * n) for n in (9, 4, 12)]
    chat = []
    for n in (3, 7):
        ids = torch.randint(10, 50, (6,), generator=gen).tolist() + [7] + [11] * n + [8]
        chat.append((ids, [USER] * 6 + [TEMPLATE] + [ASSISTANT] * n + [TEMPLATE]))
    return {"text": text, "chat": chat}


def _planted_delta(ids, roles):
    """The shift planted per token: v everywhere, + p*z at positions p < 5, + u on template token 7."""
    rows = []
    for p, (tok, role) in enumerate(zip(ids, roles)):
        d = V_PLANT.clone()
        if p < 5:
            d += p * Z_POS
        if tok == 7:
            d += U_TEMPLATE
        rows.append(d)
    return torch.stack(rows)


def _store(tmp_path, scale_by_layer, plant=True):
    gen = torch.Generator().manual_seed(1)
    spec = {}
    for name, seqs in _sequences().items():
        n = sum(len(s[0]) for s in seqs)
        delta = torch.cat([_planted_delta(*s) for s in seqs])
        base = {layer: torch.randn(n, D, generator=gen) for layer in scale_by_layer}
        org = {layer: base[layer] + (scale * delta if plant else 0) for layer, scale in scale_by_layer.items()}
        spec[name] = {"sequences": seqs, "base": base, "organism": org}
    return write_store(tmp_path / "store", spec, list(scale_by_layer)), spec


def _run(store, **cfg):
    handle = ModelHandle(model=None, tokenizer=word_tokenizer(64), role="base", name="words")
    ctx = MethodContext(config=NormDiffConfig(**cfg), store=store, base=handle, tokenizer=handle.tokenizer)
    return NormDiffMethod(ctx.config).run(ctx)


def test_planted_shift_is_recovered(tmp_path):
    store, spec = _store(tmp_path, {2: 0.5, 5: 1.0})
    result = _run(store, batch_tokens=7)  # batches straddle sequences

    # per-token norms: |v + p z| = sqrt(9 + p^2) at early positions, |v + u| = 5 on token 7, |v| = 3 elsewhere
    assert result.metrics["normdiff/text/max"] == pytest.approx(5.0, abs=1e-5)
    assert result.metrics["normdiff/chat/role/assistant/mean"] == pytest.approx(3.0, abs=1e-5)
    assert result.metrics["normdiff/all/pos/0/mean"] == pytest.approx(3.0, abs=1e-5)
    assert result.metrics["normdiff/all/pos/4-15/mean"] > 3.0
    all_deltas = torch.cat([_planted_delta(*s) for seqs in _sequences().values() for s in seqs])
    assert result.metrics["normdiff/layer5/norm_mean"] == pytest.approx(float(all_deltas.norm(dim=-1).mean()), rel=1e-5)
    assert result.metrics["normdiff/layer2/norm_mean"] == pytest.approx(0.5 * result.metrics["normdiff/layer5/norm_mean"],
                                                                       rel=1e-5)
    base = torch.cat([spec[d]["base"][5] for d in ("text", "chat")])
    relative = (all_deltas.norm(dim=-1) / base.norm(dim=-1)).mean()
    assert result.metrics["normdiff/layer5/relative_mean"] == pytest.approx(float(relative), rel=1e-4)

    vec = result.vectors
    torch.testing.assert_close(vec["normdiff/layer5/mean"], all_deltas.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec["normdiff/layer2/mean"], 0.5 * all_deltas.mean(0), atol=1e-5, rtol=0)
    for p in range(5):
        torch.testing.assert_close(vec[f"normdiff/layer5/pos{p}"], V_PLANT + p * Z_POS, atol=1e-5, rtol=0)
    assert "normdiff/layer5/pos5" not in vec
    torch.testing.assert_close(vec["normdiff/layer5/template/7"], V_PLANT + U_TEMPLATE, atol=1e-5, rtol=0)
    torch.testing.assert_close(vec["normdiff/layer5/template/8"], V_PLANT, atol=1e-5, rtol=0)
    assert {k for k in vec if "/template/" in k} == {f"normdiff/layer{layer}/template/{t}" for layer in (2, 5)
                                                     for t in (7, 8)}

    # the top example by max norm contains a max-norm token (token 7 or position 4), its scores match the plant
    top = result.examples["layer5_max_norm"][0]
    assert top.score == pytest.approx(5.0, abs=1e-5)
    expect = _planted_delta(top.token_ids, [{"text": TEXT, "user": USER, "assistant": ASSISTANT,
                                             "template": TEMPLATE}[r] for r in top.roles]).norm(dim=-1)
    assert top.token_scores == pytest.approx(expect.tolist(), abs=1e-5)
    assert top.tokens[:2] == [f"w{top.token_ids[0]}", f"w{top.token_ids[1]}"]
    assert set(result.figures) >= {"distribution", "positions", "roles", "layers"}


def test_identical_activations_give_zero(tmp_path):
    store, _ = _store(tmp_path, {3: 1.0}, plant=False)
    result = _run(store)
    for key in ("normdiff/all/mean", "normdiff/all/max", "normdiff/layer3/cosine_mean", "normdiff/layer3/relative_mean"):
        assert result.metrics[key] == pytest.approx(0.0, abs=1e-6), key
    assert all(float(v.abs().max()) == 0.0 for v in result.vectors.values())
