"""Steer any loaded model by adding a vector to the residual stream after one decoder layer.

`steer(model, vector, layer)` is a context manager over a forward hook on `decoder_layers(model)[layer]`;
ADL, the dictionaries, the app and the agents use it. `coherent_sweep` picks the strongest strength whose samples stay
coherent under the base (samples and their base scores come from `diffgame.models.generation.sample`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from diffgame.errors import ConfigError
from diffgame.models.generation import Replies, sample
from diffgame.models.residuals import on_output

Mode = Literal["all", "prompt"]
MODES = ("all", "prompt")


@contextmanager
def steer(model: torch.nn.Module, vector: torch.Tensor, layer: int, scale: float = 1.0,
          mode: Mode = "all") -> Iterator[None]:
    """Add `scale * vector` ([D]) to the output of decoder layer `layer` while the block runs.

    `all`: every position of every forward pass (prompt and generated tokens).
    `prompt`: only the positions of the first forward pass seen (the prompt pass of `generate`,
    which then extends a KV cache one token at a time), so generated tokens run unsteered.
    """
    if mode not in MODES:
        raise ConfigError(f"invalid steering mode {mode!r}; valid: {', '.join(MODES)}")
    if vector.ndim != 1:
        raise ConfigError(f"steering vector must be 1-D [d_model], got shape {tuple(vector.shape)}")
    calls = {"n": 0}

    def add(hidden: torch.Tensor) -> torch.Tensor | None:  # [B, T, D]
        calls["n"] += 1
        if mode == "prompt" and calls["n"] > 1:
            return None
        if hidden.shape[-1] != vector.shape[0]:
            raise ConfigError(f"steering vector has {vector.shape[0]} dims but layer {layer} "
                              f"outputs {hidden.shape[-1]}; use a vector from this model family")
        return hidden + scale * vector.to(device=hidden.device, dtype=hidden.dtype)

    with on_output(model, layer, add, what="steering layer"):
        yield


@contextmanager
def patch(model: torch.nn.Module, vector: torch.Tensor, layer: int, position: int = -1) -> Iterator[None]:
    """Replace the residual after decoder layer `layer` at `position` with `vector` ([D]) (patchscope)."""
    def replace(hidden: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        hidden = hidden.clone()
        hidden[:, position] = vector.to(device=hidden.device, dtype=hidden.dtype)
        return hidden

    with on_output(model, layer, replace, what="patch layer"):
        yield


@dataclass
class SteeringSweep:
    """Steering strengths tried on the organism, the one kept, and both models' samples with it."""

    sweep: list[dict]
    """Per strength: `alpha`, `ppl_ratio` (steered ÷ unsteered perplexity under the base), `coherent`."""
    alpha: float
    """The largest coherent strength (the smallest tried when none is coherent)."""
    ppl_ratio: float
    coherent: bool
    samples: list[dict]
    """Rows `prompt, model (organism|base), alpha, unsteered, steered` at `alpha`."""


def coherent_sweep(base, organism, vector: torch.Tensor, layer: int, prompts: Sequence[str],
                   alphas: Sequence[float], max_new_tokens: int = 24, coherence_factor: float = 2.0,
                   seed: int = 0) -> SteeringSweep:
    """Steer the organism with `alpha * vector` for each strength, keep the largest whose samples' perplexity under
    the base stays within `coherence_factor` of the unsteered samples', then sample both models with it.

    `base`, `organism`: loaded models with `.model` and `.tokenizer`."""
    def samples(handle, alpha: float | None, scorer=None) -> Replies:
        """One reply per prompt from `handle`'s model (steered by `alpha`), scored under `scorer` when given."""
        ids = [handle.tokenizer(p).input_ids for p in prompts]
        with steer(handle.model, vector, layer, scale=alpha) if alpha is not None else nullcontext():
            return sample(scorer, handle.model, handle.tokenizer, ids, max_new_tokens=max_new_tokens, seed=seed)

    def texts_of(replies: Replies) -> list[str]:
        return [row[0] for row in replies.texts]

    plain = samples(organism, None, base.model)
    ppl_plain = plain.perplexity()
    sweep, texts, chosen = [], [], None
    for alpha in sorted(alphas):
        steered = samples(organism, alpha, base.model)
        ratio = steered.perplexity() / ppl_plain
        sweep.append({"alpha": alpha, "ppl_ratio": ratio, "coherent": ratio <= coherence_factor})
        texts.append(texts_of(steered))
        if ratio <= coherence_factor:
            chosen = len(sweep) - 1
    coherent = chosen is not None
    best = chosen if coherent else 0
    alpha = sweep[best]["alpha"]
    base_plain, base_steered = texts_of(samples(base, None)), texts_of(samples(base, alpha))
    rows = [{"prompt": p, "model": "organism", "alpha": alpha, "unsteered": u, "steered": s}
            for p, u, s in zip(prompts, texts_of(plain), texts[best])]
    rows += [{"prompt": p, "model": "base", "alpha": alpha, "unsteered": u, "steered": s}
             for p, u, s in zip(prompts, base_plain, base_steered)]
    return SteeringSweep(sweep, alpha, sweep[best]["ppl_ratio"], coherent, rows)


def vector_layer(name: str, n_layers: int) -> int:
    """The layer a vector's name points at (`layer_2/...`, `L2`, `layer2`), else the middle layer."""
    m = re.search(r"(?:layer[_/]?|\bL)(\d+)", name)
    if m and int(m.group(1)) < n_layers:
        return int(m.group(1))
    return n_layers // 2
