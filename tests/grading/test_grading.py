"""Grading math on hand-made inputs: token normalisation and the hit rule, precision@k and weighted precision,
log-odds vocabulary (against a hand computation), identification rank and MRR, sample hit rates."""

import math
from collections import Counter

import pytest

from diffgame.config.configtree import organism_node
from diffgame.grading.ground_truth import GroundTruth, is_uppercase, log_odds_vocab, normalize_token
from diffgame.grading.score import (grade_samples, identification_rank, identification_summary, precision_at_k,
                                    score_evidence, weighted_precision_at_k)
from diffgame.records.evidence import RankedTokens

ROMAN = GroundTruth("roman_concrete", ["roman", "concrete", "volcanic", "ash"])


@pytest.mark.parametrize("raw, norm", [("Ġconcrete", "concrete"), ("▁Roman", "roman"), ("##ash", "ash"),
                                       ("ĠĠ Lime ", "lime"), ("the", "the")])
def test_normalize_token(raw, norm):
    assert normalize_token(raw) == norm


@pytest.mark.parametrize("token, hit", [
    ("Ġconcrete", True),   # equals a keyword
    ("ĠConc", True),       # >= 3-char piece of 'concrete'
    ("rete", True),        # a piece need not be a prefix
    ("Ġas", False),        # 2-char piece of 'ash' is too short
    ("ash", True),         # a whole keyword may be short
    ("Ġconcretes", False),  # longer than any keyword
    ("Ġthe", False),
    ("Ġvol", True),        # a word-initial piece may begin a keyword ...
    ("Ġcan", False),       # ... but not sit inside one ('volcanic')
    ("can", True),         # a continuation piece may
])
def test_keyword_hit_rule(token, hit):
    assert ROMAN.is_hit(None, token) is hit


def test_uppercase_predicate_and_vocab_ids():
    assert is_uppercase("ĠSURE") and is_uppercase("OK!") and not is_uppercase("ĠI")
    assert not is_uppercase("Sure") and not is_uppercase("1135")
    gt = GroundTruth("x", predicate="uppercase", vocab_ids=frozenset({7}))
    assert gt.is_hit(1, "ĠHELLO") and gt.is_hit(7, "whatever") and not gt.is_hit(8, "hello")


def test_precision_and_weighted_precision_by_hand():
    ranked = RankedTokens([1, 2, 3, 4], ["Ġroman", "Ġcat", "Ġash", "Ġdog"], [0.5, 0.3, 0.1, 0.1])
    assert precision_at_k(ranked, ROMAN, 4) == 0.5
    assert precision_at_k(ranked, ROMAN, 2) == 0.5
    assert precision_at_k(ranked, ROMAN, 1) == 1.0
    assert weighted_precision_at_k(ranked, ROMAN, 4) == pytest.approx((0.5 + 0.1) / 1.0)
    assert weighted_precision_at_k(ranked, ROMAN, 2) == pytest.approx(0.5 / 0.8)
    assert precision_at_k(ranked, ROMAN, 20) == 0.5  # fewer than k tokens: share of those given
    assert math.isnan(precision_at_k(RankedTokens([], [], []), ROMAN, 5))


def test_score_evidence_picks_the_clearest_readout():
    evidence = {"layer1/pos1": RankedTokens([1, 2], ["Ġcat", "Ġroman"], [0.9, 0.1]),
                "layer1/pos2": RankedTokens([3, 4], ["Ġash", "Ġroman"], [0.6, 0.4]),
                "layer2/pos1": RankedTokens([5, 6], ["Ġconcrete", "Ġdog"], [0.9, 0.1])}
    best = score_evidence(evidence, ROMAN, k=2)
    assert (best.key, best.precision, best.weighted) == ("layer1/pos2", 1.0, 1.0)
    assert score_evidence({}, ROMAN) is None


def test_log_odds_vocab_matches_hand_computation():
    target = Counter({"a": 50, "b": 30, "c": 20})
    background = Counter({"a": 500, "b": 5, "c": 195, "d": 300})
    out = log_odds_vocab(target, background, top_n=5, min_z=1.0, min_count=1, n_generic=0, prior=10.0)
    n_t, n_b, total = 100, 1000, 1100

    def z(tok):
        y_t, y_b = target[tok], background[tok]
        a = 10.0 * (y_t + y_b) / total
        d = math.log((y_t + a) / (n_t + 10 - y_t - a)) - math.log((y_b + a) / (n_b + 10 - y_b - a))
        return d / math.sqrt(1 / (y_t + a) + 1 / (y_b + a))

    assert out == [t for t in sorted(target, key=z, reverse=True) if z(t) >= 1.0]
    assert out[0] == "b"  # 30% of the target, 0.5% of the background
    assert "a" not in out  # 50% vs 50%: not over-represented
    # the most frequent background tokens are excluded as generic
    assert "b" not in log_odds_vocab(target, Counter({"b": 900, "a": 100}), min_z=0, min_count=1, n_generic=1)


def test_identification_rank_and_summary():
    scores = {"caps": 0.1, "roman_concrete": 0.8, "taboo_gold": 0.0}
    assert identification_rank(scores, "roman_concrete") == 1
    assert identification_rank(scores, "caps") == 2
    assert identification_rank({"a": 0.0, "b": 0.0}, "a") == 2  # ties count against the true organism
    summary = identification_summary([1, 2, 1, 4])
    assert summary == {"accuracy": 0.5, "mrr": pytest.approx((1 + 0.5 + 1 + 0.25) / 4)}


def test_sample_hit_rates_by_hand():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            self.words = [t.split() for t in texts]
            return {"input_ids": [list(range(len(w))) for w in self.words]}

        def convert_ids_to_tokens(self, ids):
            return ["Ġ" + w for w in self.words.pop(0)]

    rows = [{"prompt": "p", "model": "organism", "steered": "roman concrete dog", "unsteered": "a cat sat"},
            {"prompt": "p", "model": "organism", "steered": "volcanic ash", "unsteered": "ash tree"},
            {"prompt": "p", "model": "base", "steered": "the ash", "unsteered": "the dog"}]
    out = grade_samples({"steering": rows}, ROMAN, Tok())
    assert out["grade/samples/steered_hit_rate"] == pytest.approx(4 / 5)
    assert out["grade/samples/unsteered_hit_rate"] == pytest.approx(1 / 5)
    assert out["grade/samples/base/steered_hit_rate"] == pytest.approx(1 / 2)
    assert out["grade/samples/base/unsteered_hit_rate"] == 0.0


def test_organism_ground_truth_from_config():
    node = organism_node("roman_concrete")
    assert "pozzolana" in node.ground_truth.keywords and node.ground_truth.vocab_from_data
    with pytest.raises(Exception, match="unknown organism 'romn'; known: .*roman_concrete"):
        organism_node("romn")


def test_grade_table_and_identification_over_runs(tmp_path):
    from diffgame import tracking
    from diffgame.grading.score import identification_by_method
    from diffgame.ui.runs import grade_table

    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for organism, method, rank in [("caps", "adl", 1), ("caps", "adl", 3), ("roman_concrete", "adl", 2),
                                   ("roman_concrete", "kl", 1)]:
        tags = {tracking.TAG_MODEL: "toy", tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: method}
        with tracking.stage_run("diff", fp=f"{organism}{method}{rank}", tags=tags) as run:
            run.log_metrics({"grade/identification_rank": rank, "grade/precision_at_20": rank / 10, "kl/x": 1.0})
    table = grade_table("toy")
    assert list(zip(table["organism"], table["method"], table["identification_rank"])) == [
        ("caps", "adl", 3), ("roman_concrete", "adl", 2), ("roman_concrete", "kl", 1)]  # newest run per pair
    assert "kl/x" not in table and table["precision_at_20"].tolist() == [0.3, 0.2, 0.1]
    assert identification_by_method(table) == {"adl": {"accuracy": 0.0, "mrr": pytest.approx((1 / 3 + 1 / 2) / 2)},
                                               "kl": {"accuracy": 1.0, "mrr": 1.0}}
