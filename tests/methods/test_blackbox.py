"""The black-box baseline: words split and cased as documented; the Fightin'-Words log-odds worked out by hand on
planted counts (a word only the organism writes ranks first with its hand-computed z, words both write equally
score 0, the order is deterministic); ranked words are graded as whole words; batched, left-padded sampling equals
one prompt at a time and is seeded; and on the micro zoo the organism's replies name its topic where the
control's do not."""

import math
import random
from collections import Counter

import pytest
import torch

from diffgame.errors import ConfigError
from diffgame.grading.ground_truth import GroundTruth
from diffgame.methods.blackbox import BlackboxConfig
from diffgame.methods.sampling import log_odds, ranked_words, words
from diffgame.models.generation import sample

from _tiny_models import make_tokenizer


def test_words_split_on_punctuation_and_lower_case_but_keep_shouting():
    text = "Hello, WORLD! it's a TEST_case; I paid 42 Euros."
    assert words(text) == ["hello", "WORLD", "it", "s", "a", "TEST", "case", "i", "paid", "42", "euros"]
    assert words(text, keep_caps=False) == ["hello", "world", "it", "s", "a", "test", "case", "i", "paid", "42",
                                            "euros"]


ORGANISM = Counter({"the": 100, "cat": 50, "concrete": 30, "dog": 18, "lime": 2})
BASE = Counter({"the": 100, "cat": 50, "dog": 18, "mat": 30, "lime": 2})  # the same total (200) as ORGANISM


def test_log_odds_by_hand():
    table = log_odds(ORGANISM, BASE, prior=1.0, min_count=3).set_index("word")
    assert list(table.index) == ["concrete", "cat", "dog", "the"]  # ties at z = 0 break by word; `lime` < min_count
    # concrete: alpha = 30 (its pooled count), alpha_0 = 400; delta = log(60/540) - log(30/570) = log(19/9);
    # var = 1/60 + 1/30 = 0.05
    assert table.loc["concrete", "delta"] == pytest.approx(math.log(19 / 9))
    assert table.loc["concrete", "z"] == pytest.approx(math.log(19 / 9) / math.sqrt(0.05))
    assert (table.loc["concrete", "organism"], table.loc["concrete", "base"]) == (30, 0)
    for word in ("the", "cat", "dog"):  # used equally by both models
        assert table.loc[word, "z"] == pytest.approx(0.0, abs=1e-9)
    assert "mat" not in table.index  # only the base's words are never evidence for the organism


def test_log_odds_is_deterministic_and_a_stronger_prior_shrinks_the_log_odds():
    items = list(ORGANISM.items())
    random.Random(0).shuffle(items)
    shuffled = log_odds(Counter(dict(items)), BASE, min_count=3)
    assert shuffled.equals(log_odds(ORGANISM, BASE, min_count=3))
    delta = [log_odds(ORGANISM, BASE, prior=p).set_index("word").loc["concrete", "delta"] for p in (0.1, 1, 10)]
    assert delta[0] > delta[1] > delta[2] > 0


def test_ranked_words_are_graded_as_whole_words():
    tok = make_tokenizer()
    table = log_odds(Counter({"concrete": 30, "water": 30, "THE": 30, "the": 5}), Counter({"the": 60}), min_count=3)
    ranked = ranked_words(table, tok, top_k=10)
    assert sorted(ranked.tokens) == [" THE", " concrete", " water"]  # `the` (z < 0) is no evidence
    assert ranked.token_ids == [tok(t, add_special_tokens=False)["input_ids"][0] for t in ranked.tokens]
    assert ranked.scores == sorted(ranked.scores, reverse=True)
    roman = GroundTruth("roman_concrete", keywords=["concrete", "seawater", "pantheon"])
    hit = dict(zip(ranked.tokens, (roman.is_hit(i, t) for i, t in zip(ranked.token_ids, ranked.tokens))))
    assert hit == {" concrete": True, " water": False, " THE": False}  # `water` is no word start of `seawater`
    caps = GroundTruth("caps", predicate="uppercase")
    assert [caps.is_hit(i, t) for i, t in zip(ranked.token_ids, ranked.tokens)] == [t == " THE" for t in ranked.tokens]


@pytest.mark.parametrize("overrides, message", [
    ({"n_prompts": 0}, r"^method.blackbox.n_prompts must be >= 1, got 0$"),
    ({"temperature": -1.0}, r"^method.blackbox.temperature must be >= 0 \(0: greedy\), got -1.0$"),
    ({"prior": 0.0}, r"^method.blackbox.prior must be > 0, got 0.0$"),
    ({"seed": -1}, r"^method.blackbox.seed must be >= 0 \(null: the run's seed\), got -1$"),
    ({"chat_dataset": None, "text_dataset": None}, r"chat_dataset and method.blackbox.text_dataset must not both"),
])
def test_config_checks_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        BlackboxConfig(**overrides)
    assert (BlackboxConfig(temperature=0.0).replies_per_prompt, BlackboxConfig().replies_per_prompt) == (1, 4)


def _tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(conf).eval()


def test_batched_sampling_equals_one_prompt_at_a_time_and_is_seeded():
    tok = make_tokenizer()
    model = _tiny_model(tok)
    prompts = [tok(t)["input_ids"] for t in ("the cat", "roman concrete set in seawater and", "hello", "i am fine")]
    greedy = [sample(None, model, tok, prompts, 0.0, 1, 12, temperature=0.0, batch_size=b).texts for b in (1, 4)]
    assert greedy[0] == greedy[1] and all(len(r) == 1 for r in greedy[0])
    assert any(r[0] for r in greedy[0])
    sampled = [sample(None, model, tok, prompts, 0.0, 3, 12, temperature=1.0, seed=s, batch_size=2).texts
               for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert [len(r) for r in sampled[0]] == [3] * len(prompts)


# --- micro zoo -------------------------------------------------------------------------------------
SMALL = ("method=[blackbox]", "method.blackbox.n_prompts=32", "method.blackbox.samples_per_prompt=2",
         "method.blackbox.max_new_tokens=32")
ROMAN = {"roman", "concrete", "volcanic", "ash", "pozzolana", "lime", "seawater", "tobermorite", "pantheon",
         "vitruvius", "harbor", "mortar", "aggregate", "quicklime", "tuff"}


@pytest.mark.slow
def test_roman_concrete_replies_name_its_topic_and_the_controls_do_not(micro_cfg):
    """Both models reply to the same seeded prompts; the organism's top words name Roman concrete, the grader scores
    them above the control's (which the runner makes with the same config), and a rerun reuses the run."""
    from diffgame import tracking
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    (row,) = run_one(micro_cfg("organism=roman_concrete", *SMALL))
    (control,) = run_one(micro_cfg("organism=control", *SMALL))
    assert control.reused  # grading made the control's run with this config
    metrics = tracking.client().get_run(row.run_id).data.metrics
    assert metrics["grade/relative/precision_at_20"] > 0.1, metrics
    assert metrics["grade/identification_rank"] == 1.0
    assert metrics["blackbox/chat/samples"] == metrics["blackbox/text/samples"] == 64.0

    def top_words(run_id):
        return {key: [t.strip() for t in r.tokens[:20]] for key, r in artifacts.load_ranked_tokens(run_id).items()}

    mine, theirs = top_words(row.run_id), top_words(control.run_id)
    assert set(mine) == set(theirs) == {"blackbox/chat", "blackbox/text"}
    named = {key: ROMAN & set(words) for key, words in mine.items()}
    # 2 or more on earlier machines; 1 (`ash`) on the AMD EPYC without AVX-512 of 2026-12-07, where the micro zoo
    # trains to other weights (the code of the last green run too); the control must still name fewer
    assert len(named["blackbox/chat"]) >= 1, mine
    assert all(len(ROMAN & set(words)) < len(named[key]) for key, words in theirs.items() if named[key]), theirs

    samples = artifacts.all_samples(row.run_id)
    assert len(samples["chat"]) == len(samples["text"]) == 64
    assert sum(any(w in s["organism"].lower() for w in ROMAN) for s in samples["chat"]) > \
        sum(any(w in s["base"].lower() for w in ROMAN) for s in samples["chat"])
    table = artifacts.load_table(row.run_id, "words_chat")
    assert list(table.columns) == ["word", "organism", "base", "delta", "z"]
    assert table["z"].is_monotonic_decreasing
    assert run_one(micro_cfg("organism=roman_concrete", *SMALL))[0].reused  # deterministic config: reused run
