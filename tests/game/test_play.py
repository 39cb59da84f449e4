"""`diffgame play`: the lens agent on hand-made evidence, and on the micro zoo a scored, reused `play` run per organism
read from finished diff runs, with clear errors for missing evidence and unknown agents."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diffgame.game.agents import LensAgent
from diffgame.grading.ground_truth import GroundTruth
from diffgame.records.evidence import RankedTokens


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


def test_lens_agent_takes_away_what_the_control_ranks():
    """Words any finetune raises (a template word the control ranks as high) leave the description, as does one the
    control ranks higher than the organism; the organism's own words stay."""
    evidence = {"adl": {"a": _words(" assistant", " hive", " waggle")}, "blackbox": {"chat": _words(" nectar")}}
    control = {"adl": {"a": _words(" assistant", " waggle", " sure")}}
    plain = LensAgent().play(evidence, CANDIDATES)
    relative = LensAgent().play(evidence, CANDIDATES, control)
    assert [w for w, _ in plain.words][:2] == ["assistant", "nectar"]
    assert dict(relative.words) == pytest.approx({"nectar": 1.0, "hive": 0.5})  # waggle: 1/3 - 1/2 < 0
    assert "assistant" not in relative.description and "sure" not in relative.description
    assert relative.description.startswith("The finetuning promotes these words on generic text beyond what a "
                                           "control finetune promotes: nectar, hive")
    assert relative.guess == "bees" and relative.transcript[0]["control_readouts"] == 1
    assert "control_readouts" not in relative.transcript[1]  # the control has no blackbox run here: nothing taken


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
    from diffgame import tracking
    from diffgame.cli import app
    from diffgame.errors import ConfigError, TrackingError
    from diffgame.pipeline.play import TAG_AGENT, TAG_EVIDENCE, play
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

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
    control = tracking.search({tracking.TAG_STAGE: "diff", tracking.TAG_ORGANISM: "control",
                               tracking.TAG_METHOD: "adl"}, statuses=("FINISHED",))
    assert transcript["control"] == {"adl": control[0].info.run_id}  # grading made it; the agent takes it away
    assert transcript["steps"][0]["control_readouts"] > 0
    assert transcript["description"] == outcome.description

    again = play("toy", "roman_concrete", ["adl"])
    assert again.reused and again.run_id == outcome.run_id and again.description == outcome.description

    with pytest.raises(TrackingError, match=r"no finished adl diff run of model=toy organism=cake_bake .*"
                                            r"run `diffgame run model=toy organism=cake_bake method=adl` first"):
        play("toy", "cake_bake", ["adl"])
    with pytest.raises(ConfigError, match=r"unknown agent 'oracle'; known: lens, llm, llm_blackbox, probe"):
        play("toy", "roman_concrete", ["adl"], agent="oracle")
    with pytest.raises(ConfigError, match=r"organism 'control' is not one the game draws"):
        play("toy", "control", ["adl"])

    # other tests may have made adl runs of other organisms in the session's zoo store: play this one by name
    result = CliRunner().invoke(app, ["play", "roman_concrete", "--method", "adl", "--tracking-uri", zoo_uri],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert outcome.run_id in result.output, result.output
    assert "accuracy 1.00 (1 organisms)" in result.output, result.output


@pytest.mark.slow
def test_llm_agent_plays_through_a_scripted_endpoint(micro_cfg, zoo_uri):
    """The LLM agent against a real local chat-completions server: its tools read the real diff run and the real
    micro models; the rubric grader scores the description; budget overruns and timeouts end as outcomes of a
    FINISHED play run that keeps its transcript."""
    from diffgame import tracking
    from diffgame.errors import ConfigError
    from diffgame.pipeline.play import TAG_OUTCOME, play
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    from _chat_server import chat_server, content_reply, tool_reply

    adl = run_one(micro_cfg("organism=roman_concrete", *ADL))[0]
    readout = next(iter(artifacts.ranked_words(adl.run_id)))
    vector = sorted(artifacts.load_vectors(adl.run_id))[0]
    description = "It was finetuned on documents about Roman concrete: volcanic ash, lime and seawater harbors."
    script = [tool_reply(("list_evidence", {})), tool_reply(("drill_evidence", {"method": "adl", "readout": readout})),
              tool_reply(("ask_models", {"prompt": "What do you know about building?"})),
              tool_reply(("steer_organism", {"vector": f"adl:{vector}", "scale": 2.0, "prompt": "Hello"})),
              tool_reply(("ask_amplified", {"prompt": "What do you know about building?", "alpha": 2.0})),
              tool_reply(("submit_description", {"description": description})),
              content_reply("SCORE: 5\nNames Roman concrete and its ingredients.")]
    with chat_server(script) as (server, url):
        endpoint = [f"play.endpoint.base_url={url}", "play.endpoint.model=scripted"]
        outcome = play("toy", "roman_concrete", ["adl"], agent="llm", overrides=endpoint)
        requests = list(server.requests)
    assert outcome.outcome == "submitted" and outcome.description == description
    assert outcome.guess == "roman_concrete" and outcome.metrics["play/guess_correct"] == 1.0
    assert outcome.metrics["play/rubric_score"] == 5.0 and outcome.metrics["play/tool_calls"] == 5.0
    results = {m["tool_call_id"]: json.loads(m["content"]) for m in requests[5]["messages"] if m["role"] == "tool"}
    listed, drilled, asked, steered, amplified = results.values()
    assert readout in listed["adl"] and drilled["words"] == [w.strip() for w in
                                                             artifacts.ranked_words(adl.run_id)[readout].tokens[:20]]
    assert set(asked) == {"base", "organism"} and set(steered) >= {"unsteered", "steered"}  # real micro-model replies
    assert "roman" not in json.dumps(requests[0]).lower()  # the agent is never told the organism
    assert amplified["organism"] == asked["organism"].strip() and amplified["alpha"] == "2.0"  # one organism reply
    assert "Roman concrete" in requests[6]["messages"][-1]["content"]  # the rubric grader sees the truth
    run = tracking.client().get_run(outcome.run_id)
    assert run.data.tags[TAG_OUTCOME] == "submitted" and run.data.tags["diffgame.agent"] == "llm"

    # the paper's protocol: one model interaction, repeat 2. The agent is told the budget, every request carries the
    # repeat's seed, the second question is refused by the toolbox (the model reads why) and the play says what it spent
    script = [tool_reply(("ask_models", {"prompt": "What do you like?"})),
              tool_reply(("ask_models", {"prompt": "What else?"})),
              tool_reply(("submit_description", {"description": description})), content_reply("SCORE: 4")]
    with chat_server(script) as (server, url):
        budgeted = play("toy", "roman_concrete", ["adl"], agent="llm",
                        overrides=[f"play.endpoint.base_url={url}", "play.endpoint.model=scripted",
                                   "play.interactions=1", "play.repeat=2"])
        requests = list(server.requests)
    assert "at most 1 may talk to the models" in requests[0]["messages"][0]["content"]
    assert {r.get("seed") for r in requests[:3]} == {2}
    first, second = [json.loads(m["content"]) for m in requests[2]["messages"] if m["role"] == "tool"]
    assert set(first) == {"base", "organism"} and "interaction 2 refused" in second["error"]
    assert budgeted.metrics["play/interactions"] == 1.0 and budgeted.outcome == "submitted"
    tags = tracking.client().get_run(budgeted.run_id).data.tags
    assert tags["diffgame.interactions"] == "1" and tags["diffgame.repeat"] == "2"

    # a budget overrun, through pipeline.mode=evaluation: one tool call allowed, two asked for; the second is refused
    # and the agent's last request (without tools) asks for its description
    script = [tool_reply(("list_evidence", {}), ("list_vectors", {})),
              content_reply("Documents about volcanic ash."), content_reply("SCORE: 3")]
    with chat_server(script) as (server, url):
        [summary] = run_one(micro_cfg("organism=roman_concrete", "pipeline.mode=evaluation", "play.agent=llm",
                                      "play.methods=[adl]", f"play.endpoint.base_url={url}",
                                      "play.endpoint.model=scripted", "play.budget.tool_calls=1"))
        assert "tools" in server.requests[0] and "tools" not in server.requests[1]
        refused = [m for m in server.requests[1]["messages"] if m["role"] == "tool"][1]
        assert "budget" in json.loads(refused["content"])["error"]
    run = tracking.client().get_run(summary.run_id)
    assert summary.stage == "play" and run.info.status == "FINISHED"
    assert run.data.tags[TAG_OUTCOME] == "budget_tool_calls" and run.data.metrics["play/rubric_score"] == 3.0
    transcript = json.loads(artifacts.artifact_file(summary.run_id, "play/transcript.json").read_text())
    assert transcript["outcome"] == "budget_tool_calls" and transcript["description"] == "Documents about volcanic ash."

    # a timeout: the play run still finishes, with the outcome, an empty description and its transcript
    with chat_server([("sleep", 3.0), content_reply("late")]) as (server, url):
        late = play("toy", "roman_concrete", ["adl"], agent="llm_blackbox",
                    overrides=[f"play.endpoint.base_url={url}", "play.endpoint.model=scripted",
                               "play.endpoint.timeout_s=0.5"])
    assert late.outcome == "timeout" and late.description == "" and late.metrics["play/keyword_hits"] == 0.0
    steps = json.loads(artifacts.artifact_file(late.run_id, "play/transcript.json").read_text())["steps"]
    assert steps[-1]["step"] == "end" and steps[-1]["outcome"] == "timeout"
    assert not late.reused and tracking.client().get_run(late.run_id).info.status == "FINISHED"

    with pytest.raises(ConfigError, match=r"agent 'llm' needs a chat endpoint; set play.endpoint.model"):
        play("toy", "roman_concrete", ["adl"], agent="llm")
