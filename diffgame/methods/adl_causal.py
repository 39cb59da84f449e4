"""Does the ADL difference direction matter? The organism's next-token loss with δ̂ projected out of its residual
stream at one layer, against random unit directions projected out, and the base's loss with δ added.

Expected from the literature (Minder et al., arXiv 2510.13900, causal analysis): removing δ̂ raises the organism's
loss on its own data far more than removing random directions, and barely on generic text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffgame.data.sequences import render_chat
from diffgame.models.batching import pad_right
from diffgame.models.residuals import on_output


@dataclass
class CausalEffect:
    """Mean next-token cross-entropy (nats per token) on one dataset under each intervention."""

    organism: float
    """The organism, unchanged."""
    organism_without_delta: float
    """The organism with δ̂ projected out at the layer."""
    organism_without_random: list[float]
    """The organism with each random unit direction projected out instead."""
    base: float
    base_with_delta: float
    """The base with δ added at the layer (every position)."""
    n_tokens: int


def encode(rows: list[dict], tokenizer, context_length: int) -> list[list[int]]:
    """Token ids of documents (`text`) or chats (`messages`, through the chat template), cut to `context_length`."""
    out = []
    for r in rows:
        if r.get("messages"):
            ids, _ = render_chat(list(r["messages"]), tokenizer)
        elif str(r.get("text") or "").strip():
            ids = list(tokenizer(str(r["text"]), add_special_tokens=True)["input_ids"])
        else:
            continue
        if len(ids) > 1:
            out.append(ids[:context_length])
    return out


@torch.inference_mode()
def mean_ce(model, seqs: list[list[int]], pad_id: int, batch_size: int = 16) -> tuple[float, int]:
    """Token-weighted mean next-token cross-entropy of `model` over `seqs`, and the number of predicted tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[i:i + batch_size], pad_id)  # [B, T]
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [B, T-1, V]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                                                         reduction="sum"))
        count += int((target != -100).sum())
    return total / max(count, 1), count


def project_out(direction: torch.Tensor):
    """A residual hook removing the component along `direction` ([D], normalised here): h - (h·u) u."""
    u = direction.float() / direction.float().norm().clamp_min(1e-12)

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        v = u.to(device=hidden.device, dtype=hidden.dtype)
        return hidden - (hidden @ v)[..., None] * v

    return fn


def add(vector: torch.Tensor):
    """A residual hook adding `vector` ([D]) at every position."""
    def fn(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + vector.to(device=hidden.device, dtype=hidden.dtype)

    return fn


def causal_effect(base, org, seqs: list[list[int]], layer: int, delta: torch.Tensor, n_random: int,
                  seed: int = 0, pad_id: int = 0) -> CausalEffect:
    """The interventions of `CausalEffect` at decoder layer `layer` of both models on `seqs`."""
    org_ce, n = mean_ce(org, seqs, pad_id)
    with on_output(org, layer, project_out(delta)):
        without, _ = mean_ce(org, seqs, pad_id)
    gen = torch.Generator().manual_seed(seed)
    randoms = []
    for _ in range(n_random):
        with on_output(org, layer, project_out(torch.randn(delta.shape[0], generator=gen))):
            randoms.append(mean_ce(org, seqs, pad_id)[0])
    base_ce, _ = mean_ce(base, seqs, pad_id)
    with on_output(base, layer, add(delta)):
        base_plus, _ = mean_ce(base, seqs, pad_id)
    return CausalEffect(org_ce, without, randoms, base_ce, base_plus, n)
