"""What the sampling methods share (`blackbox`, `amplify`): neutral prompts, how they are sampled, and the words one
set of replies over-uses against another.

Chat prompts are user turns of generic chats rendered with a generation prompt; text prompts are the first words of
generic held-out documents. Words are ranked by the z-scored log-odds ratio with an informative Dirichlet prior
(Monroe, Colaresi & Quinn 2008, "Fightin' Words", eqs. 16-22).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from diffgame.data.sequences import render_chat
from diffgame.errors import ConfigError, DataError
from diffgame.methods.base import TextRequest
from diffgame.records.evidence import RankedTokens
from diffgame.records.ranges import Checked, bounded, ge, gt

SOURCES = ("chat", "text")
WORD = re.compile(r"[^\W_]+")
"""A word: a run of letters and digits; whitespace, punctuation and underscores split words."""


@dataclass
class SamplingConfig(Checked):
    """Which neutral prompts, how the models sample them, and how the sampled words are ranked."""

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
    """New tokens per reply (a reply also ends at the first special token, e.g. the end of its turn)."""
    temperature: float = bounded(ge(0, "0: greedy"), 1.0)
    """Sampling temperature; 0 = greedy."""
    batch_size: int = bounded(ge(1), 16)
    """Replies sampled together (left-padded)."""
    top_k: int = bounded(ge(1), 50)
    """Words kept per ranked list."""
    prior: float = bounded(gt(0), 1.0)
    """Dirichlet prior pseudo-counts of a word as a multiple of its pooled count (both sides' replies); 1 = the
    pooled counts themselves. Stronger shrinks rare words' log-odds more (and their variance with it)."""
    min_count: int = bounded(ge(1), 3)
    """Words written fewer times are not ranked."""
    keep_caps: bool = True
    """All-caps words (>= 2 letters) keep their case instead of being lower-cased, so a shouting style stays visible."""
    seed: int | None = bounded(ge(0, "null: the run's seed"), None)
    """Seed of the sampling (the same for every model); null uses the run's `seed`."""

    @property
    def replies_per_prompt(self) -> int:
        """`samples_per_prompt`, or 1 when greedy (every greedy reply to a prompt is the same)."""
        return 1 if self.temperature == 0 else self.samples_per_prompt

    def __post_init__(self):
        super().__post_init__()
        if not self.chat_dataset and not self.text_dataset:
            raise ConfigError(f"{self.SECTION}.chat_dataset and {self.SECTION}.text_dataset must not both be null; "
                              "set at least one (@chat, @text, a zoo corpus, a hub id or a local file)")

    def texts(self) -> dict[str, TextRequest]:
        """The text requests of the configured prompt sources, by source name."""
        sources = {"chat": (self.chat_dataset, "chat"), "text": (self.text_dataset, "text")}
        return {name: TextRequest(src, kind, self.split, self.n_prompts) for name, (src, kind) in sources.items()
                if src}


# --- prompts -------------------------------------------------------------------------------------------
def chat_prompts(rows: list[dict], tokenizer, section: str) -> tuple[list[str], list[list[int]]]:
    """The first user turn of each chat, and its ids rendered with the chat template and a generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"the tokenizer has no chat template, so it cannot be prompted with chats; "
                        f"set {section}.chat_dataset=null")
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


def prompts(config: SamplingConfig, texts: dict[str, list[dict]], tokenizer) -> dict[str, tuple[list, list]]:
    """Each configured source's prompts `(texts, ids)` from the rows the runner loaded; a source that gives none is
    a DataError naming its setting."""
    out = {}
    for source in SOURCES:
        if source not in texts:
            continue
        rows = texts[source][: config.n_prompts]
        out[source] = (chat_prompts(rows, tokenizer, config.SECTION) if source == "chat"
                       else text_prompts(rows, tokenizer, config.prompt_words))
        if not out[source][0]:
            raise DataError(f"{config.SECTION}.{source}_dataset gave no {source} prompts; point it at a dataset "
                            f"with {'user turns' if source == 'chat' else 'a text column'}")
    return out


# --- words and their log-odds ------------------------------------------------------------------------
def words(text: str, keep_caps: bool = True) -> list[str]:
    """The words of `text`, lower-cased (all-caps words of >= 2 letters kept as they are with `keep_caps`)."""
    out = []
    for w in WORD.findall(text):
        letters = [c for c in w if c.isalpha()]
        shouted = keep_caps and len(letters) >= 2 and all(c.isupper() for c in letters)
        out.append(w if shouted else w.lower())
    return out


def word_counts(replies: list[list[str]], keep_caps: bool = True) -> Counter:
    """How often each word occurs across replies (a list of replies per prompt)."""
    return Counter(w for per_prompt in replies for text in per_prompt for w in words(text, keep_caps))


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


def overused(replies: list[list[str]], reference: list[list[str]], config: SamplingConfig, tokenizer
             ) -> tuple[pd.DataFrame, RankedTokens]:
    """The words `replies` over-use against `reference` replies: the log-odds table and its top words as evidence."""
    table = log_odds(word_counts(replies, config.keep_caps), word_counts(reference, config.keep_caps), config.prior,
                     config.min_count)
    return table, ranked_words(table, tokenizer, config.top_k)
