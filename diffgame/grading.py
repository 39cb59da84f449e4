"""Grade any method's evidence against an organism's ground truth, offline and without an LLM judge.

What counts as a hit is `diffgame.ground_truth`. Scores are precision@k and probability-weighted precision of
ranked tokens, organism identification and the hit rate of steered vs unsteered samples, each reported next to
the same score of the `control` organism's evidence; the difference is the headline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from diffgame.evidence import RankedTokens
from diffgame.ground_truth import GroundTruth, ground_truth, organism_node

if TYPE_CHECKING:
    import pandas as pd

GRADING_VERSION = 3
"""Version of the hit rules and scores (2: a word-initial token hits a keyword only as its start; 3: the control's
evidence comes from its run with the same fingerprint); a reused diff run graded under another version is graded
again from its logged evidence."""
K = 20
"""Default cut-off of precision@k."""
CONTROL = "control"


# --- scores --------------------------------------------------------------------------------------
def hits(ranked: RankedTokens, gt: GroundTruth, k: int = K) -> list[bool]:
    return [gt.is_hit(i, t) for i, t in zip(ranked.token_ids[:k], ranked.tokens[:k])]


def precision_at_k(ranked: RankedTokens, gt: GroundTruth, k: int = K) -> float:
    """Share of hits among the first k tokens (or all, when fewer); NaN for an empty list."""
    h = hits(ranked, gt, k)
    return sum(h) / len(h) if h else float("nan")


def weighted_precision_at_k(ranked: RankedTokens, gt: GroundTruth, k: int = K) -> float:
    """Score-weighted share of hits among the first k tokens (probability mass on hits for lens readouts)."""
    h = hits(ranked, gt, k)
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


def score_evidence(ranked_tokens: dict[str, RankedTokens], gt: GroundTruth, k: int = K) -> EvidenceScore | None:
    """Best key of `ranked_tokens` for `gt` (an analyst reads every readout and keeps the clearest); None if empty."""
    best = None
    for key, ranked in ranked_tokens.items():
        if not ranked.token_ids:
            continue
        s = EvidenceScore(key, precision_at_k(ranked, gt, k), weighted_precision_at_k(ranked, gt, k))
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


# --- grading a method's result -------------------------------------------------------------------
def candidate_organisms(cfg: DictConfig) -> list[str]:
    """Organisms identification ranks among: configured for this base model, with a ground truth."""
    from diffgame.config import group_options

    out = []
    for name in group_options("organism"):
        node = organism_node(name)
        if name != CONTROL and str(cfg.model.name) in node.finetuned and not _gt_empty(node):
            out.append(name)
    return out


def _gt_empty(node: DictConfig) -> bool:
    gt = node.ground_truth
    return not (gt.keywords or gt.predicate or gt.vocab_from_data)


def identification_rank(scores: dict[str, float], true: str) -> int:
    """Rank (1 = best) of `true` among `scores`; ties count against it, so an all-zero score ranks last."""
    mine = scores[true]
    return 1 + sum(1 for name, s in scores.items() if name != true and s >= mine)


def identification_summary(ranks: Sequence[int]) -> dict[str, float]:
    """Accuracy (rank 1) and mean reciprocal rank over organisms."""
    if not ranks:
        return {}
    return {"accuracy": sum(r == 1 for r in ranks) / len(ranks), "mrr": sum(1 / r for r in ranks) / len(ranks)}


def grade_result(cfg: DictConfig, method: str, result, tokenizer=None,
                 control: dict[str, RankedTokens] | None = None, k: int = K) -> dict[str, float]:
    """`grade/...` metrics of one method's result on `cfg.organism`; {} for a method without token evidence.

    `control`: the control organism's ranked tokens from the same method and model (fetched from the
    tracking store, or produced there in full mode, when not given).
    """
    metrics: dict[str, float] = {}
    organism = str(cfg.organism.name)
    if tokenizer is None and (result.ranked_tokens or result.samples):
        tokenizer = _load_tokenizer(cfg)
    gt = ground_truth(cfg.organism, tokenizer)
    if result.ranked_tokens and organism != CONTROL and not gt.empty:
        if control is None and str(cfg.model.name) in organism_node(CONTROL).finetuned:
            control = control_evidence(cfg, method)
        own = score_evidence(result.ranked_tokens, gt, k)
        if own is not None and not gt.empty:
            metrics[f"grade/precision_at_{k}"] = own.precision
            metrics[f"grade/wprecision_at_{k}"] = own.weighted
            ctrl = score_evidence(control, gt, k) if control else None
            if ctrl is not None:
                metrics[f"grade/control/precision_at_{k}"] = ctrl.precision
                metrics[f"grade/control/wprecision_at_{k}"] = ctrl.weighted
                metrics[f"grade/relative/precision_at_{k}"] = own.precision - ctrl.precision
                metrics[f"grade/relative/wprecision_at_{k}"] = own.weighted - ctrl.weighted
        candidates = candidate_organisms(cfg)
        if organism in candidates:
            scores = {}
            for name in candidates:
                other = gt if name == organism else ground_truth(organism_node(name), tokenizer)
                s = score_evidence(result.ranked_tokens, other, k)
                c = score_evidence(control, other, k) if control else None
                scores[name] = (s.precision if s else 0.0) - (c.precision if c else 0.0)
            metrics["grade/identification_rank"] = float(identification_rank(scores, organism))
    if not gt.empty:
        metrics.update(grade_samples(result.samples, gt, tokenizer))
    return metrics


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


def _load_tokenizer(cfg: DictConfig):
    from transformers import AutoTokenizer

    from diffgame.models import resolve_base_source

    source, _ = resolve_base_source(cfg)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=bool(cfg.model.trust_remote_code))


def control_evidence(cfg: DictConfig, method: str) -> dict[str, RankedTokens] | None:
    """Ranked tokens of the control organism's finished diff run of `method` with the same base, dataset and method
    config (its fingerprint), so a store holding other builds or configs never lends its control.

    In `full` mode a missing control run is made (reusing a finished one by fingerprint), as the runner
    would for `organism=control method=<method>`; in other modes a missing control gives None.
    """
    from diffgame import tracking
    from diffgame.runner import diff_fingerprints, run_methods

    control_cfg = cfg.copy()
    control_cfg.organism = organism_node(CONTROL)
    control_cfg.method = {method: cfg.method[method]}
    fp = diff_fingerprints(control_cfg)[method]  # the same base, data and method config: never another build's
    run = tracking.find_finished("diff", fp)
    if run is None and cfg.pipeline.mode == "full":
        run_methods(control_cfg)
        run = tracking.find_finished("diff", fp)
    if run is None:
        return None
    from diffgame.results import list_artifacts, load_ranked_tokens

    if "evidence/ranked_tokens.json" not in list_artifacts(run.info.run_id, "evidence"):
        return None
    return load_ranked_tokens(run.info.run_id)


def regrade_run(cfg: DictConfig, method: str, run_id: str) -> dict[str, float]:
    """`grade_result` of a finished diff run recomputed from its logged evidence (ranked tokens and samples)."""
    from types import SimpleNamespace

    from diffgame.results import list_artifacts, load_ranked_tokens, load_samples

    files = list_artifacts(run_id)
    ranked = load_ranked_tokens(run_id) if "evidence/ranked_tokens.json" in files else {}
    names = [f.removeprefix("samples/").removesuffix(".json") for f in files
             if f.startswith("samples/") and f.endswith(".json")]
    evidence = SimpleNamespace(ranked_tokens=ranked, samples={n: load_samples(run_id, n) for n in names})
    return grade_result(cfg, method, evidence)


# --- over runs -----------------------------------------------------------------------------------
def grade_table(model: str) -> "pd.DataFrame":
    """Grades of the newest finished diff run per (organism, method) on base model `model`, one row each."""
    import pandas as pd

    from diffgame import tracking

    runs = tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_MODEL: model}, statuses=("FINISHED",))
    rows, seen = [], set()
    for run in runs:  # newest first
        key = (run.data.tags.get(tracking.TAG_ORGANISM), run.data.tags.get(tracking.TAG_METHOD))
        if key in seen:
            continue
        seen.add(key)
        grades = {k.removeprefix("grade/"): v for k, v in run.data.metrics.items() if k.startswith("grade/")}
        rows.append({"organism": key[0], "method": key[1], "run_id": run.info.run_id,
                     "grading_version": run.data.tags.get(tracking.TAG_GRADING, "1"), **grades})
    return pd.DataFrame(rows).sort_values(["method", "organism"]).reset_index(drop=True) if rows else pd.DataFrame()


def identification_by_method(table: "pd.DataFrame") -> dict[str, dict[str, float]]:
    """Accuracy and MRR of organism identification per method, over the rows of `grade_table`."""
    if table.empty or "identification_rank" not in table:
        return {}
    ranked = table.dropna(subset=["identification_rank"])
    return {m: identification_summary([int(r) for r in g["identification_rank"]]) for m, g in ranked.groupby("method")}
