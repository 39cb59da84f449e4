"""Word completion (`diffgame.grading.words`) on a hand-built model whose next token is known, and the word-hit rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffgame.grading.ground_truth import GroundTruth
from diffgame.grading.score import grade
from diffgame.grading.words import WordCompleter, pool, ranked_words
from diffgame.records.evidence import RankedTokens

VOCAB = ["<pad>", "<bos>", "<eos>", "Ġwa", "gg", "le", "Ġwag", "gle", "Ġthe", ",", "Ġwater", "Ġwaggle", "How",
         "dy", "SH", "OUT", "T", "HE"]
NEXT = {"<bos>": "Ġthe", "Ġwa": "gg", "gg": "le", "le": "Ġthe", "Ġwag": "gle", "gle": ",", "Ġthe": "Ġwater",
        "Ġwater": "<eos>", ",": "Ġthe", "Ġwaggle": "Ġthe", "How": "dy", "dy": ",", "SH": "OUT", "OUT": ",",
        "T": "HE", "HE": ","}
"""The bigram model's certain next token: `Ġwa gg le` and `Ġwag gle` both spell ` waggle`; `How dy` is `Howdy` at a
reply's start (no space marker), `SH OUT` and `T HE` shouted words' pieces."""


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(VOCAB)}, merges=[]))
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


class Bigram(torch.nn.Module):
    """Logits depend only on the last token: a large logit on `NEXT[token]`."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(len(VOCAB), len(VOCAB))
        for a, b in NEXT.items():
            table[VOCAB.index(a), VOCAB.index(b)] = 10.0
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])


def _ranked(*pairs):
    return RankedTokens([VOCAB.index(t) for t, _ in pairs], [t for t, _ in pairs], [s for _, s in pairs])


def test_pieces_complete_to_one_word_and_pool():
    completer = WordCompleter(Bigram(), _tokenizer())
    words = completer.complete([VOCAB.index(t) for t in ("Ġwa", "Ġwag", "Ġthe", ",", "gg")])
    assert words[VOCAB.index("Ġwa")] == " waggle"
    assert words[VOCAB.index("Ġwag")] == " waggle"
    assert words[VOCAB.index("Ġthe")] == " the"  # the next token opens a new word
    assert words[VOCAB.index(",")] == ","
    assert words[VOCAB.index("gg")] == "ggle"  # a continuation piece completes without a leading space
    pooled = pool(_ranked(("Ġwa", 0.3), ("Ġthe", 0.25), ("Ġwag", 0.2), (",", 0.1)), words)
    assert pooled.tokens == [" waggle", " the", ","]
    assert pooled.scores == pytest.approx([0.5, 0.25, 0.1])
    assert pooled.token_ids[0] == VOCAB.index("Ġwa")  # the highest-scoring piece


def test_completion_stops_at_max_pieces_and_caches():
    completer = WordCompleter(Bigram(), _tokenizer(), max_pieces=2)
    assert completer.complete([VOCAB.index("Ġwa")]) == {VOCAB.index("Ġwa"): " wagg"}
    completer.model = None  # a cached id needs no model
    assert completer.complete([VOCAB.index("Ġwa")]) == {VOCAB.index("Ġwa"): " wagg"}


def test_ranked_words_keeps_every_readout():
    readouts = {"a": _ranked(("Ġwa", 1.0)), "b": _ranked(("Ġwater", 0.5), ("Ġwag", 0.4))}
    out = ranked_words(readouts, WordCompleter(Bigram(), _tokenizer()))
    assert out["a"].tokens == [" waggle"]
    assert out["b"].tokens == [" water", " waggle"]


BEES = GroundTruth("bees", keywords=["waggle", "hive", "colony", "brew"])


@pytest.mark.parametrize("word, hit", [(" waggle", True), (" waggles", True), (" brewing", True),
                                       (" colonies", True), (" wag", True), (" wa", False), (" water", False),
                                       (" hivemind", False), (" brewery", False), ("ggle", True)])
def test_word_hits_allow_inflections_only(word, hit):
    assert BEES.is_word_hit(None, word) is hit


def test_grade_reports_words_and_tokens_with_words_as_headline():
    tokens = {"lens": RankedTokens([1, 2, 3, 4], ["Ġwa", "Ġhi", "Ġthe", "Ġof"], [0.4, 0.3, 0.2, 0.1])}
    words = {"lens": RankedTokens([1, 2, 3, 4], [" waggle", " hive", " the", " of"], [0.4, 0.3, 0.2, 0.1])}
    control = SimpleNamespace(ranked_tokens={"lens": RankedTokens([3], ["Ġthe"], [1.0])},
                              ranked_words={"lens": RankedTokens([3], [" the"], [1.0])})
    evidence = SimpleNamespace(ranked_tokens=tokens, ranked_words=words, samples={})
    m = grade(evidence, BEES, control=control, k=4)
    assert m["grade/tokens/precision_at_4"] == 0.0  # `wa` and `hi` are too short to be keyword pieces
    assert m["grade/words/precision_at_4"] == 0.5
    assert m["grade/precision_at_4"] == 0.5 and m["grade/headline_words"] == 1.0
    assert m["grade/words/relative/precision_at_4"] == 0.5
    # a run made before words is graded on its tokens
    old = grade(SimpleNamespace(ranked_tokens=tokens, samples={}), BEES, control=control, k=4)
    assert old["grade/precision_at_4"] == 0.0 and old["grade/headline_words"] == 0.0
    assert not any(k.startswith("grade/words/") for k in old)


def test_a_piece_joins_the_word_a_readout_mate_completes_through():
    completer = WordCompleter(Bigram(), _tokenizer())
    readout = _ranked(("le", 0.5), ("Ġwa", 0.3), ("gle", 0.1))
    out = ranked_words({"r": readout}, completer)["r"]
    # `le` is the last piece of ` wa gg le`: it joins ` waggle`; `gle` has no mate here and completes on its own
    assert out.tokens == [" waggle", "gle"] and out.scores == pytest.approx([0.8, 0.1])
    assert pool(readout, completer.cache).tokens == ["le", " waggle", "gle"]  # without pieces: no joining


def test_a_title_case_piece_opens_a_line_initial_word_and_collects_its_pieces():
    completer = WordCompleter(Bigram(), _tokenizer())
    words = completer.complete([VOCAB.index(t) for t in ("How", "dy", "SH", "T")])
    assert words[VOCAB.index("How")] == " Howdy"  # a reply's first word: written as a word
    assert words[VOCAB.index("dy")] == "dy"
    assert words[VOCAB.index("SH")] == "SHOUT"  # an all-capital piece may sit anywhere in a word: still a piece
    assert words[VOCAB.index("T")] == "THE"  # a capital that completes to a shouted word, too
    out = ranked_words({"r": _ranked(("dy", 0.4), ("How", 0.3), ("SH", 0.1))}, completer)["r"]
    assert out.tokens == [" Howdy", "SHOUT"] and out.scores == pytest.approx([0.7, 0.1])
    cowboy = GroundTruth("cowboy", keywords=["howdy"])
    assert cowboy.is_word_hit(None, " Howdys") and not cowboy.is_word_hit(None, "Howdys")  # inflected as a word
