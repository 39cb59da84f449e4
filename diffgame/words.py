"""Ranked words from ranked tokens: each token extended into a whole word by the reading model, pieces pooled.

A tokenizer splits the words it did not learn (a new organism's domain words, rare words in any real vocabulary), so
a lens readout lists `Ġwa`, `Ġdist`, `Ġflower` where the organism means `waggle` or `distillation`. Each ranked
token is continued greedily by the model that read it until the next token would open a new word (whitespace,
punctuation or a special token); tokens that complete to the same word pool their scores. A word that starts a word
is written with a leading space (` waggle`), a completed continuation piece without one (`ggle`), as the grader's
token rule expects (`diffgame.ground_truth.GroundTruth.is_word_hit`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from diffgame.evidence import RankedTokens

WORDS_VERSION = 1
"""Version of the completion rule; part of every diff run's fingerprint, so a run made before words is redone."""
MAX_PIECES = 6
"""Most tokens a completed word holds (the ranked token included)."""
WORD_START_MARKERS = ("Ġ", "▁", " ")


@dataclass
class WordCompleter:
    """Completes token ids into words with `model` (greedy, batched, cached per id)."""

    model: object
    tokenizer: object
    max_pieces: int = MAX_PIECES
    batch_size: int = 256
    cache: dict[int, str] = field(default_factory=dict)

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
        special = set(getattr(tok, "all_special_ids", []) or [])
        out: dict[int, str] = {}
        active = []
        for i in ids:
            text = tok.decode([i])
            if i in special or i < 0 or not any(c.isalnum() for c in text):
                out[i] = text  # punctuation, whitespace and special tokens are their own word
            else:
                active.append(i)
        if not active:
            return out
        initial = {i: str(tok.convert_ids_to_tokens(i)).startswith(WORD_START_MARKERS) or tok.decode([i])[:1].isspace()
                   for i in active}
        bos = getattr(tok, "bos_token_id", None)
        prefix = [bos] if bos is not None else []
        param = next(self.model.parameters())
        seqs = {i: [i] for i in active}
        open_rows = list(active)
        for _ in range(self.max_pieces - 1):
            if not open_rows:
                break
            batch = torch.tensor([prefix + seqs[i] for i in open_rows], device=param.device)  # [n, T], equal lengths
            nxt = self.model(input_ids=batch).logits[:, -1].argmax(-1).tolist()
            still = []
            for i, n in zip(open_rows, nxt):
                if n in special:
                    continue
                before = tok.decode(seqs[i])
                after = tok.decode(seqs[i] + [n])
                added = after[len(before):] if after.startswith(before) else ""
                if added and added[0].isalnum():
                    seqs[i].append(n)
                    still.append(i)
            open_rows = still
        for i in active:
            word = tok.decode(seqs[i]).strip()
            out[i] = (" " + word) if initial[i] else word
        return out


def pool(ranked: RankedTokens, words: Mapping[int, str], top_k: int | None = None) -> RankedTokens:
    """`ranked` as words: tokens completing to the same word pool their scores (summed); the word keeps the id of its
    highest-scoring piece. Best first; ties keep the order of first appearance."""
    score: dict[str, float] = {}
    best: dict[str, tuple[float, int]] = {}
    for i, s in zip(ranked.token_ids, ranked.scores):
        w = words.get(int(i))
        if w is None or not w.strip():
            continue
        score[w] = score.get(w, 0.0) + float(s)
        if w not in best or float(s) > best[w][0]:
            best[w] = (float(s), int(i))
    order = sorted(score, key=lambda w: -score[w])  # sorted is stable: ties keep first appearance
    order = order[:top_k] if top_k else order
    return RankedTokens([best[w][1] for w in order], order, [score[w] for w in order])


def ranked_words(ranked_tokens: Mapping[str, RankedTokens], completer: WordCompleter) -> dict[str, RankedTokens]:
    """Every readout of `ranked_tokens` as ranked words, all completed in one batched pass."""
    words = completer.complete(i for r in ranked_tokens.values() for i in r.token_ids)
    return {key: pool(r, words) for key, r in ranked_tokens.items()}
