"""Max-activating examples: a bounded-memory top-k over sequences scored per token, and their JSON form.

Methods offer every sequence with its per-token scores; only the k best per ranking (max or mean of the
scores) are kept, in a min-heap, so memory does not grow with the number of sequences.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffgame.records.evidence import Example

REDUCERS = {"max": lambda s: float(s.max()), "mean": lambda s: float(s.mean())}
"""How a sequence's per-token scores become its ranking score."""


@dataclass
class _Candidate:
    dataset: str
    sequence_id: int
    token_ids: list[int]
    roles: list[int]
    token_scores: list[float]


class TopKSequences:
    """Keep the `k` sequences with the highest score under each reducer (`max`, `mean`).

    Ties keep the sequence offered first, so the result is deterministic for a fixed order.
    """

    def __init__(self, k: int, reducers: Sequence[str] = ("max", "mean")):
        unknown = [r for r in reducers if r not in REDUCERS]
        if unknown:
            raise ValueError(f"unknown reducer(s) {unknown}; known: {', '.join(REDUCERS)}")
        self.k = k
        self.heaps: dict[str, list] = {r: [] for r in reducers}
        self._order = itertools.count()

    def offer(self, dataset: str, sequence_id: int, token_ids: torch.Tensor, roles: torch.Tensor,
              scores: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Consider one sequence: `token_ids`, `roles` (codes) and `scores`, all [T]. With `keep` [T] bool, only
        kept tokens rank the sequence and the others show a score of 0 (`ActivationStore.keep`)."""
        if keep is not None and not bool(keep.all()):
            ranked, scores = scores[keep], scores.masked_fill(~keep, 0)
        else:
            ranked = scores
        if self.k <= 0 or ranked.numel() == 0:
            return
        order = -next(self._order)  # earlier offers win ties (min-heap pops the smallest)
        candidate = None
        for name, heap in self.heaps.items():
            score = REDUCERS[name](ranked)
            if len(heap) == self.k and (score, order) <= heap[0][:2]:
                continue
            candidate = candidate or _Candidate(dataset, int(sequence_id), token_ids.tolist(), roles.tolist(),
                                                scores.float().tolist())
            item = (score, order, candidate)
            heapq.heappush(heap, item) if len(heap) < self.k else heapq.heapreplace(heap, item)

    def examples(self, decode, role_names: Sequence[str]) -> dict[str, list[Example]]:
        """Best first per reducer; `decode(ids) -> list[str]` turns token ids into display strings."""
        out = {}
        for name, heap in self.heaps.items():
            ranked = sorted(heap, key=lambda it: (it[0], it[1]), reverse=True)
            out[name] = [Example(sequence_id=c.sequence_id, dataset=c.dataset, score=score, token_ids=c.token_ids,
                                 tokens=decode(c.token_ids), token_scores=c.token_scores,
                                 roles=[role_names[r] for r in c.roles])
                         for score, _, c in ranked]
        return out


def token_decoder(tokenizer):
    """`decode(ids) -> list[str]`: each token decoded on its own (special tokens kept) for token heat."""
    def decode(ids: Sequence[int]) -> list[str]:
        return tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return decode


def to_json(examples: Sequence[Example]) -> str:
    return json.dumps([e.to_dict() for e in examples])


def from_json(text: str) -> list[Example]:
    return [Example.from_dict(d) for d in json.loads(text)]


def save(examples: Sequence[Example], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(examples))
    return path


def load(path: str | Path) -> list[Example]:
    return from_json(Path(path).read_text())
