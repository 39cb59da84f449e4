"""Stream the mean activation difference h_org - h_base per layer and position slot (ADL's statistics).

Slots: `pos0..pos{k-1}` (first k tokens of documents) and `assistant{j}` (j = -pre..reply-1, relative to
the first token of the assistant's reply in chats). Sums are kept in float64; memory does not grow with
the number of documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffgame.data.sequences import ASSISTANT, render_chat
from diffgame.errors import DataError
from diffgame.models.batching import pad_right
from diffgame.models.residuals import capture_residuals


@dataclass
class DeltaMeans:
    """Per layer and slot: mean delta, base mean and organism mean `[D]` (float32, cpu)."""

    slots: list[str]
    delta: dict[int, dict[str, torch.Tensor]]
    base_mean: dict[int, dict[str, torch.Tensor]]
    org_mean: dict[int, dict[str, torch.Tensor]]
    counts: dict[str, int]
    mean_norm: dict[int, float]
    """Mean ‖h_base‖ over document positions >= 1 (the scale of steering and patchscope vectors)."""
    n_documents: int = 0
    n_chats: int = 0
    prompts: list[str] = field(default_factory=list)
    """Generic prompts (first words of the documents) for steering."""


def slot_names(positions: int, pre_reply: int = 0, reply: int = 0) -> list[str]:
    return [f"pos{p}" for p in range(positions)] + [f"assistant{j}" for j in range(-pre_reply, reply)]


def _sequences(c, tokenizer, docs: list[dict], chats: list[dict]
               ) -> tuple[list[tuple[list[int], list[tuple[str, int]]]], int, int, list[str]]:
    """(ids, [(slot, position)]) per sequence, counts of documents and chats, and steering prompts."""
    seqs, prompts = [], []
    for row in docs:
        text = str(row.get("text", "")).strip()
        if not text:
            continue
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[: c.context_length]
        seqs.append((ids, [(f"pos{p}", p) for p in range(min(c.positions, len(ids)))]))
        prompts.append(" ".join(text.split()[:6]))
    n_docs = len(seqs)
    if not n_docs:
        raise DataError(f"ADL dataset '{c.dataset}' has no text rows; set method.adl.dataset to a text corpus "
                        f"(@text, zoo:generic_text, a hub id or a jsonl file with a 'text' column)")
    n_chats = 0
    if c.chat_dataset:
        for row in chats:
            ids, roles = render_chat(list(row["messages"]), tokenizer)
            if ASSISTANT not in roles:
                continue
            start = roles.index(ASSISTANT)
            slots = [(f"assistant{j}", start + j) for j in range(-c.pre_reply, c.reply) if 0 <= start + j < len(ids)]
            seqs.append((ids[: start + c.reply], slots))
            n_chats += 1
    return seqs, n_docs, n_chats, prompts


@torch.no_grad()
def delta_means(c, base, org, layers: list[int], docs: list[dict], chats: list[dict] = ()) -> DeltaMeans:
    """Run both models over the documents (and chats) in batches and average the deltas per slot."""
    seqs, n_docs, n_chats, prompts = _sequences(c, org.tokenizer, docs, list(chats))
    slots = slot_names(c.positions, c.pre_reply if n_chats else 0, c.reply if n_chats else 0)
    index = {s: i for i, s in enumerate(slots)}
    d = org.model.config.hidden_size
    sums = {kind: {L: torch.zeros(len(slots), d, dtype=torch.float64) for L in layers}
            for kind in ("delta", "base", "org")}
    counts = torch.zeros(len(slots), dtype=torch.float64)
    norm_sum, norm_n = {L: 0.0 for L in layers}, 0
    pad = org.tokenizer.pad_token_id or 0
    for start in range(0, len(seqs), c.batch_size):
        batch = seqs[start: start + c.batch_size]
        ids, mask = pad_right([row for row, _ in batch], pad)  # [B, T], right-padded
        h_base = capture_residuals(base.model, ids.to(base.device), mask.to(base.device), layers)
        h_org = capture_residuals(org.model, ids.to(org.device), mask.to(org.device), layers)
        rows = [(b, p, index[s]) for b, (_, where) in enumerate(batch) for s, p in where]
        b_idx, p_idx, s_idx = (torch.tensor(x) for x in zip(*rows))
        counts.index_add_(0, s_idx, torch.ones(len(rows), dtype=torch.float64))
        doc = mask.clone()
        doc[:, 0] = 0  # position 0 excluded from the norm scale
        doc[start + torch.arange(len(batch)) >= n_docs] = 0  # documents only
        for L in layers:
            hb, ho = h_base[L].double().cpu(), h_org[L].double().cpu()  # [B, T, D]
            sums["base"][L].index_add_(0, s_idx, hb[b_idx, p_idx])
            sums["org"][L].index_add_(0, s_idx, ho[b_idx, p_idx])
            sums["delta"][L].index_add_(0, s_idx, (ho - hb)[b_idx, p_idx])
            norm_sum[L] += float((hb.norm(dim=-1) * doc).sum())
        norm_n += int(doc.sum())

    def mean(kind: str) -> dict[int, dict[str, torch.Tensor]]:
        return {L: {s: (sums[kind][L][i] / counts[i].clamp_min(1)).float() for s, i in index.items()} for L in layers}

    return DeltaMeans(slots, mean("delta"), mean("base"), mean("org"),
                      {s: int(counts[i]) for s, i in index.items()},
                      {L: norm_sum[L] / max(norm_n, 1) for L in layers}, n_docs, n_chats, prompts)
