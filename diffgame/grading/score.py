"""Grade any method's evidence against an organism's ground truth, offline and without an LLM judge: scores only.

What counts as a hit is `diffgame.grading.ground_truth`. Scores are precision@k and probability-weighted precision of
ranked tokens, organism identification and the hit rate of steered vs unsteered samples, each reported next to
the same score of the `control` organism's evidence; the difference is the headline. The runner finds the control's
evidence and builds the ground truths; nothing here reads configs, runs or files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffgame.grading.ground_truth import GroundTruth
from diffgame.records.evidence import RankedTokens
from diffgame.records.schema import CONTROL

if TYPE_CHECKING:
    import pandas as pd

GRADING_VERSION = 4
"""Version of the hit rules and scores (2: a word-initial token hits a keyword only as its start; 3: the control's
evidence comes from its run with the same fingerprint; 4: words and tokens graded apart, the headline on words); a
reused diff run graded under another version is graded again from its logged evidence."""
K = 20
"""Default cut-off of precision@k."""


# --- scores --------------------------------------------------------------------------------------
def hits(ranked: RankedTokens, gt: GroundTruth, k: int = K, words: bool = False) -> list[bool]:
    """Hit or not for each of the first k entries (`words`: entries are completed words, `GroundTruth.is_word_hit`)."""
    rule = gt.is_word_hit if words else gt.is_hit
    return [rule(i, t) for i, t in zip(ranked.token_ids[:k], ranked.tokens[:k])]


def precision_at_k(ranked: RankedTokens, gt: GroundTruth, k: int = K, words: bool = False) -> float:
    """Share of hits among the first k tokens (or all, when fewer); NaN for an empty list."""
    h = hits(ranked, gt, k, words)
    return sum(h) / len(h) if h else float("nan")


def weighted_precision_at_k(ranked: RankedTokens, gt: GroundTruth, k: int = K, words: bool = False) -> float:
    """Score-weighted share of hits among the first k tokens (probability mass on hits for lens readouts)."""
    h = hits(ranked, gt, k, words)
    w = [max(float(s), 0.0) for s in ranked.scores[:k]]
    if not h:
        return float("nan")
    if sum(w) <= 0:
        return sum(h) / len(h)
    return sum(wi for wi, hi in zip(w, h) if hi) / sum(w)


@dataclass
class EvidenceScore:
    """The best readout among a method's ranked-token lists, by precision@k then weighted precision."""

    key: str
    precision: float
    weighted: float


def score_evidence(ranked_tokens: dict[str, RankedTokens], gt: GroundTruth, k: int = K,
                   words: bool = False) -> EvidenceScore | None:
    """Best key of `ranked_tokens` for `gt` (an analyst reads every readout and keeps the clearest); None if empty."""
    best = None
    for key, ranked in ranked_tokens.items():
        if not ranked.token_ids:
            continue
        s = EvidenceScore(key, precision_at_k(ranked, gt, k, words), weighted_precision_at_k(ranked, gt, k, words))
        if best is None or (s.precision, s.weighted) > (best.precision, best.weighted):
            best = s
    return best


def sample_hit_rate(texts: Sequence[str], gt: GroundTruth, tokenizer) -> float:
    """Share of the texts' tokens that are hits (NaN for no tokens)."""
    n = hit = 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []:
        toks = tokenizer.convert_ids_to_tokens(ids)
        n += len(ids)
        hit += sum(gt.is_hit(i, t) for i, t in zip(ids, toks))
    return hit / n if n else float("nan")


# --- grading a method's evidence -----------------------------------------------------------------
def identification_rank(scores: dict[str, float], true: str) -> int:
    """Rank (1 = best) of `true` among `scores`; ties count against it, so an all-zero score ranks last."""
    mine = scores[true]
    return 1 + sum(1 for name, s in scores.items() if name != true and s >= mine)


def identification_summary(ranks: Sequence[int]) -> dict[str, float]:
    """Accuracy (rank 1) and mean reciprocal rank over organisms."""
    if not ranks:
        return {}
    return {"accuracy": sum(r == 1 for r in ranks) / len(ranks), "mrr": sum(1 / r for r in ranks) / len(ranks)}


def grade(evidence, gt: GroundTruth, tokenizer=None, control=None, candidates: Mapping[str, GroundTruth] | None = None,
          k: int = K) -> dict[str, float]:
    """`grade/...` metrics of one method's evidence (`ranked_tokens`, `ranked_words`, `samples`) on the organism of
    `gt`.

    `control`: the control organism's evidence (`ranked_tokens`, `ranked_words`) from the same method, base, data and
    method config; `candidates`: every organism identification ranks among (name -> ground truth, this organism
    included). Tokens are graded under `grade/tokens/`, words under `grade/words/`; the headline `grade/...` is the
    words' grade where the run has words (`grade/headline_words` = 1), else the tokens'.
    """
    metrics: dict[str, float] = {}
    if gt.empty:
        return metrics
    if evidence.ranked_tokens and gt.organism != CONTROL:
        head = {}
        for kind, words in (("tokens", False), ("words", True)):
            ranked = _readouts(evidence, words)
            if not ranked:
                continue
            head = _grade_ranked(ranked, gt, _readouts(control, words), candidates, k, words)
            metrics.update({f"grade/{kind}/{key}": v for key, v in head.items()})
        metrics.update({f"grade/{key}": v for key, v in head.items()})
        metrics["grade/headline_words"] = float(bool(_readouts(evidence, True)))
    metrics.update(grade_samples(evidence.samples, gt, tokenizer))
    return metrics


def _readouts(evidence, words: bool) -> dict[str, RankedTokens]:
    if evidence is None:
        return {}
    return dict(getattr(evidence, "ranked_words" if words else "ranked_tokens", None) or {})


def _grade_ranked(ranked: dict[str, RankedTokens], gt: GroundTruth, control: dict[str, RankedTokens],
                  candidates: Mapping[str, GroundTruth] | None, k: int, words: bool) -> dict[str, float]:
    """Precision, the control's precision, their difference and the identification rank of one kind of readout."""
    out: dict[str, float] = {}
    own = score_evidence(ranked, gt, k, words)
    if own is None:
        return out
    out.update({f"precision_at_{k}": own.precision, f"wprecision_at_{k}": own.weighted})
    ctrl = score_evidence(control, gt, k, words) if control else None
    if ctrl is not None:
        out.update({f"control/precision_at_{k}": ctrl.precision, f"control/wprecision_at_{k}": ctrl.weighted,
                    f"relative/precision_at_{k}": own.precision - ctrl.precision,
                    f"relative/wprecision_at_{k}": own.weighted - ctrl.weighted})
    if candidates and gt.organism in candidates:
        scores = {}
        for name, other in candidates.items():
            s = score_evidence(ranked, other, k, words)
            c = score_evidence(control, other, k, words) if control else None
            scores[name] = (s.precision if s else 0.0) - (c.precision if c else 0.0)
        out["identification_rank"] = float(identification_rank(scores, gt.organism))
    return out


def grade_samples(samples: dict[str, list[dict]], gt: GroundTruth, tokenizer) -> dict[str, float]:
    """GT hit rate of steered vs unsteered texts (rows with `steered`/`unsteered`; per `model` when given)."""
    out: dict[str, float] = {}
    for rows in samples.values():
        for model in sorted({str(r.get("model", "organism")) for r in rows if "steered" in r}):
            mine = [r for r in rows if "steered" in r and str(r.get("model", "organism")) == model]
            prefix = "grade/samples" if model == "organism" else f"grade/samples/{model}"
            out[f"{prefix}/steered_hit_rate"] = sample_hit_rate([r["steered"] for r in mine], gt, tokenizer)
            out[f"{prefix}/unsteered_hit_rate"] = sample_hit_rate([r["unsteered"] for r in mine], gt, tokenizer)
    return out


# --- over runs -----------------------------------------------------------------------------------
def identification_by_method(table: "pd.DataFrame", column: str = "identification_rank") -> dict[str, dict[str, float]]:
    """Accuracy and MRR of organism identification per method, over the rows of `grade_table` (`column`: the
    headline rank, or `tokens/identification_rank`, `words/identification_rank`)."""
    if table.empty or column not in table:
        return {}
    ranked = table.dropna(subset=[column])
    return {m: identification_summary([int(r) for r in g[column]]) for m, g in ranked.groupby("method")}
