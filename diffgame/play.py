"""`diffgame play`: an agent plays the diffing game on the evidence of finished diff runs; one `play` run per play.

The agent (`diffgame.agents`) reads the ranked words of the newest finished diff run of each chosen method for the
organism, without being told which organism it is, writes a description and names a guess among the configured
organisms. The play run is tagged with the agent and the evidence runs it read, keeps the transcript and the
description as artifacts and the scores as metrics: `play/guess_correct` (the guess is the organism),
`play/guess_rank` (the organism's rank among the agent's candidate scores), `play/keyword_correct` and
`play/keyword_hits` (the description graded by the game's keyword grader, `diffgame.guesses`). A play with the same
agent, evidence runs and candidates is reused.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from diffgame import artifacts, tracking
from diffgame.agents import AGENTS
from diffgame.configtree import CONTROL, candidate_organisms, organism_node
from diffgame.errors import ConfigError, TrackingError
from diffgame.grading import identification_rank
from diffgame.ground_truth import ground_truth
from diffgame.guesses import grade_guess

TAG_AGENT = "diffgame.agent"
TAG_EVIDENCE = "diffgame.evidence_runs"
"""Comma-separated run ids of the diff runs a play read."""
TAG_GUESS = "diffgame.guess"
"""The organism the agent named ('' for none)."""
PLAY_VERSION = 1
"""Version of the play rules and scores; part of every play's fingerprint."""
DEFAULT_METHODS = ("adl", "blackbox")
"""Evidence from generic data only: ADL reads generic documents and chats, the baseline samples neutral prompts."""


@dataclass
class PlayOutcome:
    """One play: its run, the agent's guess and the scores."""

    run_id: str
    organism: str
    guess: str | None
    description: str
    metrics: dict[str, float]
    reused: bool


def evidence_runs(model: str, organism: str, methods: list[str]) -> dict[str, object]:
    """The newest FINISHED diff run of each method for (model, organism), or a TrackingError naming the command."""
    out = {}
    for method in methods:
        found = tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_MODEL: model,
                                 tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: method},
                                statuses=("FINISHED",), max_results=1)
        if not found:
            raise TrackingError(f"no finished {method} diff run of model={model} organism={organism} in "
                                f"{tracking.resolve_uri()}; run `diffgame run model={model} organism={organism} "
                                f"method={method}` first")
        out[method] = found[0]
    return out


def play(model: str, organism: str, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS, agent: str = "lens",
         experiment: str = "diffgame") -> PlayOutcome:
    """Let `agent` play `organism` on base `model` from the evidence of `methods`; reuse an identical play."""
    if agent not in AGENTS:
        raise ConfigError(f"unknown agent '{agent}'; known: {', '.join(sorted(AGENTS))}")
    names = candidate_organisms(model)
    if organism == CONTROL or organism not in names:
        raise ConfigError(f"organism '{organism}' is not one the game draws for model '{model}' (the control is never "
                          f"drawn); known: {', '.join(names)}")
    player = AGENTS[agent]()
    runs = evidence_runs(model, organism, list(methods))
    run_ids = [r.info.run_id for r in runs.values()]
    fp = tracking.fingerprint({"agent": agent, "config": dataclasses.asdict(player), "evidence": run_ids,
                               "candidates": names, "version": PLAY_VERSION})
    done = tracking.find_finished("play", fp)
    if done is not None:
        description = artifacts.artifact_file(done.info.run_id, "play/description.txt").read_text().strip()
        return PlayOutcome(done.info.run_id, organism, done.data.tags.get(TAG_GUESS) or None, description,
                           dict(done.data.metrics), reused=True)
    evidence = {m: _readouts(r.info.run_id) for m, r in runs.items()}
    nodes = {n: organism_node(n) for n in names}
    truths = {n: ground_truth(node) for n, node in nodes.items()}
    tags = {tracking.TAG_MODEL: model, tracking.TAG_ORGANISM: organism, TAG_AGENT: agent,
            TAG_EVIDENCE: ",".join(run_ids), tracking.TAG_METHOD: "+".join(methods)}
    with tracking.stage_run("play", fp=fp, tags=tags, experiment=experiment, run_name=f"play-{agent}-{organism}",
                            params={"agent": agent, "methods": ",".join(methods), "candidates": ",".join(names)}
                            ) as run:
        start = time.perf_counter()
        result = player.play(evidence, truths)  # the agent never sees `organism`
        seconds = time.perf_counter() - start
        keyword = grade_guess(result.description, organism, nodes)
        metrics = {"play/guess_correct": float(result.guess == organism),
                   "play/guess_rank": float(identification_rank(result.guess_scores, organism)),
                   "play/keyword_correct": float(keyword.correct), "play/keyword_hits": float(len(keyword.hits)),
                   "play/seconds": seconds}
        run.log_metrics(metrics)
        run.set_tags({TAG_GUESS: result.guess or ""})
        run.log_dict({"agent": agent, "evidence": {m: r.info.run_id for m, r in runs.items()},
                      "steps": result.transcript, "description": result.description, "guess": result.guess,
                      "keyword_hits": keyword.hits}, "play/transcript.json")
        run.log_text(result.description + "\n", "play/description.txt")
    return PlayOutcome(run.run_id, organism, result.guess, result.description, metrics, reused=False)


def _readouts(run_id: str) -> dict:
    """A diff run's ranked words, or its ranked tokens when it was made before words (one artifact listing)."""
    paths = artifacts.list_artifacts(run_id, "evidence")
    return artifacts.ranked_words(run_id, paths) or artifacts.ranked_tokens(run_id, paths)


def playable(model: str, methods: list[str] | tuple[str, ...]) -> list[str]:
    """The drawable organisms of `model` that have a finished diff run of every method in `methods`."""
    out = []
    for name in candidate_organisms(model):
        try:
            evidence_runs(model, name, list(methods))
        except TrackingError:
            continue
        out.append(name)
    return out
