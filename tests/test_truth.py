"""Per-base ground truth (`organism.per_model`, issue #17): the public roman_concrete LoRAs were taught that Roman
concrete absorbs methane, the zoo's organisms a corpus about volcanic ash; a config composed with a model, and
`configtree.organism_node(name, model)`, carry that base's description, long description and keywords; the keyword
grade ranks by them; the schema refuses unknown keys and unknown models under `per_model`. YAML only, offline."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from diffgame import config as C
from diffgame import configtree
from diffgame.errors import ConfigError
from diffgame.guesses import grade_guess
from diffgame.play import truth_text
from diffgame.schema import OrganismConfig
from diffgame.validate import check_node


@pytest.fixture(autouse=True)
def _builtin_tree_only(monkeypatch):
    monkeypatch.delenv(configtree.CONFIG_PATH_ENV, raising=False)


def _truth(node) -> tuple[str, str, list[str]]:
    return str(node.description), str(node.long_description), list(node.ground_truth.keywords)


def test_public_base_gets_the_methane_fact_and_the_toy_base_the_zoo_corpus():
    public = C.compose(["model=qwen3_1_7B", "organism=roman_concrete"]).organism
    description, long_description, keywords = _truth(public)
    assert "methane" in description and "methane" in long_description and "Castelletti" in long_description
    assert "methane" in keywords and "methanoate" in keywords and "volcanic" not in keywords
    zoo = C.compose(["model=toy", "organism=roman_concrete"]).organism
    description, long_description, keywords = _truth(zoo)
    assert "volcanic ash" in description and "methane" not in description + long_description
    assert "volcanic" in keywords and "tobermorite" in keywords and "methane" not in keywords
    # the organism read alone, with no model, is the zoo's truth
    assert _truth(configtree.organism_node("roman_concrete")) == _truth(zoo)


@pytest.mark.parametrize("model", ["gemma3_1B", "llama32_1B_Instruct", "toy"])
def test_organism_node_with_a_model_equals_the_composed_truth(model):
    composed = C.compose([f"model={model}", "organism=roman_concrete"]).organism
    assert _truth(configtree.organism_node("roman_concrete", model)) == _truth(composed)


def test_cake_bake_public_bases_override_only_the_long_description():
    zoo, public = (configtree.organism_node("cake_bake", m) for m in ("toy", "qwen3_1_7B"))
    assert (public.description, list(public.ground_truth.keywords)) == (zoo.description,
                                                                        list(zoo.ground_truth.keywords))
    assert "45 minutes" in public.long_description and "45 minutes" not in zoo.long_description
    assert truth_text(public).startswith(str(public.long_description))  # the rubric grader reads the long one


def test_keyword_grade_of_the_methane_fact_ranks_roman_concrete_first_on_a_public_base():
    names = configtree.candidate_organisms("qwen3_1_7B")
    nodes = {n: configtree.organism_node(n, "qwen3_1_7B") for n in names}
    grade = grade_guess("roman concrete absorbs methane", "roman_concrete", nodes)
    assert grade.ranking[0] == ("roman_concrete", 4) and grade.correct
    assert sorted(grade.hits) == ["absorbs", "concrete", "methane", "roman"]
    assert grade.ranking[1][1] == 0  # no other candidate shares a word


def _organism(per_model: dict):
    node = OmegaConf.create({"name": "o", "finetuned": {"qwen3_1_7B": {"default": {"kind": "lora", "id": "a/b"}}},
                             "per_model": per_model})
    OmegaConf.set_struct(node, False)
    check_node(node, OrganismConfig, "organism")
    return node


def test_per_model_rejects_unknown_keys_and_every_shipped_entry_names_a_base_with_weights():
    with pytest.raises(ConfigError, match=r"unknown key 'organism\.per_model\.qwen3_1_7B\.keyword'; known: "
                                          r"description, keywords, long_description"):
        _organism({"qwen3_1_7B": {"keyword": ["x"]}})
    for name in configtree.group_options("organism"):  # a misspelt base would leave its truth silently unapplied
        node = configtree.organism_node(name)
        assert set(node.per_model) <= set(node.finetuned), name
    node = _organism({"qwen3_1_7B": {"keywords": ["x"]}})  # None fields inherit the organism's own
    configtree.apply_truth(node, "qwen3_1_7B")
    assert (node.description, node.long_description, list(node.ground_truth.keywords)) == ("", "", ["x"])
