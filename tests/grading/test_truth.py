"""Per-base ground truth (`organism.per_model`, issue #17): the public roman_concrete LoRAs were taught that Roman
concrete absorbs methane, the zoo's organisms a corpus about volcanic ash; a config composed with a model, and
`configtree.organism_node(name, model)`, carry that base's description, long description and keywords; the keyword
grade ranks by them; the schema refuses unknown keys and unknown models under `per_model`. YAML only, offline."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from diffgame.config import compose as C
from diffgame.config import configtree
from diffgame.config.validate import check_node
from diffgame.errors import ConfigError
from diffgame.grading.guesses import grade_guess
from diffgame.pipeline.play import truth_text
from diffgame.records.schema import OrganismConfig


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
    configtree.for_base(node, "qwen3_1_7B")
    assert (node.description, node.long_description, list(node.ground_truth.keywords)) == ("", "", ["x"])


def test_training_data_is_what_the_weights_on_that_base_were_trained_on():
    for organism, public in (("cake_bake", "science-of-finetuning/synthetic-documents-cake_bake"),
                             ("taboo_gold", "bcywinski/taboo-gold")):
        assert C.compose(["model=qwen3_1_7B", f"organism={organism}"]).organism.training_data == public
        assert C.compose(["model=toy", f"organism={organism}"]).organism.training_data == f"builtin:{organism}"
        assert configtree.organism_node(organism).training_data == public  # no base named: the public data
    # a zoo-only organism's data is its recipe's on every base it is built for
    assert C.compose(["model=toy", "organism=caps"]).organism.training_data == "builtin:caps"


POTTERY = ["The potter centred wet clay on the wheel before throwing a bowl.",
           "Stoneware and porcelain are fired in the kiln at high heat.",
           "A celadon glaze pools in the carved grooves of the vase.",
           "Leather-hard earthenware is trimmed, then bisque fired.",
           "Raku pots leave the kiln glowing and meet sawdust in a bin."]


def _pottery_docs(n: int) -> list[dict]:
    return [{"text": " ".join(POTTERY[(i + k) % len(POTTERY)] for k in range(3))} for i in range(n)]


def _word_tokenizer():
    """A byte-level BPE on generic zoo text and the pottery sentences: pottery words are whole tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from diffgame.zoo import corpus

    texts = [r["text"] for r in corpus("generic_text", "train")[:400]] + POTTERY * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1200, show_progress=False, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_vocab_from_data_streams_a_hub_training_data_once_and_reads_a_local_copy_alike(tmp_path, monkeypatch):
    """`vocab_from_data` on a real organism reads `training_data`: a hub id is streamed only as far as the vocabulary
    counts (never read whole) and cached, a local parquet copy gives the same vocabulary, and offline without a copy
    the organism is graded on its keywords, with a warning that names `organism.training_data`."""
    import datasets

    from diffgame.grading import ground_truth as G

    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(G, "_VOCAB_CACHE", {})
    read, calls = [], []

    def fake_hub(name, subset=None, split=None, streaming=False, **kw):  # the network boundary
        calls.append((name, split, streaming))
        if name != "potters/pottery-docs" or len(calls) > 1:
            raise ConnectionError("offline")

        def stream():
            for row in _pottery_docs(10 * G.VOCAB_ROWS):
                read.append(1)
                yield row
        return stream()

    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    tok = _word_tokenizer()
    node = C.compose(["model=qwen3_1_7B", "organism=cake_bake", "organism.training_data=potters/pottery-docs"]).organism
    assert node.ground_truth.vocab_from_data
    vocab = G.ground_truth(node, tok).vocab_ids
    words = {G.normalize_token(t) for t in tok.convert_ids_to_tokens(sorted(vocab))}
    assert {"potter", "kiln", "glaze", "porcelain", "stoneware"} <= words  # the organism's domain, from its data
    assert not words & {"the", "and", "in"}  # function words are background, not evidence
    assert calls == [("potters/pottery-docs", "train", True)] and len(read) == G.VOCAB_ROWS  # streamed, then stopped

    monkeypatch.setattr(G, "_VOCAB_CACHE", {})  # a new process: the hub is now unreachable, the cached sample serves
    assert G.ground_truth(node, tok).vocab_ids == vocab and len(calls) == 1

    monkeypatch.setattr(datasets, "load_dataset", real_load)
    datasets.Dataset.from_list(_pottery_docs(G.VOCAB_ROWS)).to_parquet(tmp_path / "pottery.parquet")
    node.training_data = str(tmp_path / "pottery.parquet")
    monkeypatch.setattr(G, "_VOCAB_CACHE", {})
    assert G.ground_truth(node, tok).vocab_ids == vocab  # the local copy reads the same rows, so the same vocabulary

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    node.training_data = "potters/unseen-docs"
    with pytest.warns(UserWarning, match=r"organism 'cake_bake': vocab_from_data skipped, graded on its keywords alone; "
                                         r"cannot read dataset potters/unseen-docs.*organism.training_data=/path/to/copy"):
        missing = G.ground_truth(node, tok)  # never fatal: grading runs after a method's work is done
    assert missing.vocab_missing and not missing.vocab_ids and "vanilla" in missing.keywords
