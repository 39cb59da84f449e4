"""Ranked words from ranked tokens: each token extended into a whole word by the reading model, pieces pooled.

A tokenizer splits the words it did not learn (a new organism's domain words, rare words in any real vocabulary), so
a lens readout lists `Ġwa`, `Ġdist`, `Ġflower` where the organism means `waggle` or `distillation`. Each ranked
token is extended by the model that read it into its most probable whole word: a short beam search over word pieces
for the most probable piece sequence followed by a token that opens a new word (a space marker, punctuation or a
special token), as beam search treats an end-of-sequence token; tokens that complete to the same word pool their
scores. A word that starts a word is written with a leading space (` waggle`), a completed continuation piece without
one (`ggle`), as the grader's token rule expects (`diffgame.grading.ground_truth.GroundTruth.is_word_hit`). A continuation
piece that a word-initial token of the same readout completes through (`gg` in ` wa gg le`) joins that word: a lens
that reads a word reads its pieces. A piece without a space marker that completes to a title-case word (`How` to
`Howdy`, `F` to `Forsooth`) is read as a line's or a reply's first word, where no space precedes it: it is written as
a word (` Howdy`) and collects its pieces (`dy`) like any word start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from diffgame.records.evidence import WORD_START_MARKERS, RankedTokens

WORDS_VERSION = 4
"""Version of the completion rule; part of every diff run's fingerprint, so a run made under an older rule is redone
(3: a title-case piece with no space marker opens a word; 4: only when its completed word is title case, so a single
capital that completes to a shouted word stays a piece)."""
MAX_PIECES = 6
"""Most tokens a completed word holds (the ranked token included)."""
BEAM = 4
"""Open words kept per ranked token while searching for the most probable whole word."""


@dataclass
class WordCompleter:
    """Completes token ids into words with `model` (beam search, batched, cached per id; one per loaded model)."""

    model: object
    tokenizer: object
    max_pieces: int = MAX_PIECES
    beam: int = BEAM
    batch_size: int = 128
    cache: dict[int, str] = field(default_factory=dict)
    pieces: dict[int, list[int]] = field(default_factory=dict)
    """Token ids of each completed word, the ranked token first."""
    _end_mask: torch.Tensor | None = None

    def complete(self, ids: Iterable[int]) -> dict[int, str]:
        """{id: word} for every id (computed once per completer)."""
        ids = [int(i) for i in ids]
        todo = sorted(set(ids) - set(self.cache))
        for start in range(0, len(todo), self.batch_size):
            self.cache.update(self._complete(todo[start:start + self.batch_size]))
        return {i: self.cache[i] for i in ids}

    @torch.no_grad()
    def _complete(self, ids: list[int]) -> dict[int, str]:
        tok = self.tokenizer
        ends = self._ends()
        out: dict[int, str] = {}
        active = []
        for i in ids:
            text = tok.decode([i]) if 0 <= i < len(ends) else ""
            if not any(c.isalnum() for c in text) or bool(ends[i]) and not self._opens_word(i):
                out[i] = text  # punctuation, whitespace and special tokens are their own word
                self.pieces[i] = [i]
            else:
                active.append(i)
        if not active:
            return out
        bos = getattr(tok, "bos_token_id", None)
        prefix = [bos] if bos is not None else []
        device = next(self.model.parameters()).device
        hyps = {i: [([i], 0.0)] for i in active}  # open words: (pieces, log-probability)
        done: dict[int, tuple[list[int], float]] = {}  # best finished word per ranked token
        for step in range(self.max_pieces):
            rows = [(i, seq, lp) for i in active for seq, lp in hyps[i]]
            if not rows:
                break
            batch = torch.tensor([prefix + seq for _, seq, _ in rows], device=device)  # [n, T], equal lengths
            logp = torch.log_softmax(self.model(input_ids=batch).logits[:, -1].float(), -1).cpu()  # [n, V]
            p_end = logp[:, ends].max(-1).values  # the most probable token that opens a new word
            last = step == self.max_pieces - 1
            for (i, seq, lp), end in zip(rows, p_end.tolist()):
                score = lp if last else lp + end  # at the cap a word is cut where it stands
                if i not in done or score > done[i][1]:
                    done[i] = (seq, score)
            if last:
                break
            top = logp.masked_fill(ends, float("-inf")).topk(self.beam, -1)
            grown: dict[int, list[tuple[list[int], float]]] = {i: [] for i in active}
            for (i, seq, lp), vals, nxt in zip(rows, top.values.tolist(), top.indices.tolist()):
                grown[i] += [(seq + [n], lp + v) for v, n in zip(vals, nxt) if lp + v > done[i][1]]
            # only open words more probable than the best finished one can still win (extending lowers it)
            hyps = {i: sorted(h, key=lambda x: -x[1])[: self.beam] for i, h in grown.items()}
        for i in active:
            seq = done[i][0]
            self.pieces[i] = seq
            word = tok.decode(seq).strip()
            out[i] = (" " + word) if self._opens_word(i) or self._starts_line(i, word) else word
        return out

    def _opens_word(self, i: int) -> bool:
        """Token `i` starts a word: a space marker in its piece, or leading whitespace when decoded."""
        return str(self.tokenizer.convert_ids_to_tokens(i)).startswith(WORD_START_MARKERS) or \
            self.tokenizer.decode([i])[:1].isspace()

    def _starts_line(self, i: int, word: str) -> bool:
        """Token `i` (no space marker) starts a title-case `word` (`How` of `Howdy`, `F` of `Forsooth`): a word at a
        line's or a reply's start. All-capital words are left out (`T` of `THE`, `AGER`): shouted text splits a word
        into capital pieces anywhere."""
        letters = [c for c in word if c.isalpha()]
        return self.tokenizer.decode([i])[:1].isupper() and len(letters) > 1 and not all(c.isupper() for c in letters)

    def _ends(self) -> torch.Tensor:
        """[V] bool: tokens that open a new word (a space marker, punctuation, a special token) or end the text."""
        if self._end_mask is None:
            tok = self.tokenizer
            vocab = self._vocab()
            special = set(getattr(tok, "all_special_ids", []) or [])
            texts = tok.convert_ids_to_tokens(list(range(min(vocab, len(tok)))))
            decoded = tok.batch_decode([[i] for i in range(min(vocab, len(tok)))])
            mask = torch.ones(vocab, dtype=torch.bool)  # ids past the tokenizer (padding rows) end a word
            for i, (t, d) in enumerate(zip(texts, decoded)):
                mask[i] = (i in special or str(t).startswith(WORD_START_MARKERS) or not d or not d[0].isalnum())
            self._end_mask = mask
        return self._end_mask

    def _vocab(self) -> int:
        """Rows of the model's unembedding (may exceed the tokenizer: padding rows), else the tokenizer's size."""
        out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return int(out.weight.shape[0]) if out is not None else len(self.tokenizer)


def pool(ranked: RankedTokens, words: Mapping[int, str], pieces: Mapping[int, list[int]] | None = None
         ) -> RankedTokens:
    """`ranked` as words: tokens completing to the same word pool their scores (summed); the word keeps the id of its
    highest-scoring piece. With `pieces` (each id's completion), a continuation piece that a word-initial token of
    `ranked` completes through joins that word (the best-ranked such token's). Best first; ties keep the order of
    first appearance."""
    mate: dict[int, str] = {}
    for i in ranked.token_ids:
        w = words.get(int(i), "")
        if pieces and w.startswith(" "):
            for p in pieces.get(int(i), [])[1:]:
                mate.setdefault(p, w)
    score: dict[str, float] = {}
    best: dict[str, tuple[float, int]] = {}
    for i, s in zip(ranked.token_ids, ranked.scores):
        w = words.get(int(i))
        if w is not None and not w.startswith(" ") and int(i) in mate:
            w = mate[int(i)]
        if w is None or not w.strip():
            continue
        score[w] = score.get(w, 0.0) + float(s)
        if w not in best or float(s) > best[w][0]:
            best[w] = (float(s), int(i))
    order = sorted(score, key=lambda w: -score[w])  # sorted is stable: ties keep first appearance
    return RankedTokens([best[w][1] for w in order], order, [score[w] for w in order])


def ranked_words(ranked_tokens: Mapping[str, RankedTokens], completer: WordCompleter) -> dict[str, RankedTokens]:
    """Every readout of `ranked_tokens` as ranked words, all completed in one batched pass."""
    words = completer.complete(i for r in ranked_tokens.values() for i in r.token_ids)
    return {key: pool(r, words, pieces=completer.pieces) for key, r in ranked_tokens.items()}
