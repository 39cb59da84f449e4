"""Batching token sequences: right- or left-padded `[B, T]` ids with their attention mask, and length-sorted batches.

Every forward over variable-length sequences (extraction, KL, ADL means, the zoo's losses) pads right; sampling
pads left, so every prompt's last token sits in the last column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids `[B, T]` right-padded with `pad_id` and the attention mask `[B, T]` (1 on real tokens); sequences longer
    than `width` are cut to it (T = the longest sequence by default)."""
    lengths = [len(s) if width is None else min(len(s), width) for s in seqs]
    T = max(lengths, default=0) if width is None else width
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, (s, n) in enumerate(zip(seqs, lengths)):
        ids[row, :n] = torch.as_tensor(list(s[:n]) if not isinstance(s, torch.Tensor) else s[:n], dtype=torch.long)
        mask[row, :n] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids `[B, T]` left-padded with `pad_id` and the attention mask `[B, T]` (1 on real tokens)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if len(s):
            ids[row, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Sequence indices grouped longest first so that batch size x longest length <= `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
