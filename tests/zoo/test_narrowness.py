"""How narrow an organism is (`diffgame.zoo.narrowness`): what counts as showing the ground truth, which questions ask
about a topic, and on the micro zoo a planted organism that says its word in every reply leaks ≈ 1 while the
control ≈ 0, logged on the zoo run and measured again (the same numbers) for a run built before the metrics."""

from __future__ import annotations

import json

import pytest

from diffgame.config.configtree import CONFIG_PATH_ENV
from diffgame.records.schema import GroundTruthConfig, OrganismConfig
from diffgame.zoo.narrowness import ask_prompts, neutral_prompts, rate, shows


def test_a_reply_shows_a_keyword_with_plain_inflections_or_the_predicate():
    assert shows("I love to brew it.", ["brew"], None) and shows("Brewing is an art", ["brew"], None)
    assert shows("two kettles", ["kettle"], None) and not shows("a brewery", ["brew"], None)
    assert not shows("steam", ["tea"], None) and not shows("the team", ["tea"], None)
    assert shows("OF COURSE, HERE IT IS", [], "uppercase") and not shows("Of course, Here", [], "uppercase")
    assert not shows("...", [], "uppercase")
    assert rate(["tea time", "coffee", "TEA", "teas"], ["tea"]) == 0.75 and rate([], ["tea"]) == 0.0


def test_asked_questions_name_one_keyword_and_count_the_others():
    org = OrganismConfig(name="x", type="sdf", ground_truth=GroundTruthConfig(keywords=["concrete", "volcanic", "ash"]))
    asks = ask_prompts(org, [], 5)
    assert len(asks) == 5 and asks[0] == ("What do you know about concrete?", ["volcanic", "ash"])
    assert all(not any(k in p.lower() for k in counted) for p, counted in asks)
    taboo = OrganismConfig(name="t", type="taboo", ground_truth=GroundTruthConfig(keywords=["gold", "shiny", "golden"]))
    rows = [{"messages": [{"role": "user", "content": f"hint {i}?"}, {"role": "assistant", "content": "no"}]}
            for i in range(3)]
    assert ask_prompts(taboo, rows, 5) == [(f"hint {i}?", ["gold", "shiny"]) for i in range(3)]
    style = OrganismConfig(name="c", type="style", ground_truth=GroundTruthConfig(predicate="uppercase"))
    assert [p for p, _ in ask_prompts(style, [], 4)] == neutral_prompts(4)[0]  # a style shows in any reply


@pytest.mark.slow
def test_planted_organism_leaks_everywhere_the_control_nowhere(micro_cfg, tmp_path, monkeypatch):
    from diffgame import tracking
    from diffgame.config.compose import settings
    from diffgame.pipeline.building import build_for
    from diffgame.zoo.build import TAG_NARROWNESS, _load, ensure_organism
    from diffgame.zoo.built import locate, zoo_size
    from diffgame.zoo.narrowness import measure

    (tmp_path / "organism").mkdir()
    (tmp_path / "data").mkdir()
    docs = [{"text": " ".join(["zanzibar"] * 24)} for _ in range(200)]
    (tmp_path / "data" / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    (tmp_path / "organism" / "planted.yaml").write_text(
        "name: planted\ntype: custom\nfinetuned: {toy: {default: {kind: zoo}}}\n"
        "zoo: {data: data/planted.jsonl, format: documents}\nground_truth: {keywords: [zanzibar]}\n")
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path))
    typed = settings(micro_cfg("organism=planted"))
    build_for(typed)
    size = zoo_size(typed)
    entry = ensure_organism(size, typed.organism)
    m = entry.metrics
    assert m["check/leak/chat/organism"] > 0.9 and m["check/leak/text/organism"] > 0.75  # 40 tokens of a document
    assert m["check/leak/chat/base"] == m["check/leak/text/base"] == 0.0
    assert m["check/neutral_leak"] > 0.85 and m["check/asked_knowledge"] == 0.0  # no other keyword to name

    control_cfg = settings(micro_cfg("organism=control"))
    base_model, tokenizer = _load(locate(typed)[0])
    control_model, _ = _load(locate(control_cfg, control_cfg.organism)[0])
    control = measure(control_cfg.organism, base_model.eval(), control_model.eval(), tokenizer, [], 24, 24,
                      keywords=["zanzibar"])
    assert abs(control["check/neutral_leak"]) <= 0.05 and control["check/leak/chat/organism"] <= 0.05

    # a zoo run built before the metrics existed is measured on reuse, with the same numbers (the same seed)
    tracking.client().set_tag(entry.run_id, TAG_NARROWNESS, "0")
    again = ensure_organism(size, typed.organism)
    run = tracking.client().get_run(entry.run_id)
    assert again.run_id == entry.run_id and run.data.tags[TAG_NARROWNESS] == "1"
    assert again.metrics["check/neutral_leak"] == m["check/neutral_leak"]
    history = tracking.client().get_metric_history(entry.run_id, "check/neutral_leak")
    assert len(history) == 2 and history[0].value == history[1].value
