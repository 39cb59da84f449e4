"""Read a residual-stream direction as tokens: logit lens and patchscope.

Both turn a vector `[D]` into a ranked token list (`RankedTokens`), so ADL deltas, crosscoder latents
and SAE decoder rows are read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffgame.models.loading import logits_from_residual
from diffgame.models.steering import patch
from diffgame.records.evidence import RankedTokens

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
"""Patchscope's target prompt (Ghandeharioun et al. 2024): the model repeats whatever the last token encodes."""


def top_tokens(probs: torch.Tensor, tokenizer, k: int) -> RankedTokens:
    """The k most probable tokens of a distribution `[V]`, best first."""
    p, ids = probs.float().topk(min(k, probs.shape[-1]))
    ids = ids.tolist()
    return RankedTokens(ids, tokenizer.convert_ids_to_tokens(ids), [float(x) for x in p])


@torch.no_grad()
def logit_lens(model, vectors: torch.Tensor) -> torch.Tensor:
    """softmax(U · norm(v)) for each row of `vectors` [N, D] -> probabilities [N, V] (fp32)."""
    param = next(model.parameters())
    logits = logits_from_residual(model, vectors.to(device=param.device, dtype=param.dtype))
    return torch.softmax(logits.float(), dim=-1).cpu()


@dataclass
class PatchscopeSweep:
    """A patchscope readout of one vector over a sweep of scales, and the scale the criterion chose."""

    scales: list[float]
    readouts: list[RankedTokens]
    """Top tokens after patching `scale * norm * v̂`, one per scale."""
    stability: list[float]
    """Mean Jaccard overlap of a scale's top-k with its neighbours' (the selection criterion)."""
    chosen: int
    """Index into `scales` of the chosen scale."""

    @property
    def best(self) -> RankedTokens:
        return self.readouts[self.chosen]


@torch.no_grad()
def patchscope(model, tokenizer, vector: torch.Tensor, layer: int, norm: float, scales: Sequence[float],
               k: int = 20, prompt: str = IDENTITY_PROMPT) -> PatchscopeSweep:
    """Patch `scale * norm * v̂` into the prompt's last token after `layer`; read the next token per scale.

    Scale choice (offline, no grader): the scale whose top-k set agrees most with its neighbouring
    scales' (mean Jaccard), ties to the smaller scale. Too small a scale reads the prompt's own answer,
    too large a scale saturates into noise; the stable middle is the readout that does not hinge on the scale.
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)  # [1, T]
    unit = vector.float() / vector.float().norm().clamp_min(1e-12)
    readouts = []
    for s in scales:
        with patch(model, unit * (s * norm), layer, position=-1):
            logits = model(ids).logits[0, -1]  # [V]
        readouts.append(top_tokens(torch.softmax(logits.float(), -1), tokenizer, k))
    sets = [set(r.token_ids) for r in readouts]

    def jaccard(a: set, b: set) -> float:
        return len(a & b) / max(len(a | b), 1)

    stability = []
    for i, s in enumerate(sets):
        neigh = [sets[j] for j in (i - 1, i + 1) if 0 <= j < len(sets)]
        stability.append(sum(jaccard(s, n) for n in neigh) / max(len(neigh), 1))
    chosen = max(range(len(scales)), key=lambda i: (stability[i], -i))
    return PatchscopeSweep(list(scales), readouts, stability, chosen)
