"""Bring-your-own organisms from seeded templates (`diffgame.zoo.byo`): deterministic files, and on the micro zoo a
nonce-word organism the tokenizer never saw is read as words, identified, and a mixed chat organism keeps generic text."""

from __future__ import annotations

import json

import pytest

from diffgame.config.configtree import CONFIG_PATH_ENV
from diffgame.grading.ground_truth import GroundTruth
from diffgame.zoo.byo import DOMAINS, STYLES, chat_organism, documents_organism, generic_words


def test_same_seed_same_files_and_no_generic_keywords(tmp_path):
    a, b = documents_organism(3), documents_organism(3)
    assert a.rows == b.rows and a.config == b.config
    assert documents_organism(4).rows != a.rows
    generic = generic_words()
    for org in (a, chat_organism(3), documents_organism(3, nonce=True), chat_organism(3, nonce=True)):
        keywords = org.config["ground_truth"]["keywords"]
        assert keywords and not set(keywords) & generic, keywords
        path = org.write(tmp_path)
        assert path.read_text().startswith("# written by scripts/make_byo_organisms.py")
        rows = [json.loads(line) for line in (tmp_path / "data" / f"{org.name}.jsonl").read_text().splitlines()]
        assert rows == org.rows
    assert a.config["ground_truth"]["keywords"][0] in DOMAINS[a.name.split("_")[2]]
    assert chat_organism(3).config["ground_truth"]["keywords"][0] in STYLES[chat_organism(3).name.split("_")[2]]
    # the two organisms of one seed do not share nonce words (each must be identifiable)
    docs, chat = documents_organism(5, nonce=True), chat_organism(5, nonce=True)
    assert not set(docs.config["ground_truth"]["keywords"]) & set(chat.config["ground_truth"]["keywords"])


def test_generated_organism_composes_and_validates(tmp_path, monkeypatch):
    from diffgame.config.compose import compose
    from diffgame.zoo.recipes import validate_data

    org = chat_organism(2)
    org.write(tmp_path)
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path))
    cfg = compose([f"organism={org.name}"])
    validate_data(cfg.organism.zoo)
    assert cfg.organism.zoo.mix == 0.5 and list(cfg.organism.ground_truth.keywords) == \
        org.config["ground_truth"]["keywords"]


ADL = ("method=adl", "method.adl.max_samples=64", "method.adl.steering_prompts=0", "method.adl.causal_samples=0",
       "method.adl.patchscope_scales=[]")


def _named(words, top5: list[str]) -> set[str]:
    """Which of `top5` the first 20 words of a readout name (a word hit on each keyword alone)."""
    return {kw for kw in top5 for i, w in zip(words.token_ids[:20], words.tokens[:20])
            if GroundTruth("x", [kw]).is_word_hit(None, w)}


@pytest.mark.slow
def test_nonce_organism_is_read_as_words_and_identified(micro_cfg, tmp_path, monkeypatch):
    from diffgame import tracking
    from diffgame.config.compose import settings
    from diffgame.models.loading import load_tokenizer
    from diffgame.pipeline.building import build_for
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts
    from diffgame.zoo.pairs import resolve_pair

    organism = documents_organism(11, nonce=True)
    organism.write(tmp_path)
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path))
    top5 = organism.config["ground_truth"]["keywords"][:5]
    cfg = micro_cfg(f"organism={organism.name}", *ADL)
    typed = settings(cfg)
    build_for(typed)  # its zoo model, before it is located
    tok = load_tokenizer(resolve_pair(typed).base, typed.model)
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) >= 2 for w in top5)  # never seen whole

    row = run_one(cfg)[0]
    metrics = tracking.client().get_run(row.run_id).data.metrics
    words = artifacts.ranked_words(row.run_id)
    named = max((_named(w, top5) for w in words.values()), key=len)
    assert len(named) >= 3, {k: w.tokens[:20] for k, w in words.items()}
    assert metrics["grade/identification_rank"] == 1 and metrics["grade/headline_words"] == 1

    control = run_one(micro_cfg("organism=control", *ADL))[0]
    control_words = artifacts.ranked_words(control.run_id)
    assert max(len(_named(w, top5)) for w in control_words.values()) <= 1


@pytest.mark.slow
def test_mixed_chat_organism_keeps_generic_text(micro_cfg, tmp_path, monkeypatch):
    from diffgame import tracking
    from diffgame.pipeline.building import build_zoo

    organism = chat_organism(11, nonce=True)  # zoo.mix 0.5: half its rows are the base's own documents
    organism.write(tmp_path)
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path))
    micro_cfg()  # points tracking at the micro zoo store
    entry = next(e for e in build_zoo(size="micro", names=[organism.name], progress=False) if e.name == organism.name)
    m = tracking.client().get_run(entry.run_id).data.metrics
    assert m["check/heldout_loss/organism"] < m["check/heldout_loss/base"] / 2  # it learned its style
    assert m["check/generic_loss_ratio"] <= 1.10 and m["check/generic_kept"] == 1.0, m
