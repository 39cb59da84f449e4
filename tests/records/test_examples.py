"""Max-activating examples: the bounded top-k equals a full sort, ties are deterministic, and JSON round-trips."""

import pytest
import torch

from diffgame.records import examples
from diffgame.records.evidence import Example
from diffgame.records.examples import TopKSequences, token_decoder

from _paired_store import word_tokenizer

ROLES = ("text", "user", "assistant", "template")


def _offer_all(top, n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for s in range(n):
        length = int(torch.randint(1, 12, (1,), generator=gen))
        scores = torch.rand(length, generator=gen) * 10
        ids = torch.randint(0, 50, (length,), generator=gen)
        roles = torch.randint(0, 4, (length,), generator=gen)
        dataset = "a" if s % 2 else "b"
        top.offer(dataset, 1000 + s, ids, roles, scores)
        seqs.append((dataset, 1000 + s, ids, roles, scores))
    return seqs


def test_topk_equals_full_sort():
    top = TopKSequences(k=7)
    seqs = _offer_all(top)
    found = top.examples(token_decoder(word_tokenizer(50)), ROLES)
    for reducer, fn in (("max", torch.max), ("mean", torch.mean)):
        expected = sorted(seqs, key=lambda s: float(fn(s[4])), reverse=True)[:7]
        got = found[reducer]
        assert [e.sequence_id for e in got] == [s[1] for s in expected]
        assert [e.score for e in got] == pytest.approx([float(fn(s[4])) for s in expected])
        best = expected[0]
        assert got[0].dataset == best[0]
        assert got[0].token_ids == best[2].tolist()
        assert got[0].tokens == [f"w{i}" for i in best[2].tolist()]
        assert got[0].roles == [ROLES[r] for r in best[3].tolist()]
        assert got[0].token_scores == pytest.approx(best[4].tolist())
    assert all(len(h) == 7 for h in top.heaps.values())  # bounded


def test_ties_keep_first_offered():
    top = TopKSequences(k=2, reducers=("max",))
    for s in range(5):
        top.offer("d", s, torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]))
    assert [e.sequence_id for e in top.examples(lambda ids: ["x"] * len(ids), ROLES)["max"]] == [0, 1]


def test_unknown_reducer():
    with pytest.raises(ValueError, match=r"unknown reducer\(s\) \['median'\]; known: max, mean"):
        TopKSequences(3, reducers=("median",))


def test_json_round_trip(tmp_path):
    found = [Example(sequence_id=3, dataset="organism", score=2.5, token_ids=[1, 2], tokens=["a", " b"],
                     token_scores=[0.5, 2.5], roles=["text", "text"]),
             Example(sequence_id=9, dataset="generic_chat", score=1.0, token_ids=[4], tokens=["\n"],
                     token_scores=[1.0], roles=["template"])]
    assert examples.from_json(examples.to_json(found)) == found
    assert examples.load(examples.save(found, tmp_path / "x" / "ex.json")) == found
