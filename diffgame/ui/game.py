"""The guessing game, without Streamlit: blind rounds (an organism drawn and shown only under a slug, evidence from
generic data within a budget), grading a free-text guess, logging each round as a `game` run, and the leaderboard.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import pandas as pd

from diffgame import tracking
from diffgame.config import registry
from diffgame.config.compose import compose, settings
from diffgame.errors import ConfigError, TrackingError
from diffgame.grading.ground_truth import ground_truth
from diffgame.grading.guesses import GENERIC_WORDS, UPPERCASE_WORDS, GuessGrade, grade_guess, guess_hits  # noqa: F401
from diffgame.pipeline.play import rubric_grade  # noqa: F401  (the Game page grades a guess with the rubric)
from diffgame.records.schema import CONTROL, OrganismConfig

TAG_SLUG = "diffgame.slug"
TAG_PLAYER = "diffgame.player"
GAME_STAGE = "game"


def organism_node(model: str, organism: str) -> OrganismConfig:
    """An organism's typed config (ground truth, description) as paired with `model`."""
    return settings(compose([f"model={model}", f"organism={organism}"])).organism


# --- what a blind round may show ------------------------------------------------------------------
def organism_data(row) -> set[str]:
    """Datasets of the organism's own training data a diff run's evidence read (`TAG_ORGANISM_DATA`); runs made
    before the tag count as having read it when their method reads the store (whose default data includes it)."""
    tag = row["tags"].get(tracking.TAG_ORGANISM_DATA)
    if tag is None:
        try:
            cls, _ = registry.get_method(row["method"])
        except ConfigError:
            return {"organism"}
        return {"organism"} if cls.needs_store else set()
    return set() if tag == "none" else set(tag.split(","))


def generic_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose evidence comes only from generic data: what a blind round may show."""
    if runs.empty:
        return runs
    return runs[[not organism_data(r) for _, r in runs.iterrows()]]


def game_methods(runs: pd.DataFrame, model: str) -> list[str]:
    """Methods with generic-data evidence on `model` for some drawable organism: the budget's choices."""
    sel = generic_runs(runs[(runs["model"] == model) & (runs["organism"] != CONTROL)])
    return sorted(sel["method"].unique())


def default_methods(runs: pd.DataFrame, model: str, n: int = 2) -> list[str]:
    """Up to `n` methods that some drawable organism has generic-data runs of all together (the one covered by
    most methods), so the default budget can always start a round."""
    sel = generic_runs(runs[(runs["model"] == model) & (runs["organism"] != CONTROL)])
    if sel.empty:
        return []
    by_organism = sel.groupby("organism")["method"].agg(lambda m: sorted(set(m)))
    best = max(by_organism, key=len)
    return best[:n]


@dataclass
class Round:
    """One blind round: the drawn organism, the slug it is shown under, the evidence budget and the clock."""

    model: str
    organism: str
    slug: str
    methods: tuple[str, ...]
    lists: int = 3
    """Ranked lists the player may open per method."""
    examples: int = 5
    """Examples shown per method."""
    player: str = "anonymous"
    started: float = field(default_factory=time.time)
    revealed: bool = False
    run_id: str | None = None
    """The round's `game` run, once graded."""
    seconds: float | None = None
    """Time from the draw to the guess."""

    def hide(self, text: str) -> str:
        """`text` with the organism's name replaced by the slug (until the reveal)."""
        return text if self.revealed else text.replace(self.organism, self.slug)


def new_round(runs: pd.DataFrame, model: str, methods: list[str], lists: int = 3, examples: int = 5,
              player: str = "anonymous", seed: int | None = None) -> Round:
    """Draw an organism of `model` (not the control) having a generic-evidence run of every chosen method."""
    if not methods:
        raise ConfigError("choose at least one method whose evidence the round shows")
    sel = generic_runs(runs[runs["model"] == model])
    organisms = sorted(o for o in sel["organism"].unique()
                       if o != CONTROL and set(methods) <= set(sel[sel["organism"] == o]["method"]))
    if not organisms:
        raise TrackingError(f"no organism of model '{model}' has generic-data runs of {', '.join(methods)}; make "
                            f"them with `diffgame run model={model} method=[{','.join(methods)}] organism=<name>`")
    rng = random.Random(seed)
    organism = rng.choice(organisms)
    return Round(model, organism, f"mystery-{rng.randrange(16 ** 4):04x}", tuple(methods), lists, examples, player)


def blind_frame(runs: pd.DataFrame, rnd: Round) -> pd.DataFrame:
    """What every page may show during the round: the drawn organism's generic-data runs of the round's methods,
    renamed to the slug, and the control's runs; other organisms (which would give the answer by elimination),
    run names and tags naming the organism are hidden. The `blind` column tells pages to hide run ids and links."""
    keep = (runs["model"] == rnd.model) & (
        ((runs["organism"] == rnd.organism) & runs["method"].isin(rnd.methods)) | (runs["organism"] == CONTROL))
    out = generic_runs(runs[keep]).copy()
    out["organism"] = out["organism"].map(rnd.hide)
    out["run_name"] = out["run_name"].map(rnd.hide)
    out["tags"] = [{k: rnd.hide(str(v)) for k, v in t.items()} for t in out["tags"]]
    out["params"] = [{k: rnd.hide(str(v)) for k, v in p.items()} for p in out["params"]]
    out["blind"] = True
    return out.reset_index(drop=True)


def carriers(shown: dict[tuple[str, str], list[str]], organism_config) -> pd.DataFrame:
    """Which shown evidence carried the signal: per (method, list), the shown words that hit the organism's
    ground truth, most hits first."""
    gt = ground_truth(organism_config)
    rows = []
    for (method, name), words in shown.items():
        hits = [w.strip() for w in words if gt.is_word_hit(None, " " + w.strip())]
        rows.append({"method": method, "list": name, "hits": len(hits), "shown": len(words),
                     "hit words": ", ".join(dict.fromkeys(hits))})
    return pd.DataFrame(rows, columns=["method", "list", "hits", "shown", "hit words"]).sort_values(
        "hits", ascending=False, kind="stable").reset_index(drop=True)


# --- rounds as runs, and the leaderboard ----------------------------------------------------------
def log_round(rnd: Round, guess: str, grade: GuessGrade, rubric: float | None = None,
              experiment: str = "diffgame") -> str:
    """Log a revealed round as a `game` run (tags: model, organism, slug, player, methods; metrics: correct,
    keyword hits, the organism's rank by the guess, seconds, and the rubric score when graded); its run id."""
    seconds = rnd.seconds = time.time() - rnd.started
    rank = 1 + [o for o, _ in grade.ranking].index(rnd.organism)
    tags = {tracking.TAG_MODEL: rnd.model, tracking.TAG_ORGANISM: rnd.organism, TAG_SLUG: rnd.slug,
            TAG_PLAYER: rnd.player, tracking.TAG_METHOD: "+".join(rnd.methods)}
    fp = tracking.fingerprint({"slug": rnd.slug, "started": rnd.started, "player": rnd.player})
    with tracking.stage_run(GAME_STAGE, fp=fp, tags=tags, experiment=experiment, run_name=f"game-{rnd.slug}",
                            params={"lists": rnd.lists, "examples": rnd.examples,
                                    "methods": ",".join(rnd.methods)}) as run:
        metrics = {"game/correct": float(grade.correct), "game/keyword_hits": float(len(grade.hits)),
                   "game/guess_rank": float(rank), "game/seconds": seconds}
        if rubric is not None:
            metrics["game/rubric_score"] = float(rubric)
        run.log_metrics(metrics)
        run.log_dict({"guess": guess, "hits": grade.hits, "ranking": grade.ranking}, "game/guess.json")
    return run.run_id


def leaderboard(games: pd.DataFrame, plays: pd.DataFrame) -> pd.DataFrame:
    """One row per player (game runs) and per agent and evidence (play runs): rounds, share correct, mean keyword
    hits, mean rubric score where graded, mean seconds; best first."""
    rows = []
    for kind, frame, prefix, who in (("person", games, "game", TAG_PLAYER), ("agent", plays, "play", None)):
        if frame.empty:
            continue
        for _, r in frame.iterrows():
            m, t = r["metrics"], r["tags"]
            name = t.get(who, "anonymous") if who else f"{t.get('diffgame.agent', '?')} ({r['method']})"
            rows.append({"player": name, "kind": kind, "model": r["model"],
                         "correct": m.get(f"{prefix}/correct", m.get(f"{prefix}/guess_correct")),
                         "keyword hits": m.get(f"{prefix}/keyword_hits"),
                         "rubric": m.get(f"{prefix}/rubric_score"), "seconds": m.get(f"{prefix}/seconds")})
    cols = ["player", "kind", "model", "rounds", "accuracy", "keyword hits", "rubric", "seconds"]
    if not rows:
        return pd.DataFrame(columns=cols)
    flat = pd.DataFrame(rows)
    board = flat.groupby(["player", "kind", "model"]).agg(
        rounds=("correct", "size"), accuracy=("correct", "mean"), **{"keyword hits": ("keyword hits", "mean")},
        rubric=("rubric", "mean"), seconds=("seconds", "mean")).reset_index()
    return board.sort_values(["accuracy", "keyword hits"], ascending=False, kind="stable").reset_index(drop=True)[cols]


def rounds_table(games: pd.DataFrame) -> pd.DataFrame:
    """One row per logged round, newest first: when, player, slug, organism, methods, correct, hits, rubric, time."""
    rows = [{"when": r["start_time"], "player": r["tags"].get(TAG_PLAYER, ""), "slug": r["tags"].get(TAG_SLUG, ""),
             "organism": r["organism"], "methods": r["method"], "correct": bool(r["metrics"].get("game/correct")),
             "keyword hits": r["metrics"].get("game/keyword_hits"), "rubric": r["metrics"].get("game/rubric_score"),
             "seconds": r["metrics"].get("game/seconds")} for _, r in games.iterrows()]
    return pd.DataFrame(rows).sort_values("when", ascending=False, kind="stable").reset_index(drop=True)
