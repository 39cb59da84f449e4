"""`diffgame play`: the lens agent on hand-made evidence, and on the micro zoo a scored, reused `play` run per organism
read from finished diff runs, with clear errors for missing evidence and unknown agents."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diffgame.agents import LensAgent
from diffgame.evidence import RankedTokens
from diffgame.ground_truth import GroundTruth


def _words(*words: str) -> RankedTokens:
    return RankedTokens(list(range(len(words))), list(words), [1.0 / (i + 1) for i in range(len(words))])


CANDIDATES = {"bees": GroundTruth("bees", ["hive", "waggle", "nectar"]),
              "tea": GroundTruth("tea", ["tea", "kettle", "brew"]),
              "caps": GroundTruth("caps", predicate="uppercase")}


def test_lens_agent_pools_words_across_readouts_and_guesses():
    evidence = {"adl": {"a": _words(" the", " hive", " water", " waggle"), "b": _words(" waggle", " nectar", " of")},
                "blackbox": {"chat": _words(" waggles", " kettle")}}
    play = LensAgent().play(evidence, CANDIDATES)
    # each method weighs the same: blackbox's one list (waggles 1, kettle 1/2) counts as much as adl's two
    assert dict(play.words) == pytest.approx({"waggles": 1.0, "waggle": 0.125 + 0.5, "kettle": 0.5, "hive": 0.25,
                                              "nectar": 0.25, "water": 1 / 6})
    assert play.description.startswith("The finetuning promotes these words on generic text: waggles, waggle")
    assert play.guess == "bees" and play.guess_scores["bees"] > play.guess_scores["tea"] > 0
    assert [s["step"] for s in play.transcript] == ["read", "read", "describe", "guess"]


def test_lens_agent_says_caps_and_declines_a_tie():
    shouted = LensAgent().play({"kl": {"x": _words(" GREAT", " CERTAINLY", " LET", " day")}}, CANDIDATES)
    assert shouted.guess == "caps" and "capital letters" in shouted.description
    tie = LensAgent().play({"kl": {"x": _words(" hive", " kettle")}},
                           {"bees": CANDIDATES["bees"], "tea": GroundTruth("tea", ["kettle"])})
    assert tie.guess is None or tie.guess == "bees"  # `hive` ranks above `kettle`: bees leads
    none = LensAgent().play({"kl": {"x": _words(" day", " night")}}, CANDIDATES)
    assert none.guess is None and none.guess_scores == {"bees": 0.0, "tea": 0.0, "caps": 0.0}


ADL = ("method=adl", "method.adl.max_samples=64", "method.adl.steering_prompts=0", "method.adl.causal_samples=0",
       "method.adl.patchscope_scales=[]")


@pytest.mark.slow
def test_play_runs_on_the_micro_zoo(micro_cfg, zoo_uri):
    from diffgame import artifacts, tracking
    from diffgame.cli import app
    from diffgame.errors import ConfigError, TrackingError
    from diffgame.pipeline import run_one
    from diffgame.play import TAG_AGENT, TAG_EVIDENCE, play

    adl = run_one(micro_cfg("organism=roman_concrete", *ADL))[0]
    outcome = play("toy", "roman_concrete", ["adl"])
    assert outcome.guess == "roman_concrete" and not outcome.reused
    run = tracking.client().get_run(outcome.run_id)
    assert run.data.tags[tracking.TAG_STAGE] == "play" and run.data.tags[TAG_AGENT] == "lens"
    assert run.data.tags[TAG_EVIDENCE] == adl.run_id and run.data.tags[tracking.TAG_ORGANISM] == "roman_concrete"
    assert run.data.metrics["play/guess_correct"] == 1.0 and run.data.metrics["play/guess_rank"] == 1.0
    assert run.data.metrics["play/keyword_hits"] >= 2 and run.data.metrics["play/keyword_correct"] == 1.0
    transcript = json.loads(artifacts.artifact_file(outcome.run_id, "play/transcript.json").read_text())
    assert transcript["evidence"] == {"adl": adl.run_id} and transcript["guess"] == "roman_concrete"
    assert transcript["description"] == outcome.description

    again = play("toy", "roman_concrete", ["adl"])
    assert again.reused and again.run_id == outcome.run_id and again.description == outcome.description

    with pytest.raises(TrackingError, match=r"no finished adl diff run of model=toy organism=cake_bake .*"
                                            r"run `diffgame run model=toy organism=cake_bake method=adl` first"):
        play("toy", "cake_bake", ["adl"])
    with pytest.raises(ConfigError, match=r"unknown agent 'oracle'; known: lens"):
        play("toy", "roman_concrete", ["adl"], agent="oracle")
    with pytest.raises(ConfigError, match=r"organism 'control' is not one the game draws"):
        play("toy", "control", ["adl"])

    # other tests may have made adl runs of other organisms in the session's zoo store: play this one by name
    result = CliRunner().invoke(app, ["play", "roman_concrete", "--method", "adl", "--tracking-uri", zoo_uri],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert outcome.run_id in result.output, result.output
    assert "accuracy 1.00 (1 organisms)" in result.output, result.output
