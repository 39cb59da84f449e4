"""`diffgame play`: an agent plays the diffing game on the evidence of finished diff runs; one `play` run per play.

The agent (`diffgame.game.agents`) reads the ranked words of the newest finished diff run of each chosen method for the
organism, without being told which organism it is, writes a description and names a guess among the configured
organisms. The play run is tagged with the agent and the evidence runs it read, keeps the transcript and the
description as artifacts and the scores as metrics: `play/guess_correct` (the guess is the organism),
`play/guess_rank` (the organism's rank among the agent's candidate scores), `play/keyword_correct` and
`play/keyword_hits` (the description graded by the game's keyword grader, `diffgame.grading.guesses`), and
`play/keyword_score` (the paper's 1-5 scale, `diffgame.game.rubric.keyword_score`). Under `play.interactions` (the
paper's budget of model interactions, `diffgame.game.probes`) the offline agents spend it on the probe bank, and
`play.repeat` seeds it. A play with the same agent, evidence runs, candidates, budget and repeat is reused.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from diffgame import tracking
from diffgame.config.compose import compose, settings
from diffgame.config.configtree import candidate_organisms, organism_settings
from diffgame.errors import ConfigError, TrackingError
from diffgame.game.agents import AGENTS, LensAgent, Play
from diffgame.game.chat_agent import LLMAgent
from diffgame.game.endpoint import Endpoint
from diffgame.game.probes import Interactions, probe_readout
from diffgame.game.rubric import DEFAULT_RUBRIC, RubricGrade, grade_description, keyword_score
from diffgame.game.toolbox import EvidenceToolbox
from diffgame.grading.ground_truth import ground_truth, sole_leader
from diffgame.grading.guesses import grade_guess, guess_hits
from diffgame.grading.score import identification_rank
from diffgame.records.schema import CONTROL, OrganismConfig, PlayConfig, RootConfig
from diffgame.tracking import artifacts
from diffgame.zoo.pairs import resolve_pair

TAG_AGENT = "diffgame.agent"
TAG_EVIDENCE = "diffgame.evidence_runs"
"""Comma-separated run ids of the diff runs a play read."""
TAG_GUESS = "diffgame.guess"
"""The organism the agent named ('' for none)."""
TAG_OUTCOME = "diffgame.play_outcome"
"""How the play ended (`agents.Play.outcome`): `submitted`, or a budget, `malformed`, `timeout`, `error`."""
TAG_RUBRIC_OUTCOME = "diffgame.rubric_outcome"
TAG_INTERACTIONS = "diffgame.interactions"
"""The play's budget of model interactions (`play.interactions`; '' for none set)."""
TAG_REPEAT = "diffgame.repeat"
"""Which repeat of the play (`play.repeat`, its seed)."""
PROBES_METHOD = "probes"
"""The evidence key of what the offline agents' questions found (beside the methods' evidence)."""
PLAY_VERSION = 3
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
    outcome: str = "submitted"


def evidence_runs(model: str, organism: str, methods: list[str], variant: str = tracking.DEFAULT_VARIANT
                  ) -> dict[str, object]:
    """The newest FINISHED diff run of each method for (model, organism, variant), or a TrackingError naming the
    command (runs made before the variant tag count as the default variant)."""
    out = {}
    for method in methods:
        found = [r for r in tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_MODEL: model,
                                             tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: method},
                                            statuses=("FINISHED",), max_results=100)
                 if tracking.variant_of(r.data.tags) == variant]
        if not found:
            which = "" if variant == tracking.DEFAULT_VARIANT else f" organism.variant={variant}"
            raise TrackingError(f"no finished {method} diff run of model={model} organism={organism}{which} in "
                                f"{tracking.resolve_uri()}; run `diffgame run model={model} organism={organism}"
                                f"{which} method={method}` first")
        out[method] = found[0]
    return out


def control_runs(model: str, methods: list[str]) -> dict[str, object]:
    """The control organism's newest finished diff run of each of `methods` that has one: what any finetune of this
    base raises, which the lens agent takes away from the organism's evidence."""
    out = {}
    for method in methods:
        try:
            out |= evidence_runs(model, CONTROL, [method])
        except TrackingError:
            continue
    return out


def play(model: str, organism: str, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS, agent: str = "lens",
         experiment: str = "diffgame", overrides: list[str] | tuple[str, ...] = ()) -> PlayOutcome:
    """Let `agent` play `organism` on base `model` from the evidence of `methods`; reuse an identical play that ended
    with a description. `overrides` set `play.*` (endpoint, budget, rubric) and how the models load."""
    if agent not in AGENTS:
        raise ConfigError(f"unknown agent '{agent}'; known: {', '.join(sorted(AGENTS))}")
    names = candidate_organisms(model)
    if organism == CONTROL or organism not in names:
        raise ConfigError(f"organism '{organism}' is not one the game draws for model '{model}' (the control is never "
                          f"drawn); known: {', '.join(names)}")
    variant = str(compose([f"model={model}", f"organism={organism}", *overrides]).organism.variant)
    methods = [] if agent == "probe" else list(methods)  # the black-box agent reads no method's evidence
    runs = evidence_runs(model, organism, methods, variant)
    run_ids = [r.info.run_id for r in runs.values()]
    control = control_runs(model, methods) if agent == "lens" else {}
    zoo = [f"zoo.size={r.data.params['zoo.size']}" for r in runs.values() if "zoo.size" in r.data.params][:1]
    if not zoo:  # the black-box agent reads no evidence: the zoo size this pair's diff runs used, if any
        found = tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_MODEL: model,
                                 tracking.TAG_ORGANISM: organism}, statuses=("FINISHED",), max_results=1)
        params = found[0].data.params if found else {}
        zoo = [f"zoo.size={params['zoo.size']}"] if "zoo.size" in params else []
    cfg = settings(compose([f"model={model}", f"organism={organism}", *zoo, *overrides]))
    player = make_agent(agent, cfg.play)
    endpoint, budget = cfg.play.endpoint, cfg.play.interactions
    protocol = {"interactions": budget, "repeat": cfg.play.repeat} if budget is not None or cfg.play.repeat else {}
    if protocol or not run_ids:  # it talks to the models (or reads nothing else): the pair, as built, is what it plays
        protocol |= {"organism": organism, "variant": variant, "zoo_size": str(cfg.zoo.size),
                     "weights": resolve_pair(cfg).organism.identity}  # a rebuilt organism (new recipe) is played anew
    fp = tracking.fingerprint({"agent": agent, "config": dataclasses.asdict(player), "evidence": run_ids,
                               "control": [r.info.run_id for r in control.values()],
                               "candidates": names,
                               "rubric": [endpoint.base_url, endpoint.model, cfg.play.rubric] if endpoint.model else None,
                               "version": PLAY_VERSION, **protocol})
    done = tracking.find_finished("play", fp)
    if done is not None and done.data.tags.get(TAG_OUTCOME, "submitted") == "submitted":
        description = artifacts.artifact_file(done.info.run_id, "play/description.txt").read_text().strip()
        return PlayOutcome(done.info.run_id, organism, done.data.tags.get(TAG_GUESS) or None, description,
                           dict(done.data.metrics), reused=True)  # only a submitted play is reused
    nodes = {n: organism_settings(n, model) for n in names}
    tags = {tracking.TAG_MODEL: model, tracking.TAG_ORGANISM: organism, tracking.TAG_VARIANT: variant,
            TAG_AGENT: agent, TAG_EVIDENCE: ",".join(run_ids), tracking.TAG_METHOD: "+".join(methods) or "none",
            TAG_INTERACTIONS: "" if budget is None else budget, TAG_REPEAT: cfg.play.repeat}
    with tracking.stage_run("play", fp=fp, tags=tags, experiment=experiment, run_name=f"play-{agent}-{organism}",
                            params={"agent": agent, "methods": ",".join(methods), "candidates": ",".join(names)}
                            ) as run:
        start = time.perf_counter()
        spent = Interactions(budget) if budget is not None else None
        toolbox = EvidenceToolbox({m: r.info.run_id for m, r in runs.items()}, cfg, cfg.play.max_new_tokens, spent)
        if isinstance(player, LensAgent):  # the agent never sees `organism`
            evidence = {m: _readouts(r.info.run_id) for m, r in runs.items()}
            steps = []
            if spent is not None and spent.limit:  # the offline agents spend their budget on the probe bank
                readout, steps = probe_readout(toolbox.ask_many, spent.limit, seed=cfg.play.repeat)
                evidence[PROBES_METHOD] = {"asked": readout}
            result = player.play(evidence, {n: ground_truth(node) for n, node in nodes.items()},
                                 {m: _readouts(r.info.run_id) for m, r in control.items()})
            result.transcript[:0] = steps
        else:
            result = from_chat(player.play(toolbox), nodes)
        seconds = time.perf_counter() - start
        keyword = _keyword_grade(result.description, organism, nodes)
        metrics = {"play/guess_correct": float(result.guess == organism),
                   "play/guess_rank": float(identification_rank(result.guess_scores, organism)),
                   "play/keyword_correct": float(keyword.correct if keyword else False),
                   "play/keyword_hits": float(len(keyword.hits) if keyword else 0), "play/seconds": seconds}
        score = keyword_score(result.description, nodes[organism])  # the paper's 1-5 scale, graded offline
        metrics.update({"play/keyword_score": float(score), "play/score_ge2": float(score >= 2),
                        "play/score_ge4": float(score >= 4)})
        if spent is not None:
            metrics["play/interactions"] = float(spent.used)
        metrics.update({f"play/{k}": float(v) for k, v in result.usage.items()})
        rubric = rubric_grade(result.description, nodes[organism], cfg=cfg)
        if rubric is not None:
            run.set_tags({TAG_RUBRIC_OUTCOME: rubric.outcome})
            if rubric.score is not None:
                metrics["play/rubric_score"] = float(rubric.score)
        run.log_metrics(metrics)
        run.set_tags({TAG_GUESS: result.guess or "", TAG_OUTCOME: result.outcome})
        run.log_dict({"agent": agent, "evidence": {m: r.info.run_id for m, r in runs.items()},
                      "control": {m: r.info.run_id for m, r in control.items()},
                      "outcome": result.outcome, "steps": result.transcript, "description": result.description,
                      "guess": result.guess, "keyword_hits": keyword.hits if keyword else [],
                      "rubric": dataclasses.asdict(rubric) if rubric else None}, "play/transcript.json")
        run.log_text(result.description + "\n", "play/description.txt")
    return PlayOutcome(run.run_id, organism, result.guess, result.description, metrics, reused=False,
                       outcome=result.outcome)


def make_agent(agent: str, play_cfg: PlayConfig):
    """The agent named `agent`, configured from `play_cfg` (the typed `play` config)."""
    if agent in ("lens", "probe"):
        return LensAgent(name=agent)
    if not play_cfg.endpoint.model:
        raise ConfigError(f"agent '{agent}' needs a chat endpoint; set play.endpoint.model=<name> (and "
                          f"play.endpoint.base_url=<url> for a local server such as vLLM, llama.cpp or Ollama)")
    protocol = play_cfg.interactions is not None or bool(play_cfg.repeat)  # the paper's: budget and seed per repeat
    return LLMAgent(endpoint(play_cfg), play_cfg.budget, blackbox=agent == "llm_blackbox",
                    interactions=play_cfg.interactions, seed=play_cfg.repeat if protocol else None)


def endpoint(play_cfg: PlayConfig) -> Endpoint:
    """The chat endpoint of a typed `play` config."""
    return Endpoint(**dataclasses.asdict(play_cfg.endpoint))


def from_chat(chat, nodes: dict) -> Play:
    """An LLM agent's play as a `Play`: its guess is the candidate its description matches best by keywords (the
    agent itself is never shown the candidates), None when none or several lead."""
    scores = {o: float(len(guess_hits(chat.description, node))) for o, node in nodes.items()}
    return Play(chat.agent, chat.description, sole_leader(scores), [], scores, chat.transcript, chat.outcome,
                usage={"tool_calls": chat.tool_calls, "tokens": chat.tokens})


def _keyword_grade(description: str, organism: str, nodes: dict):
    return grade_guess(description, organism, nodes) if description.strip() else None


def truth_text(node: OrganismConfig) -> str:
    """What the rubric grader is told the finetuning taught: the organism's long description (else its description)
    and its keywords."""
    keywords = ", ".join(node.ground_truth.keywords or [])
    return f"{node.long_description or node.description}" + (f"\nKey words: {keywords}" if keywords else "")


def rubric_grade(description: str, node: OrganismConfig, overrides: tuple[str, ...] = (),
                 cfg: RootConfig | None = None) -> RubricGrade | None:
    """Score a description 1–5 against organism `node` with the configured endpoint's rubric grader; None when no
    endpoint is configured (`play.endpoint.model`) or the description is empty."""
    cfg = cfg if cfg is not None else settings(compose(list(overrides)))
    if not cfg.play.endpoint.model or not description.strip():
        return None
    return grade_description(description, truth_text(node), endpoint(cfg.play), cfg.play.rubric or DEFAULT_RUBRIC)


def _readouts(run_id: str) -> dict:
    """A diff run's ranked words, or its ranked tokens when it was made before words (one artifact listing)."""
    paths = artifacts.list_artifacts(run_id, "evidence")
    return artifacts.ranked_words(run_id, paths) or artifacts.ranked_tokens(run_id, paths)


def playable(model: str, methods: list[str] | tuple[str, ...]) -> list[str]:
    """The drawable organisms of `model` that have a finished diff run of every method in `methods`; with none (the
    black-box agent), those with any finished diff run: built, at a zoo size the play can read off it."""
    out = []
    for name in candidate_organisms(model):
        if not methods:
            if tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_MODEL: model, tracking.TAG_ORGANISM: name},
                               statuses=("FINISHED",), max_results=1):
                out.append(name)
            continue
        try:
            evidence_runs(model, name, list(methods))
        except TrackingError:
            continue
        out.append(name)
    return out
