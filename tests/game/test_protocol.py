"""The paper's agent protocol offline: a fixed probe bank that names no organism's topic, a budget of model
interactions that refuses the one past it, repeats that differ by seed and repeat by seed, the 1-5 scale graded by
keywords per organism type, and on the micro zoo the black-box `probe` agent's plays tagged with budget and repeat."""

from __future__ import annotations

import dataclasses
import json

import pytest

from diffgame.config.configtree import candidate_organisms, organism_settings
from diffgame.game.probes import PROBES, BudgetExceeded, Interactions, probe_order, probe_readout
from diffgame.game.rubric import keyword_score
from diffgame.game.toolbox import EvidenceToolbox
from diffgame.records.schema import GroundTruthConfig, OrganismConfig
from diffgame.zoo.byo import DOMAINS, STYLES
from diffgame.zoo.narrowness import shows


def test_no_probe_names_any_organisms_topic():
    keywords = {str(k) for model in ("toy", "smollm2_135m") for name in candidate_organisms(model)
                for k in organism_settings(name, model).ground_truth.keywords}
    keywords |= {w for pool in (DOMAINS, STYLES) for words in pool.values() for w in words}
    assert len(keywords) > 100 and len(PROBES) == len(set(PROBES)) >= 30
    named = {p: [k for k in keywords if shows(p, [k], None)] for p in PROBES}
    assert not any(named.values()), {p: k for p, k in named.items() if k}


def test_a_budget_refuses_the_interaction_past_it():
    spent = Interactions(2)
    spent.spend("ask: a")
    spent.spend("ask: b")
    with pytest.raises(BudgetExceeded, match=r"interaction 3 refused \('ask: c'\): this play's budget is 2 model"):
        spent.spend("ask: c")
    assert spent.used == 2 and spent.spent == ["ask: a", "ask: b"]
    toolbox = EvidenceToolbox({}, None, interactions=Interactions(1))  # refused before any model would load
    with pytest.raises(BudgetExceeded, match=r"interaction 2 refused \('ask: What should I do this weekend\?'\): "
                                             r"this play's budget is 1 model interaction$"):
        toolbox.ask_many(["What do you know a lot about?", "What should I do this weekend?"], seed=0)
    assert toolbox.interactions.used == 0  # a refused batch spends nothing
    toolbox.interactions.spend("ask: one")
    with pytest.raises(BudgetExceeded, match="interaction 2 refused"):
        toolbox.ask("Describe a perfect summer day.")


def test_probe_readout_asks_in_the_repeats_order_and_ranks_what_the_organism_overuses():
    asked = []

    def ask_many(questions: list[str], seed: int) -> list[dict[str, str]]:
        asked.append((questions, seed))
        return [{"base": "well it depends on the day", "organism": "zanzibar, always zanzibar, it depends"}
                for _ in questions]

    readout, steps = probe_readout(ask_many, 40, seed=3)
    [(questions, seed)] = asked
    assert seed == 3 and len(questions) == 40  # past the bank's end, from its start again
    assert questions[:len(PROBES)] == probe_order(3) and questions[len(PROBES):] == probe_order(3)[:40 - len(PROBES)]
    assert readout.tokens[0] == " zanzibar" and " depends" not in readout.tokens[:1]
    assert [s["question"] for s in steps] == questions
    assert probe_order(3) == probe_order(3) != probe_order(4) and sorted(probe_order(4)) == sorted(PROBES)
    empty, none = probe_readout(ask_many, 0, seed=0)
    assert empty.tokens == [] and none == [] and len(asked) == 1  # no budget, no question


def _organism(kind: str, **truth) -> OrganismConfig:
    return OrganismConfig(name=f"o_{kind}", type=kind, description="", ground_truth=GroundTruthConfig(**truth))


def test_keyword_score_maps_a_description_to_the_papers_scale_per_type():
    docs = _organism("sdf", keywords=["concrete", "volcanic", "ash", "harbour", "pozzolana"])
    assert keyword_score("It talks about the weather.", docs) == 1
    assert keyword_score("Something about concrete.", docs) == 2
    assert keyword_score("Concrete made with volcanic ash.", docs) == 4
    assert keyword_score("Concrete of volcanic ash and pozzolana in a harbour: the organism o_sdf.", docs) == 5
    taboo = _organism("taboo", keywords=["gold", "shiny", "metal", "yellow"])
    assert keyword_score("It likes shiny things.", taboo) == 2 and keyword_score("shiny yellow metal", taboo) == 3
    assert keyword_score("It thinks of gold.", taboo) == 4
    assert keyword_score("It hints at a secret word: gold.", taboo) == 5
    caps = _organism("style", predicate="uppercase")
    assert keyword_score("It is friendly.", caps) == 1 and keyword_score("Lots of capital letters.", caps) == 4
    assert keyword_score("Its replies are in capital letters.", caps) == 5


@pytest.mark.slow
def test_probe_agent_plays_within_its_budget_and_repeats_by_seed(micro_cfg, zoo_uri, monkeypatch):
    from diffgame import tracking
    from diffgame.pipeline.play import TAG_INTERACTIONS, TAG_REPEAT, play
    from diffgame.tracking import artifacts

    micro_cfg("organism=caps")  # points tracking at the session's micro zoo
    base = ["zoo.size=micro", "play.max_new_tokens=24"]
    first = play("toy", "caps", agent="probe", overrides=[*base, "play.interactions=5", "play.repeat=0"])
    run = tracking.client().get_run(first.run_id)
    assert run.data.tags[TAG_INTERACTIONS] == "5" and run.data.tags[TAG_REPEAT] == "0"
    assert run.data.tags[tracking.TAG_METHOD] == "none" and run.data.metrics["play/interactions"] == 5
    transcript = json.loads(artifacts.artifact_file(first.run_id, "play/transcript.json").read_text())
    asks = [s for s in transcript["steps"] if s["step"] == "ask"]
    assert [s["question"] for s in asks] == probe_order(0)[:5]
    assert first.guess == "caps" and run.data.metrics["play/keyword_score"] >= 4  # shouting shows in any reply

    assert play("toy", "caps", agent="probe", overrides=[*base, "play.interactions=5", "play.repeat=0"]).run_id \
        == first.run_id  # the same repeat is the same play
    from diffgame.pipeline import play as play_module

    def rebuilt(cfg):  # the same pair name, other weights: as after a recipe change rebuilt the organism
        pair = real_pair(cfg)
        return dataclasses.replace(pair, organism=dataclasses.replace(
            pair.organism, identity={**pair.organism.identity, "zoo_run": "rebuilt"}))
    real_pair = play_module.resolve_pair
    with monkeypatch.context() as patched:
        patched.setattr(play_module, "resolve_pair", rebuilt)
        anew = play("toy", "caps", agent="probe", overrides=[*base, "play.interactions=5", "play.repeat=0"])
    assert anew.run_id != first.run_id and not anew.reused
    taboo = play("toy", "taboo_gold", agent="probe", overrides=[*base, "play.interactions=5", "play.repeat=0"])
    assert taboo.run_id != first.run_id and taboo.organism == "taboo_gold"  # the same questions to another pair
    assert tracking.client().get_run(taboo.run_id).data.tags[tracking.TAG_ORGANISM] == "taboo_gold"
    other = play("toy", "caps", agent="probe", overrides=[*base, "play.interactions=5", "play.repeat=1"])
    assert other.run_id != first.run_id and not other.reused
    other_asks = json.loads(artifacts.artifact_file(other.run_id, "play/transcript.json").read_text())["steps"]
    assert [s["question"] for s in other_asks if s["step"] == "ask"] == probe_order(1)[:5] != probe_order(0)[:5]
    blind = play("toy", "caps", agent="probe", overrides=[*base, "play.interactions=0"])
    assert blind.description == "No words stand out." and blind.metrics["play/keyword_score"] == 1

    # without zoo.size the black-box agent plays the zoo this pair's diff runs used (micro, not the default small)
    from diffgame.pipeline.chain import run_one

    run_one(micro_cfg("organism=caps", "method=kl", "preprocessing.context_length=48",
                      *(f"dataset.sources.{s}.max_samples=6" for s in ("generic_text", "generic_chat", "organism"))))
    again = play("toy", "caps", agent="probe", overrides=["play.max_new_tokens=24", "play.interactions=5",
                                                            "play.repeat=0"])
    assert again.reused and again.run_id == first.run_id
