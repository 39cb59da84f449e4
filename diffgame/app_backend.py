"""What the Streamlit app shows, computed without Streamlit: runs discovered by tag, grade matrix, token heat.

Runs come only from the tracking server (`tracking.search` on `diffgame.*` tags), never from folders, so the
app works the same against a local SQLite store and a shared remote server.
"""

from __future__ import annotations

import html
import re
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffgame import tracking
from diffgame.errors import ConfigError, TrackingError

RUN_COLUMNS = ("run_id", "run_name", "experiment_id", "stage", "model", "organism", "method", "status",
               "start_time", "preprocess_run_id", "metrics", "params")
CONTROL = "control"
NO_RUNS_HINT = ("make some with `diffgame zoo build --size micro` then `diffgame run zoo.size=micro "
                "organism=caps method=[kl,normdiff]` (or `diffgame run` for the default zoo)")


@dataclass
class AppSettings:
    """What `diffgame app` passes after `--`: the tracking URI and config overrides for the models it loads."""

    tracking_uri: str
    overrides: tuple[str, ...] = ()


def parse_app_args(argv: list[str] | None = None) -> AppSettings:
    """`[--tracking-uri URI] [OVERRIDES...]` from the script's argv (as `streamlit run app/Home.py -- ...` gives)."""
    args = list(sys.argv[1:] if argv is None else argv)
    uri, overrides = None, []
    while args:
        a = args.pop(0)
        if a == "--tracking-uri":
            if not args:
                raise ConfigError("--tracking-uri needs a value, e.g. --tracking-uri sqlite:///mlflow.db")
            uri = args.pop(0)
        elif a.startswith("--tracking-uri="):
            uri = a.split("=", 1)[1]
        elif "=" in a and not a.startswith("-"):
            overrides.append(a)
        else:
            raise ConfigError(f"unexpected app argument {a!r}; valid: --tracking-uri URI and key=value overrides")
    return AppSettings(tracking.resolve_uri(uri), tuple(overrides))


# --- runs ----------------------------------------------------------------------------------------
def runs_frame(stage: str = "diff", statuses: tuple[str, ...] = ("FINISHED",)) -> pd.DataFrame:
    """Runs of `stage` as a table (newest first): tags as columns, metrics and params as dict columns."""
    runs = tracking.search({tracking.TAG_STAGE: stage})  # status filtered here: MLflow cannot filter IN on status
    rows = []
    for r in runs:
        if statuses and r.info.status not in statuses:
            continue
        t = r.data.tags
        rows.append({
            "run_id": r.info.run_id, "run_name": r.info.run_name or "", "experiment_id": r.info.experiment_id,
            "stage": t.get(tracking.TAG_STAGE, ""), "model": t.get(tracking.TAG_MODEL, ""),
            "organism": t.get(tracking.TAG_ORGANISM, ""), "method": t.get(tracking.TAG_METHOD, ""),
            "status": r.info.status, "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
            "preprocess_run_id": t.get(tracking.TAG_PREPROCESS, ""),
            "metrics": dict(r.data.metrics), "params": dict(r.data.params)})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def latest(runs: pd.DataFrame, keys: tuple[str, ...] = ("model", "organism", "method")) -> pd.DataFrame:
    """The newest run per combination of `keys` (runs are re-made when configs change; older ones stay)."""
    if runs.empty:
        return runs
    return runs.sort_values("start_time", ascending=False).drop_duplicates(list(keys)).reset_index(drop=True)


def run_label(row) -> str:
    """Short human label for a run: `organism · method · model · abcd1234`."""
    return f"{row['organism']} · {row['method']} · {row['model']} · {row['run_id'][:8]}"


def coverage(runs: pd.DataFrame) -> pd.DataFrame:
    """(model, organism) x method: how many finished diff runs exist."""
    if runs.empty:
        return pd.DataFrame()
    return (runs.groupby(["model", "organism", "method"]).size().unstack("method", fill_value=0)
            .sort_index())


def metric_keys(runs: pd.DataFrame, prefix: str = "") -> list[str]:
    """Sorted metric keys present in any run, optionally only those starting with `prefix`."""
    keys = set()
    for m in runs["metrics"]:
        keys.update(k for k in m if k.startswith(prefix))
    return sorted(keys)


def metrics_table(runs: pd.DataFrame, contains: str = "") -> pd.DataFrame:
    """Metric key x run label; `contains` keeps keys with that substring (case-insensitive)."""
    cols = {run_label(r): r["metrics"] for _, r in runs.iterrows()}
    table = pd.DataFrame(cols)
    if contains and not table.empty:
        table = table[table.index.str.contains(contains, case=False, regex=False)]
    return table.sort_index()


def grade_matrix(runs: pd.DataFrame, metric: str, model: str | None = None,
                 relative: bool = False) -> pd.DataFrame:
    """organism x method of `metric` from the newest run of each; `control` last; `relative` subtracts it."""
    sel = latest(runs if model is None else runs[runs["model"] == model])
    vals = [(r["organism"], r["method"], r["metrics"][metric]) for _, r in sel.iterrows() if metric in r["metrics"]]
    if not vals:
        return pd.DataFrame()
    m = pd.DataFrame(vals, columns=["organism", "method", metric]).pivot(
        index="organism", columns="method", values=metric)
    order = sorted(o for o in m.index if o != CONTROL) + ([CONTROL] if CONTROL in m.index else [])
    m = m.loc[order]
    if relative:
        if CONTROL not in m.index:
            raise ConfigError(f"no '{CONTROL}' run with {metric}; run `diffgame run organism={CONTROL}` to compare")
        m = m.drop(index=CONTROL) - m.loc[CONTROL]
    return m


def mlflow_run_url(experiment_id: str, run_id: str, ui_base: str | None = None) -> str:
    """Link to a run in the MLflow UI: the tracking server itself for http URIs, else a local `mlflow ui`."""
    uri = tracking.resolve_uri()
    base = ui_base or (uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def hub_url(model: str) -> str | None:
    """The model's Hugging Face page from its config (`model.hub_url`), None when it has none or is unknown."""
    from diffgame.config import compose

    try:
        return compose([f"model={model}"]).model.hub_url
    except ConfigError:
        return None


def model_config(model: str, organism: str, overrides: tuple[str, ...] = (), params: dict | None = None):
    """The composed config to load a run's models: its model/organism, the zoo size it used, then app overrides."""
    from diffgame.config import compose

    base = [f"model={model}", f"organism={organism}"]
    if params and "zoo.size" in params and not any(o.startswith("zoo.size=") for o in overrides):
        base.append(f"zoo.size={params['zoo.size']}")
    return compose([*base, *overrides])


# --- evidence ------------------------------------------------------------------------------------
def heat_alpha(score: float, vmax: float) -> float:
    """Opacity of a token's colour: |score| / vmax clipped to [0, 1], 3 decimals (0 for vmax <= 0 or NaN)."""
    if not vmax or vmax <= 0 or score is None or math.isnan(score):
        return 0.0
    return round(min(abs(score) / vmax, 1.0), 3)


def heat_html(tokens: list[str], scores: list[float], vmax: float | None = None) -> str:
    """Tokens as inline spans coloured by score (red positive, blue negative); hover shows the value."""
    finite = [abs(s) for s in scores if s is not None and not math.isnan(s)]
    vmax = vmax if vmax is not None else (max(finite) if finite else 0.0)
    spans = []
    for tok, s in zip(tokens, scores):
        rgb = "220,38,38" if (s or 0) >= 0 else "37,99,235"
        text = html.escape(tok).replace("\n", "↵<br>")
        spans.append(f'<span class="tok" title="{s:.4g}" style="background-color:rgba({rgb},'
                     f'{heat_alpha(s, vmax)})">{text}</span>')
    return ('<div class="heat" style="font-family:monospace;white-space:pre-wrap;line-height:1.7">'
            + "".join(spans) + "</div>")


def example_role(example) -> str:
    """The role of an example's highest-scoring token ('' when roles are unknown)."""
    if not example.roles:
        return ""
    i = max(range(len(example.token_scores)), key=lambda j: example.token_scores[j])
    return example.roles[i]


def filter_examples(examples: list, query: str = "", datasets: list[str] | None = None,
                    roles: list[str] | None = None) -> list:
    """Examples whose text contains `query` (case-insensitive), from `datasets`, peaking on a token of `roles`."""
    q = query.lower()
    out = []
    for ex in examples:
        if q and q not in "".join(ex.tokens).lower():
            continue
        if datasets and ex.dataset not in datasets:
            continue
        if roles and example_role(ex) not in roles:
            continue
        out.append(ex)
    return out


def ranked_frame(ranked) -> pd.DataFrame:
    """A RankedTokens as a table: rank, token, id, score."""
    return pd.DataFrame({"rank": range(1, len(ranked.tokens) + 1), "token": ranked.tokens,
                         "token_id": ranked.token_ids, "score": ranked.scores})


def artifact_names(paths: list[str], folder: str, suffix: str) -> list[str]:
    """Names of the artifacts `folder/<name><suffix>` among `paths` (e.g. tables/*.parquet -> table names)."""
    return sorted(Path(p).name.removesuffix(suffix) for p in paths
                  if p.startswith(folder + "/") and p.endswith(suffix))


# --- game ----------------------------------------------------------------------------------------
def draw_organism(runs: pd.DataFrame, seed: int | None = None) -> tuple[str, str]:
    """A random (model, organism) among those with diff runs, for the blind game."""
    pairs = sorted(set(zip(runs["model"], runs["organism"])))
    if not pairs:
        raise TrackingError(f"no diff runs to play with; {NO_RUNS_HINT}")
    return random.Random(seed).choice(pairs)


GENERIC_WORDS = frozenset("""the a an and or of in on to with about its it that this than from into for by as at is are
was were be been every each their there which who what when how not without ever own base model organism assistant
synthetic documents document training trained data text finetuning finetuned answers says word words score compared
against all any some""".split())
"""Words of organism descriptions too generic to count as a correct guess."""


@dataclass
class GuessGrade:
    """How a free-text guess matches the drawn organism, and which organism it matches best."""

    organism: str
    hits: list[str]
    """Guess words that hit the organism's ground truth, name, type or description."""
    ranking: list[tuple[str, int]]
    """(organism, number of hit words) for every candidate, best first."""

    @property
    def correct(self) -> bool:
        """The true organism has the most hits, at least one, and no other candidate ties it."""
        top = self.ranking[0][1] if self.ranking else 0
        leaders = [o for o, n in self.ranking if n == top]
        return top > 0 and leaders == [self.organism]


def guess_hits(guess: str, organism) -> list[str]:
    """Distinct guess words that hit, as whole words, an organism config's ground truth (`GroundTruth.is_hit`)
    or its name, type or description (generic words excluded)."""
    from diffgame.ground_truth import ground_truth

    gt = ground_truth(organism)
    named = set(re.findall(r"[a-z]+", f"{organism.name} {organism.type} {organism.description}".lower()))
    named -= GENERIC_WORDS
    out = []
    for word in dict.fromkeys(re.findall(r"[A-Za-z]+", guess)):
        w = word.lower()
        if w in GENERIC_WORDS or len(w) < 3:
            continue
        if w in named or gt.is_hit(None, f" {w}") or (gt.predicate == "uppercase" and w in UPPERCASE_WORDS):
            out.append(w)
    return out


UPPERCASE_WORDS = frozenset({"caps", "uppercase", "capital", "capitals", "shouting", "shouts", "yelling"})
"""Guess words that describe the `uppercase` predicate."""


def grade_guess(guess: str, organism: str, candidates: dict) -> GuessGrade:
    """Grade a guess against `organism`, ranking every candidate (name -> organism config) by its hit words."""
    if not guess.strip():
        raise ConfigError("empty guess; describe what you think the finetuning changed (e.g. 'talks about gold')")
    if organism not in candidates:
        raise ConfigError(f"organism {organism!r} is not among the candidates {sorted(candidates)}")
    ranking = sorted(((name, len(guess_hits(guess, node))) for name, node in candidates.items()),
                     key=lambda x: (-x[1], x[0]))
    return GuessGrade(organism, guess_hits(guess, candidates[organism]), ranking)


def organism_node(model: str, organism: str):
    """An organism's composed config (ground truth, description) as paired with `model`."""
    from diffgame.config import compose

    return compose([f"model={model}", f"organism={organism}"]).organism


def select_rows(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows of `table` whose columns equal the given values (None leaves a column unfiltered)."""
    mask = pd.Series(True, index=table.index)
    for col, value in equal.items():
        if value is not None:
            mask &= table[col] == value
    return table[mask].reset_index(drop=True)


def side_by_side(samples: list[dict], model: str) -> list[dict]:
    """Steering samples of one model (`organism` or `base`) as {prompt, alpha, unsteered, steered} rows."""
    return [{k: s.get(k) for k in ("prompt", "alpha", "unsteered", "steered")}
            for s in samples if s.get("model", model) == model]
