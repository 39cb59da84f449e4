"""Grade any method's evidence against an organism's ground truth, offline and without an LLM judge.

A token is a **hit** for an organism when (after `normalize_token`: leading space markers stripped,
lowercased) it equals one of the organism's keywords or is a piece of >= 3 characters of one
(`conc` for `concrete`); or it satisfies the organism's predicate (`uppercase`: >= 2 letters, all
upper case, so the ordinary `I`/`A` do not count); or it is in the vocabulary derived from the
organism's training data by log-odds against the base corpus (`data_vocab`). Scores are reported next
to the same score of the `control` organism's evidence, and the difference is the headline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from diffgame.errors import ConfigError
from diffgame.evidence import RankedTokens

if TYPE_CHECKING:
    import pandas as pd

SPACE_MARKERS = ("Ġ", "▁", "Ċ", "##", " ")
"""Leading markers of byte-level BPE, SentencePiece and WordPiece tokens."""
WORD_START_MARKERS = ("Ġ", "▁", "Ċ", " ")
"""Markers that open a new word (WordPiece's `##` continues one)."""
GRADING_VERSION = 3
"""Version of the hit rules and scores (2: a word-initial token hits a keyword only as its start; 3: the control's
evidence comes from its run with the same fingerprint); a reused diff run graded under another version is graded
again from its logged evidence."""
MIN_PIECE = 3
"""Shortest keyword piece that counts as a hit."""
K = 20
"""Default cut-off of precision@k."""
BASE_CORPUS = "zoo:generic_text"
"""Background corpus of the log-odds vocabulary (generic documents the base was trained on)."""
CONTROL = "control"


def _strip_markers(token: str) -> str:
    t, stripped = token, True
    while stripped:
        stripped = False
        for m in SPACE_MARKERS:
            if t.startswith(m):
                t, stripped = t[len(m):], True
    return t.strip()


def normalize_token(token: str) -> str:
    """Strip leading space markers and surrounding whitespace, lowercase: `Ġconcrete` -> `concrete`."""
    return _strip_markers(token).lower()


def is_uppercase(token: str) -> bool:
    """The `uppercase` predicate: at least two letters, all of them upper case."""
    letters = [c for c in _strip_markers(token) if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


@dataclass
class GroundTruth:
    """What counts as a hit for one organism (keywords, predicate, data-derived token ids)."""

    organism: str
    keywords: list[str] = field(default_factory=list)
    predicate: str | None = None
    vocab_ids: frozenset[int] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.keywords or self.predicate or self.vocab_ids)

    def is_hit(self, token_id: int | None, token: str) -> bool:
        """A keyword or a piece of one (>= MIN_PIECE letters), the predicate, or a data-vocabulary id."""
        norm = normalize_token(token)
        if norm:
            # a word-initial token can only begin a keyword (` the` is no piece of `pantheon`); other pieces
            # may sit anywhere in it
            starts = token.startswith(WORD_START_MARKERS)
            for kw in self.keywords:
                if norm == kw or (len(norm) >= MIN_PIECE and (kw.startswith(norm) if starts else norm in kw)):
                    return True
        if self.predicate == "uppercase" and is_uppercase(token):
            return True
        return token_id is not None and token_id in self.vocab_ids


# --- ground truth --------------------------------------------------------------------------------
def organism_node(name: str) -> DictConfig:
    """An organism's config from `experiments/organism/<name>.yaml`, schema defaults filled."""
    from diffgame.config import _validate_node, experiments_dir, group_options
    from diffgame.schema import OrganismConfig

    path = experiments_dir() / "organism" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown organism '{name}'; known: {', '.join(group_options('organism'))}")
    node = OmegaConf.load(path)
    OmegaConf.set_struct(node, False)
    _validate_node(node, OrganismConfig, "organism")  # fills schema defaults
    return node


def ground_truth(organism: DictConfig, tokenizer=None) -> GroundTruth:
    """The organism's ground truth; the data vocabulary needs the tokenizer the evidence came from."""
    gt = organism.ground_truth
    vocab: frozenset[int] = frozenset()
    if gt.vocab_from_data and tokenizer is not None:
        vocab = data_vocab(organism, tokenizer)
    return GroundTruth(str(organism.name), [str(k).lower() for k in gt.keywords],
                       str(gt.predicate) if gt.predicate else None, vocab)


def _rows_text(rows: Iterable[dict]) -> list[str]:
    out = []
    for r in rows:
        if "messages" in r:
            out.append(" ".join(str(m["content"]) for m in r["messages"]))
        elif "text" in r:
            out.append(str(r["text"]))
    return out


def _token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    special = set(getattr(tokenizer, "all_special_ids", []))
    counts: Counter = Counter()
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        counts.update(i for i in ids if i not in special)
    return counts


def log_odds_vocab(target: Counter, background: Counter, top_n: int = 50, min_z: float = 3.0,
                   min_count: int = 5, n_generic: int = 200, prior: float = 100.0) -> list[int]:
    """Ids most over-represented in `target` vs `background` by log-odds with an informative Dirichlet prior.

    Monroe, Colaresi & Quinn (2008), "Fightin' Words", eq. 16-22: z-scored log-odds ratio. The
    `n_generic` most frequent background tokens are excluded (function words, punctuation).
    """
    n_t, n_b = sum(target.values()), sum(background.values())
    if not n_t or not n_b:
        return []
    generic = {t for t, _ in background.most_common(n_generic)}
    total = n_t + n_b
    scored = []
    for tok, y_t in target.items():
        if tok in generic or y_t < min_count:
            continue
        y_b = background.get(tok, 0)
        a = prior * (y_t + y_b) / total
        delta = math.log((y_t + a) / (n_t + prior - y_t - a)) - math.log((y_b + a) / (n_b + prior - y_b - a))
        z = delta / math.sqrt(1 / (y_t + a) + 1 / (y_b + a))
        if z >= min_z:
            scored.append((z, tok))
    return [tok for _, tok in sorted(scored, reverse=True)[:top_n]]


def data_vocab(organism: DictConfig, tokenizer, top_n: int = 50) -> frozenset[int]:
    """Token ids over-represented in the organism's training data vs the base corpus (`log_odds_vocab`), words
    and word pieces of at least `MIN_PIECE` letters."""
    key = (str(organism.zoo.data or organism.training_data), getattr(tokenizer, "name_or_path", ""),
           len(tokenizer), top_n)
    return _data_vocab_cached(key, organism, tokenizer, top_n)


_VOCAB_CACHE: dict[tuple, frozenset[int]] = {}


def _data_vocab_cached(key: tuple, organism: DictConfig, tokenizer, top_n: int) -> frozenset[int]:
    if key not in _VOCAB_CACHE:
        from diffgame.data import source_rows

        cfg = OmegaConf.create({"organism": OmegaConf.to_container(organism), "dataset": {"name": "grading"}})
        src = OmegaConf.create({"source": "organism", "kind": "text", "split": "train", "messages_column": "messages"})
        rows, _ = source_rows(cfg, src)
        bg_rows, _ = source_rows(cfg, OmegaConf.create({"source": BASE_CORPUS, "kind": "text", "split": "train"}))
        target = _token_counts(tokenizer, _rows_text(rows[:2000]))
        background = _token_counts(tokenizer, _rows_text(bg_rows[:2000]))
        ranked = log_odds_vocab(target, background, top_n=len(target))
        # word pieces shorter than MIN_PIECE letters (`Ġw`, `he`) are over-represented wherever a small
        # vocabulary splits the organism's words, and any text's lens output is full of them: not evidence
        pieces = tokenizer.convert_ids_to_tokens(ranked)
        _VOCAB_CACHE[key] = frozenset([i for i, t in zip(ranked, pieces)
                                       if len(normalize_token(t)) >= MIN_PIECE][:top_n])
    return _VOCAB_CACHE[key]


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
