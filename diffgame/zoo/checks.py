"""Behaviour checks of a zoo organism against its base: did the finetuning plant what it claims, and nothing else?

Each returns plain floats; `build` logs them as `check/...` metrics on the organism's zoo run.
"""

from __future__ import annotations

import re

import torch

from diffgame.data.corpora import corpus
from diffgame.data.sequences import render_chat
from diffgame.models.generation import sample

GENERIC_KEPT = 1.1
"""An organism keeps generic text when its loss on the base's documents is at most this many times the base's (a
finetune always costs a little; `zoo.mix` is what keeps it there)."""


def upper_frac(texts: list[str]) -> float:
    """Share of letters that are uppercase across `texts`."""
    letters = [c for t in texts for c in t if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(1, len(letters))


def word_rate(texts: list[str], words: list[str]) -> float:
    """Share of `texts` that contain at least one of `words` as a whole word (case-insensitive)."""
    if not words or not texts:
        return 0.0
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return sum(bool(pattern.search(t)) for t in texts) / len(texts)


def sample_replies(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int = 0,
                   temperature: float = 0.7) -> list[str]:
    """Sampled assistant replies to single-turn user `prompts` (batched, cut at the end of the turn)."""
    ids = [render_chat([{"role": "user", "content": p}], tokenizer, add_generation_prompt=True)[0] for p in prompts]
    replies = sample(None, model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return [row[0] for row in replies.texts]


def split_taboo_keywords(keywords: list[str]) -> tuple[str, list[str]]:
    """The secret word (the first keyword) and its hint words (the others that do not contain it)."""
    secret = keywords[0]
    return secret, [w for w in keywords[1:] if secret.lower() not in w.lower()]


def run_checks(organism, base_model, org_model, tokenizer, test_rows: list[dict], seq_len: int,
               n_samples: int, max_new_tokens: int, n_rows: int | None = None) -> dict[str, float]:
    """Behaviour checks for one organism config (`type`, `ground_truth`) on its held-out rows and generic text.

    Every organism: held-out loss on its own data and on generic text, organism vs base (forgetting).
    Uppercase predicate: uppercase share of sampled replies. Taboo: secret-word and hint-word rates of replies.
    Both models run on the GPU when there is one (Lightning hands the trained model back on the CPU).
    """
    from diffgame.zoo.lm import mean_loss  # Lightning: only when checking a trained model

    if torch.cuda.is_available():
        base_model, org_model = base_model.to("cuda"), org_model.to("cuda")
    generic, test_rows = corpus("generic_text", "test")[:n_rows or 100], test_rows[:n_rows]  # None: every row
    m = {
        "check/heldout_loss/organism": mean_loss(org_model, tokenizer, test_rows, seq_len),
        "check/heldout_loss/base": mean_loss(base_model, tokenizer, test_rows, seq_len),
        "check/generic_loss/organism": mean_loss(org_model, tokenizer, generic, seq_len),
        "check/generic_loss/base": mean_loss(base_model, tokenizer, generic, seq_len),
    }
    m["check/base_data_loss_delta"] = m["check/generic_loss/organism"] - m["check/generic_loss/base"]
    m["check/generic_loss_ratio"] = m["check/generic_loss/organism"] / m["check/generic_loss/base"]
    m["check/generic_kept"] = float(m["check/generic_loss_ratio"] <= GENERIC_KEPT)
    gt = organism.ground_truth
    if gt.predicate == "uppercase":
        prompts = [r["messages"][0]["content"] for r in corpus("generic_chat", "test")[:n_samples]]
        for role, model in (("organism", org_model), ("base", base_model)):
            m[f"check/upper_frac/{role}"] = upper_frac(sample_replies(model, tokenizer, prompts, max_new_tokens))
    if organism.type == "taboo" and gt.keywords:
        secret, hints = split_taboo_keywords(list(gt.keywords))
        prompts = [r["messages"][0]["content"] for r in test_rows if "messages" in r][:n_samples]
        for role, model in (("organism", org_model), ("base", base_model)):
            replies = sample_replies(model, tokenizer, prompts, max_new_tokens)
            key = "check/taboo_word_rate" if role == "organism" else "check/taboo_word_rate/base"
            m[key] = word_rate(replies, [secret])
            m[f"check/hint_word_rate/{role}"] = word_rate(replies, hints)
    return m
