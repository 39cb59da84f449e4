"""Black-box baseline: sample both models on neutral prompts and rank the words the organism uses more than the base.

Chat prompts (user turns of generic chats, rendered with a generation prompt) and text prompts (the first words of
generic held-out documents) are continued by both models with the same seeds. Words are ranked by the z-scored
log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words", eqs. 16-22).
It reads no activations: a white-box method that does not beat it has not shown what the weights add.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch

from diffgame.data.sequences import render_chat
from diffgame.errors import ConfigError, DataError
from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest
from diffgame.models.loading import end_ids
from diffgame.records.evidence import RankedTokens
from diffgame.records.ranges import Checked, bounded, ge, gt

SOURCES = ("chat", "text")
_WORD = re.compile(r"[^\W_]+")
"""A word: a run of letters and digits; whitespace, punctuation and underscores split words."""


@dataclass
class BlackboxConfig(Checked):
    """Which neutral prompts, how both models sample them, and how the organism's words are ranked."""

    SECTION = "method.blackbox"

    chat_dataset: str | None = "@chat"
    """Chats whose first user turn is a chat prompt: `@chat` (the dataset preset's chat source), another `@name`, a
    zoo corpus, hub id or local file; null skips chat prompts."""
    text_dataset: str | None = "@text"
    """Documents whose first words are a text prompt: `@text` (the preset's text source), another `@name`, a zoo
    corpus, hub id or local file; null skips text prompts."""
    split: str = "test"
    """Split of both datasets when they name a corpus, hub id or file (a `@name` source reads its own split)."""
    n_prompts: int = bounded(ge(1), 64)
    """Prompts per source (the first rows of each dataset)."""
    prompt_words: int = bounded(ge(1), 6)
    """Words of a document kept as its text prompt."""
    samples_per_prompt: int = bounded(ge(1), 4)
    """Replies sampled per prompt and model (one when greedy, see `replies_per_prompt`)."""
    max_new_tokens: int = bounded(ge(1), 48)
    """New tokens per reply (a chat reply also ends at the first special token, e.g. the end of its turn)."""
    temperature: float = bounded(ge(0, "0: greedy"), 1.0)
    """Sampling temperature; 0 = greedy."""
    batch_size: int = bounded(ge(1), 16)
    """Prompts per `generate` call (left-padded)."""
    top_k: int = bounded(ge(1), 50)
    """Words kept per ranked list."""
    prior: float = bounded(gt(0), 1.0)
    """Dirichlet prior pseudo-counts of a word as a multiple of its pooled count (both models' replies); 1 = the
    pooled counts themselves. Stronger shrinks rare words' log-odds more (and their variance with it)."""
    min_count: int = bounded(ge(1), 3)
    """Words the organism wrote fewer times are not ranked."""
    keep_caps: bool = True
    """All-caps words (>= 2 letters) keep their case instead of being lower-cased, so a shouting style stays visible."""
    seed: int | None = bounded(ge(0, "null: the run's seed"), None)
    """Seed of the sampling (the same for both models); null uses the run's `seed`."""

    @property
    def replies_per_prompt(self) -> int:
        """`samples_per_prompt`, or 1 when greedy (every greedy reply to a prompt is the same)."""
        return 1 if self.temperature == 0 else self.samples_per_prompt

    def __post_init__(self):
        super().__post_init__()
        if not self.chat_dataset and not self.text_dataset:
            raise ConfigError("method.blackbox.chat_dataset and method.blackbox.text_dataset must not both be null; "
                              "set at least one (@chat, @text, a zoo corpus, a hub id or a local file)")

# --- words and their log-odds ------------------------------------------------------------------------
def words(text: str, keep_caps: bool = True) -> list[str]:
    """The words of `text`, lower-cased (all-caps words of >= 2 letters kept as they are with `keep_caps`)."""
    out = []
    for w in _WORD.findall(text):
        letters = [c for c in w if c.isalpha()]
        shouted = keep_caps and len(letters) >= 2 and all(c.isupper() for c in letters)
        out.append(w if shouted else w.lower())
    return out


def log_odds(organism: Counter, base: Counter, prior: float = 1.0, min_count: int = 1) -> pd.DataFrame:
    """Words of `organism` by the z-scored log-odds ratio of organism vs base use, highest first.

    Informative Dirichlet prior from the pooled counts (Monroe et al. 2008, sec. 3.5): alpha_w = prior * (y_org +
    y_base), alpha_0 = prior * (n_org + n_base); delta_w = log-odds in the organism - log-odds in the base (eq. 16),
    z_w = delta_w / sqrt(1/(y_org + alpha_w) + 1/(y_base + alpha_w)) (eqs. 18-22). Words the organism used fewer
    than `min_count` times are left out; ties break by word, so the order is deterministic. Columns: word,
    organism, base (counts), delta, z.
    """
    n_org, n_base = sum(organism.values()), sum(base.values())
    a0 = prior * (n_org + n_base)
    rows = []
    for word, y_org in organism.items():
        if y_org < min_count:
            continue
        y_base = base.get(word, 0)
        a = prior * (y_org + y_base)
        delta = (math.log((y_org + a) / (n_org + a0 - y_org - a))
                 - math.log((y_base + a) / (n_base + a0 - y_base - a)))
        rows.append((word, y_org, y_base, delta, delta / math.sqrt(1 / (y_org + a) + 1 / (y_base + a))))
    rows.sort(key=lambda r: (-r[4], r[0]))
    return pd.DataFrame(rows, columns=["word", "organism", "base", "delta", "z"])


def ranked_words(table: pd.DataFrame, tokenizer, top_k: int) -> RankedTokens:
    """The `top_k` words with z > 0 as ranked evidence: token ` word` (a leading space: graded as a whole word,
    `diffgame.grading.ground_truth.GroundTruth.is_hit`) with the id of the first token of ` word`."""
    top = table[table["z"] > 0].head(top_k)
    ids = [list(tokenizer(" " + w, add_special_tokens=False)["input_ids"])[:1] or [-1] for w in top["word"]]
    return RankedTokens([i[0] for i in ids], [" " + w for w in top["word"]], top["z"].astype(float).tolist())


# --- sampling ------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_replies(model, tokenizer, prompts: Sequence[Sequence[int]], samples_per_prompt: int = 1,
                   max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0,
                   batch_size: int = 16) -> list[list[str]]:
    """`samples_per_prompt` replies to each prompt (token ids), cut at the first special token; seeded per batch.

    Prompts are left-padded into batches of `batch_size`; temperature 0 decodes greedily.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = sorted((set(getattr(tokenizer, "all_special_ids", [])) | set(end_ids(tokenizer))) - {None})
    greedy = temperature == 0
    out: list[list[str]] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = [list(p) for p in prompts[start:start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, T], left-padded
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):
            ids[row, width - len(p):] = torch.as_tensor(p)
            mask[row, width - len(p):] = 1
        torch.manual_seed(seed + b)
        gen = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=not greedy, temperature=None if greedy else temperature, top_p=None,
                             top_k=None, num_return_sequences=samples_per_prompt, pad_token_id=pad,
                             eos_token_id=stop or None)
        new = gen[:, width:].tolist()  # [B * samples, T_new], each prompt's samples together
        texts = [tokenizer.decode(_until(r, set(stop)), skip_special_tokens=True).strip() for r in new]
        out += [texts[i:i + samples_per_prompt] for i in range(0, len(texts), samples_per_prompt)]
    return out


def _until(ids: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


def chat_prompts(rows: list[dict], tokenizer) -> tuple[list[str], list[list[int]]]:
    """The first user turn of each chat, and its ids rendered with the chat template and a generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template, so the black-box baseline cannot prompt it with chats; "
                        "set method.blackbox.chat_dataset=null")
    texts, ids = [], []
    for row in rows:
        user = next((str(m["content"]).strip() for m in row.get("messages") or [] if m.get("role") == "user"), "")
        if user:
            texts.append(user)
            ids.append(render_chat([{"role": "user", "content": user}], tokenizer, add_generation_prompt=True)[0])
    return texts, ids


def text_prompts(rows: list[dict], tokenizer, n_words: int) -> tuple[list[str], list[list[int]]]:
    """The first `n_words` words of each document, and their ids (with the tokenizer's special tokens)."""
    texts = [" ".join(str(r.get("text") or "").split()[:n_words]) for r in rows]
    texts = [t for t in texts if t]
    return texts, [list(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]


# --- the method ----------------------------------------------------------------------------------------
class BlackboxMethod(Method):
    """Words the organism writes more than the base when both reply to the same neutral prompts."""

    needs_store = False
    needs_models = True
    headline: ClassVar[tuple[str, ...]] = ("blackbox/chat/top_z", "blackbox/text/top_z")

    def texts(self) -> dict[str, TextRequest]:
        c = self.config
        sources = {"chat": (c.chat_dataset, "chat"), "text": (c.text_dataset, "text")}
        return {name: TextRequest(src, kind, c.split, c.n_prompts) for name, (src, kind) in sources.items() if src}

    def run(self, ctx: MethodContext) -> MethodResult:
        c, tok = self.config, ctx.tokenizer
        seed = int(ctx.seed if c.seed is None else c.seed)
        result = MethodResult()
        for source in SOURCES:
            if source not in ctx.texts:
                continue
            rows = ctx.texts[source][: c.n_prompts]
            prompts, ids = (chat_prompts(rows, tok) if source == "chat" else text_prompts(rows, tok, c.prompt_words))
            if not prompts:
                raise DataError(f"method.blackbox.{source}_dataset gave no {source} prompts; point it at a dataset "
                                f"with {'user turns' if source == 'chat' else 'a text column'}")
            replies = {role: sample_replies(handle.model, tok, ids, c.replies_per_prompt, c.max_new_tokens,
                                            c.temperature, seed, c.batch_size)
                       for role, handle in (("base", ctx.base), ("organism", ctx.organism))}
            counts = {role: Counter(w for r in rs for text in r for w in words(text, c.keep_caps))
                      for role, rs in replies.items()}
            table = log_odds(counts["organism"], counts["base"], c.prior, c.min_count)
            # the readout is already words: the same list is both the token and the word evidence
            result.ranked_tokens[f"blackbox/{source}"] = ranked_words(table, tok, c.top_k)
            result.ranked_words[f"blackbox/{source}"] = result.ranked_tokens[f"blackbox/{source}"]
            result.tables[f"words_{source}"] = table.head(max(c.top_k, 200)).reset_index(drop=True)
            result.samples[source] = [{"prompt": p, "sample": j, "base": b, "organism": o}
                                      for p, bs, os_ in zip(prompts, replies["base"], replies["organism"])
                                      for j, (b, o) in enumerate(zip(bs, os_))]
            result.metrics.update({
                f"blackbox/{source}/prompts": float(len(prompts)),
                f"blackbox/{source}/samples": float(len(prompts) * c.replies_per_prompt),
                f"blackbox/{source}/organism_words": float(sum(counts["organism"].values())),
                f"blackbox/{source}/base_words": float(sum(counts["base"].values())),
                f"blackbox/{source}/distinct_words": float(len(counts["organism"] | counts["base"])),
                f"blackbox/{source}/top_z": float(table["z"].iloc[0]) if len(table) else 0.0})
        return result
