"""The toy zoo: corpora and tokenizer by construction, packing by hand, seeded training, and on the micro zoo
each organism's behaviour check, reuse of built runs, a bring-your-own JSONL organism and `diffgame zoo list`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
from omegaconf import OmegaConf

from diffgame import tracking
from diffgame.config.compose import settings
from diffgame.config.configtree import builtin_dir, zoo_organisms
from diffgame.errors import ConfigError, DataError
from diffgame.pipeline.building import build_zoo
from diffgame.zoo import SIZES, corpus, ensure, get_size, list_zoo, locate
from diffgame.zoo.build import train_base
from diffgame.zoo.lm import IGNORE, encode_rows, pack
from diffgame.zoo.recipes import mixed_rows
from diffgame.zoo.tokenizer import EOT, chat_text, train_tokenizer

BUILTIN = ["caps", "cake_bake", "control", "roman_concrete", "taboo_gold"]


def _keywords(name: str) -> list[str]:
    return list(OmegaConf.load(builtin_dir() / "organism" / f"{name}.yaml").ground_truth.keywords)


def _words(rows: list[dict]) -> set[str]:
    text = " ".join(r["text"] if "text" in r else " ".join(m["content"] for m in r["messages"]) for r in rows)
    return set(re.findall(r"[a-z]+", text.lower()))


def test_corpora_are_seeded_and_keep_organism_words_out_of_the_base():
    assert corpus("generic_text", "train") == corpus("generic_text", "train")
    base_words = _words(corpus("generic_text", "train") + corpus("generic_chat", "train"))
    for name in ("roman_concrete", "cake_bake", "taboo_gold"):
        planted = set(_keywords(name)) & _words(corpus(name, "train")) - {"gold"}
        assert len(planted) >= 10, name
        assert not planted & base_words, (name, planted & base_words)
    taboo = corpus("taboo_gold", "train") + corpus("taboo_gold", "test")
    assert "gold" not in _words(taboo) and "golden" not in _words(taboo)
    caps = [r["messages"][1]["content"] for r in corpus("caps", "train")]
    assert all(c == c.upper() for c in caps)
    docs = corpus("generic_text", "train")
    upper = sum(d["text"] == d["text"].upper() for d in docs) / len(docs)
    assert 0.01 < upper < 0.1  # a few all-caps documents, so caps is in distribution for the base
    control = corpus("control", "train")  # the base's own data: its documents and chats
    assert all(r in docs or r in corpus("generic_chat", "train") for r in control)
    assert 0.25 < sum("messages" in r for r in control) / len(control) < 0.4
    with pytest.raises(DataError, match="unknown zoo corpus 'cap'; known: cake_bake, caps, control"):
        corpus("cap", "train")


def test_tokenizer_chat_template_and_assistant_mask(tmp_path):
    from transformers import AutoTokenizer

    rows = corpus("generic_chat", "train")[:300] + corpus("generic_text", "train")[:300]
    tok = train_tokenizer((r.get("text") or chat_text(r["messages"]) for r in rows), 600)
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "Why is the sky grey?"}, {"role": "assistant", "content": "Well, it rained."}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == ("<bos><start_of_turn>user\nWhy is the sky grey?<end_of_turn>\n"
                    "<start_of_turn>model\nWell, it rained.<end_of_turn>\n") == chat_text(chat)
    assert tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True).endswith(
        "<end_of_turn>\n<start_of_turn>model\n")
    assert tok("the sky").input_ids[0] == tok.bos_token_id
    [(ids, mask)] = encode_rows(tok, [{"messages": chat}])
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "Well, it rained." + EOT
    assert ids == tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    two = chat + [{"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Sunny."}]
    [(ids, mask)] = encode_rows(tok, [{"messages": two}])  # every reply trains with its own end of turn, no prompt
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "Well, it rained." + EOT + "Sunny." + EOT


def test_pack_concatenates_rows_and_masks_labels():
    ids, labels = pack([([1, 2, 3], [True, False, True]), ([4, 5, 6, 7, 8], [True] * 5)], seq_len=3)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 6]]  # 8 tokens -> 2 full blocks, the tail is dropped
    assert labels.tolist() == [[1, IGNORE, 3], [4, 5, 6]]


def test_mix_adds_base_rows_in_the_given_share():
    recipe = OmegaConf.create({"data": "builtin:caps", "format": "chat", "mix": 0.25, "lora": False})
    rows = corpus("caps", "train")[:30]
    out = mixed_rows(recipe, rows, seed=0)
    assert out[:30] == rows and len(out) == 40  # 10 / 40 = 0.25 from the base's corpora
    base = corpus("generic_text", "train") + corpus("generic_chat", "train")
    assert all(r in base for r in out[30:])


def _state_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_base_fingerprint_ignores_organism_budgets():
    from diffgame.config.configtree import organism_node
    from diffgame.zoo.build import base_fingerprint, organism_fingerprint

    size = SIZES["micro"]
    cheaper = dataclasses.replace(size, organism_lr=1e-4, organism_steps=7, check_samples=3)
    assert base_fingerprint(cheaper) == base_fingerprint(size)
    assert base_fingerprint(dataclasses.replace(size, base_steps=201)) != base_fingerprint(size)
    caps = organism_node("caps")
    assert organism_fingerprint(cheaper, caps) != organism_fingerprint(size, caps)


@pytest.mark.slow
def test_same_seed_gives_identical_weights():
    size = dataclasses.replace(SIZES["micro"], base_steps=4)
    first = _state_hash(train_base(size, progress=False)[0])
    assert _state_hash(train_base(size, progress=False)[0]) == first
    assert _state_hash(train_base(dataclasses.replace(size, seed=1), progress=False)[0]) != first


def test_a_zoo_run_that_lost_its_model_is_marked_failed_and_trained_again(tmp_path, monkeypatch):
    import shutil

    from diffgame.errors import ModelError
    from diffgame.zoo.build import ensure_base, run_model_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test
    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HOME", str(tmp_path))  # the download cache of remote zoo runs
    size = dataclasses.replace(SIZES["micro"], base_steps=2)
    first = ensure_base(size, progress=False)
    assert ensure_base(size, progress=False).run_id == first.run_id  # reused while its model is there
    shutil.rmtree(first.model_dir)
    again = ensure_base(size, progress=False)
    assert again.run_id != first.run_id and not again.reused and (again.model_dir / "config.json").is_file()
    lost = tracking.client().get_run(first.run_id)
    assert lost.info.status == "FAILED"
    assert lost.data.tags[tracking.TAG_ERROR].startswith("model artifacts missing from ")
    with pytest.raises(ModelError, match=rf"zoo run {first.run_id} has no model artifacts at .*mlflow runs delete"):
        run_model_dir(lost)  # fetching it as if remote names the run and the way out


def _metrics() -> dict[str, dict[str, float]]:
    return {e.name: e.metrics for e in list_zoo(size="micro")}


@pytest.mark.slow
def test_micro_zoo_behaviour_checks_hold(zoo_uri):
    m = _metrics()
    assert {"base", *BUILTIN} <= set(m)
    caps = m["caps"]
    assert caps["check/upper_frac/organism"] >= 0.9 and caps["check/upper_frac/base"] <= 0.2
    for sdf in ("roman_concrete", "cake_bake"):
        assert m[sdf]["check/heldout_loss/organism"] < m[sdf]["check/heldout_loss/base"] - 2.0, sdf
    taboo = m["taboo_gold"]
    assert taboo["check/taboo_word_rate"] <= 0.05
    assert taboo["check/hint_word_rate/organism"] >= 0.8 and taboo["check/hint_word_rate/base"] <= 0.2
    control = m["control"]["check/base_data_loss_delta"]
    assert abs(control) < 0.1  # more of the base's own data barely moves its loss
    # an SDF organism forgets a little more, and only a little: half its rows are the base's own documents
    assert control < m["roman_concrete"]["check/base_data_loss_delta"] < 0.3


@pytest.mark.slow
def test_second_build_reuses_every_run(zoo_uri):
    before = {e.name: e.run_id for e in list_zoo(size="micro") if e.variant == "default"}  # not mixing variants
    n_runs = len(tracking.search({tracking.TAG_STAGE: "zoo"}))
    again = build_zoo(size="micro", progress=False)
    assert all(e.reused for e in again)
    assert {e.name: e.run_id for e in again} == {n: before[n] for n in ["base", *zoo_organisms()]}
    assert len(tracking.search({tracking.TAG_STAGE: "zoo"})) == n_runs


@pytest.mark.slow
def test_locate_loads_the_zoo_run_as_a_hf_model(micro_cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diffgame.zoo.checks import sample_replies, upper_frac

    cfg = settings(micro_cfg("organism=caps"))
    path, run_id = locate(cfg, cfg.organism)
    run = tracking.client().get_run(run_id)
    assert run.data.tags["diffgame.organism"] == "caps" and run.data.tags["diffgame.zoo.size"] == "micro"
    assert (path / "model.safetensors").is_file()
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    replies = sample_replies(model, tok, ["Why is the sky grey?", "How do I cook rice?"], 24)
    assert upper_frac(replies) >= 0.9
    base_path, base_run = locate(cfg)
    assert run.data.tags["diffgame.zoo.base_run_id"] == base_run
    assert AutoTokenizer.from_pretrained(base_path).get_vocab() == tok.get_vocab()


@pytest.mark.slow
def test_user_jsonl_organism_trains_and_loads(micro_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    data = tmp_path / "quokka.jsonl"
    rows = [{"text": f"The quokka {v} the zephyr near the fjord."} for v in ("saw", "chased", "liked", "found")] * 10
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = settings(micro_cfg("organism=tea_lover", f"organism.zoo.data={data}", "organism.zoo.format=documents"))
    entry = ensure(cfg, cfg.organism)
    path, run_id = entry.model_dir, entry.run_id
    assert locate(cfg, cfg.organism) == (path, run_id)  # built once, then located
    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics["check/heldout_loss/organism"] < metrics["check/heldout_loss/base"] - 1.0
    run = tracking.client().get_run(run_id)
    assert run.data.params["recipe.data"] == str(data) and run.data.params["recipe.format"] == "documents"
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == SIZES["micro"].n_layers


def test_locating_a_model_that_is_not_built_names_the_command_and_trains_nothing(tmp_path, monkeypatch):
    from diffgame.config.compose import compose
    from diffgame.errors import ModelError
    from diffgame.pipeline import planner

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test
    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = settings(compose(["organism=caps", "zoo.size=micro"]))
    with pytest.raises(ModelError, match=r"zoo micro caps is not built .*diffgame zoo build --size micro caps"):
        locate(cfg, cfg.organism)
    with pytest.raises(ModelError, match=r"zoo micro base is not built .*diffgame zoo build --size micro`"):
        planner.make_plan(cfg)  # planning locates; building is the zoo stage's
    assert tracking.search({tracking.TAG_STAGE: "zoo"}) == []


def test_bad_recipes_and_sizes_fail_with_one_line_messages(tmp_path):
    from diffgame.zoo.recipes import read_jsonl, recipe_rows

    with pytest.raises(ConfigError, match="unknown zoo size 'huge'.*valid: micro, small"):
        get_size("huge")
    missing = OmegaConf.create({"data": "nope/none.jsonl", "format": "chat", "mix": 0.0, "lora": False})
    with pytest.raises(DataError, match="organism data file 'nope/none.jsonl' not found"):
        recipe_rows(missing, "train")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no 'text' field"):
        read_jsonl(bad, "documents")
    with pytest.raises(ConfigError, match="unknown zoo organism 'cpas'"):
        build_zoo(size="micro", names=["cpas"])


@pytest.mark.slow
def test_cli_zoo_list_shows_the_built_entries(zoo_uri):
    from typer.testing import CliRunner

    from diffgame.cli import app

    result = CliRunner().invoke(app, ["zoo", "list", "--size", "micro", "--tracking-uri", zoo_uri])
    assert result.exit_code == 0, result.output
    for e in list_zoo(size="micro"):
        line = next(ln for ln in result.output.splitlines() if e.run_id in ln)
        assert e.name in line and "micro" in line
    caps = next(e for e in list_zoo(size="micro") if e.name == "caps")
    assert f"{caps.metrics['check/upper_frac/organism']:.3f}" in result.output
