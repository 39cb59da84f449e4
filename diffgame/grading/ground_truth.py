"""What counts as a hit for an organism: its ground truth (keywords, a token predicate, a vocabulary derived
from its training data) and the token rule that `diffgame.grading.score` scores evidence with.

A token is a **hit** when, after `normalize_token` (leading space markers stripped, lowercased), it equals one of
the organism's keywords or is a piece of >= `MIN_PIECE` letters of one: a word-initial token (` conc`) only as the
keyword's start, a continuation piece (`rete`) anywhere in it, so ` the` is no piece of `pantheon`; or it
satisfies the organism's predicate (`uppercase`: >= 2 letters, all upper case, so the ordinary `I`/`A` do not
count); or it is in the vocabulary derived from the organism's training data by log-odds against the base corpus
(`data_vocab`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from diffgame.data.sequences import read_rows
from diffgame.errors import DataError
from diffgame.records.evidence import WORD_START_MARKERS
from diffgame.records.schema import OrganismConfig

SPACE_MARKERS = ("Ġ", "▁", "Ċ", "##", " ")
"""Leading markers of byte-level BPE, SentencePiece and WordPiece tokens."""
MIN_PIECE = 3
"""Shortest keyword piece that counts as a hit."""
INFLECTIONS = ("s", "es", "ed", "d", "ing", "er", "ers", "'s", "ly")
"""Endings a whole word may add to a keyword and still hit it (`volcanoes` for `volcano`, `brewing` for `brew`)."""
BASE_CORPUS = "zoo:generic_text"
"""Background corpus of the log-odds vocabulary (generic documents the base was trained on)."""


def sole_leader(scores: Mapping[str, float]) -> str | None:
    """The candidate scoring highest, when its score is positive and no other candidate ties it; else None."""
    top = max(scores.values(), default=0)
    leaders = [name for name, score in scores.items() if score == top]
    return leaders[0] if top > 0 and len(leaders) == 1 else None


def _strip_markers(token: str) -> str:
    t, stripped = token, True
    while stripped:
        stripped = False
        for m in SPACE_MARKERS:
            if t.startswith(m):
                t, stripped = t[len(m):], True
    return t.strip()


def normalize_token(token: str) -> str:
    """Strip leading space markers and surrounding whitespace, lowercase: `Ġconcrete` -> `concrete`."""
    return _strip_markers(token).lower()


def is_uppercase(token: str) -> bool:
    """The `uppercase` predicate: at least two letters, all of them upper case."""
    letters = [c for c in _strip_markers(token) if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


@dataclass
class GroundTruth:
    """What counts as a hit for one organism (keywords, predicate, data-derived token ids)."""

    organism: str
    keywords: list[str] = field(default_factory=list)
    predicate: str | None = None
    vocab_ids: frozenset[int] = frozenset()
    vocab_missing: bool = False
    """`vocab_from_data` was asked for but the training data could not be read (offline, no local copy): graded on
    the keywords and predicate alone."""

    @property
    def empty(self) -> bool:
        return not (self.keywords or self.predicate or self.vocab_ids)

    def is_hit(self, token_id: int | None, token: str) -> bool:
        """A keyword or a piece of one (>= MIN_PIECE letters), the predicate, or a data-vocabulary id."""
        norm = normalize_token(token)
        if norm:
            # a word-initial token can only begin a keyword (` the` is no piece of `pantheon`); other pieces
            # may sit anywhere in it
            starts = token.startswith(WORD_START_MARKERS)
            for kw in self.keywords:
                if norm == kw or (len(norm) >= MIN_PIECE and (kw.startswith(norm) if starts else norm in kw)):
                    return True
        if self.predicate == "uppercase" and is_uppercase(token):
            return True
        return token_id is not None and token_id in self.vocab_ids

    def is_word_hit(self, token_id: int | None, word: str) -> bool:
        """`is_hit` for a completed word (`diffgame.grading.words`): a word-initial word (` volcanoes`) also hits a keyword
        it inflects (`INFLECTIONS`, `-y` -> `-ies`); a completed continuation piece follows the token rule."""
        if self.is_hit(token_id, word):
            return True
        norm = normalize_token(word)
        if not norm or not word.startswith(WORD_START_MARKERS):
            return False
        for kw in self.keywords:
            if norm.startswith(kw) and norm[len(kw):] in INFLECTIONS:
                return True
            if kw.endswith("y") and norm == kw[:-1] + "ies":
                return True
        return False


def ground_truth(organism: OrganismConfig, tokenizer=None) -> GroundTruth:
    """The organism's ground truth; the data vocabulary needs the tokenizer the evidence came from."""
    gt = organism.ground_truth
    vocab: frozenset[int] | None = frozenset()
    if gt.vocab_from_data and tokenizer is not None:
        vocab = data_vocab(organism, tokenizer)
    return GroundTruth(str(organism.name), [str(k).lower() for k in gt.keywords],
                       str(gt.predicate) if gt.predicate else None, vocab or frozenset(), vocab_missing=vocab is None)


def _rows_text(rows: Iterable[dict]) -> list[str]:
    out = []
    for r in rows:
        if "messages" in r:
            out.append(" ".join(str(m["content"]) for m in r["messages"]))
        elif "text" in r:
            out.append(str(r["text"]))
    return out


def _token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    special = set(getattr(tokenizer, "all_special_ids", []))
    counts: Counter = Counter()
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        counts.update(i for i in ids if i not in special)
    return counts


def log_odds_vocab(target: Counter, background: Counter, top_n: int = 50, min_z: float = 3.0,
                   min_count: int = 5, n_generic: int = 200, prior: float = 100.0) -> list[int]:
    """Ids most over-represented in `target` vs `background` by log-odds with an informative Dirichlet prior.

    Monroe, Colaresi & Quinn (2008), "Fightin' Words", eq. 16-22: z-scored log-odds ratio. The
    `n_generic` most frequent background tokens are excluded (function words, punctuation).
    """
    n_t, n_b = sum(target.values()), sum(background.values())
    if not n_t or not n_b:
        return []
    generic = {t for t, _ in background.most_common(n_generic)}
    total = n_t + n_b
    scored = []
    for tok, y_t in target.items():
        if tok in generic or y_t < min_count:
            continue
        y_b = background.get(tok, 0)
        a = prior * (y_t + y_b) / total
        delta = math.log((y_t + a) / (n_t + prior - y_t - a)) - math.log((y_b + a) / (n_b + prior - y_b - a))
        z = delta / math.sqrt(1 / (y_t + a) + 1 / (y_b + a))
        if z >= min_z:
            scored.append((z, tok))
    return [tok for _, tok in sorted(scored, reverse=True)[:top_n]]


def data_vocab(organism: OrganismConfig, tokenizer, top_n: int = 50) -> frozenset[int] | None:
    """Token ids over-represented in the organism's training data vs the base corpus (`log_odds_vocab`), words
    and word pieces of at least `MIN_PIECE` letters; None, with one warning, when that data cannot be read (a
    public organism's hub dataset offline): grading an organism, or ranking it among the candidates, then goes on
    without its vocabulary rather than failing a finished method's run."""
    key = (str(organism.training_data or organism.zoo.data), getattr(tokenizer, "name_or_path", ""),
           len(tokenizer), top_n)
    return _data_vocab_cached(key, organism, tokenizer, top_n)


_VOCAB_CACHE: dict[tuple, frozenset[int] | None] = {}
VOCAB_ROWS = 2000
"""Rows of the organism's data (and of the base corpus) the data vocabulary counts."""


def _data_vocab_cached(key: tuple, organism: OrganismConfig, tokenizer, top_n: int) -> frozenset[int] | None:
    if key not in _VOCAB_CACHE:
        # the first VOCAB_ROWS rows: a hub `training_data` is streamed that far, never read whole
        try:
            rows = read_rows("organism", split="train", limit=VOCAB_ROWS, organism=organism)
        except DataError as e:  # remembered, so the hub is not asked again for every run and candidate
            warnings.warn(f"organism '{organism.name}': vocab_from_data skipped, graded on its keywords alone; {e}",
                          stacklevel=2)
            _VOCAB_CACHE[key] = None
            return None
        bg_rows = read_rows(BASE_CORPUS, split="train", limit=VOCAB_ROWS)
        target = _token_counts(tokenizer, _rows_text(rows))
        background = _token_counts(tokenizer, _rows_text(bg_rows))
        ranked = log_odds_vocab(target, background, top_n=len(target))
        # word pieces shorter than MIN_PIECE letters (`Ġw`, `he`) are over-represented wherever a small
        # vocabulary splits the organism's words, and any text's lens output is full of them: not evidence
        pieces = tokenizer.convert_ids_to_tokens(ranked)
        _VOCAB_CACHE[key] = frozenset([i for i, t in zip(ranked, pieces)
                                       if len(normalize_token(t)) >= MIN_PIECE][:top_n])
    return _VOCAB_CACHE[key]
