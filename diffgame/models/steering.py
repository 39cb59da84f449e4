"""Steer any loaded model by adding a vector to the residual stream after one decoder layer.

`steer(model, vector, layer)` is a context manager over a forward hook on `decoder_layers(model)[layer]`;
ADL, later methods and the app use it. `generate` and `perplexity` are the two measurements steering needs
(samples, and how coherent they stay under a reference model).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from diffgame.errors import ConfigError
from diffgame.models.loading import end_ids
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


@torch.no_grad()
def continue_ids(model, tokenizer, ids: Sequence[int], max_new_tokens: int = 24, do_sample: bool = True,
                 temperature: float = 1.0, seed: int = 0) -> str:
    """The new text a model writes after the token ids `ids` (one sequence, no padding), seeded."""
    device = next(model.parameters()).device
    x = torch.as_tensor([list(ids)], device=device)  # [1, T]
    # a configured end-of-turn token stops the reply too (else the model's own generation config decides)
    stop = {"eos_token_id": end_ids(tokenizer)} if getattr(tokenizer, "diffgame_end_of_turn", None) is not None else {}
    torch.manual_seed(seed)
    gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         do_sample=do_sample, temperature=temperature if do_sample else None,
                         top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, **stop)
    return tokenizer.decode(gen[0, x.shape[1]:], skip_special_tokens=True)


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, seed: int = 0,
             do_sample: bool = True, temperature: float = 1.0) -> list[str]:
    """Continue each prompt (one at a time, so no padding enters the steered positions); new text only."""
    return [continue_ids(model, tokenizer, tokenizer(p).input_ids, max_new_tokens, do_sample, temperature, seed + i)
            for i, p in enumerate(prompts)]


@torch.no_grad()
def perplexity(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
    """Per-sample perplexity of each continuation given its prompt under `model` (the coherence check)."""
    device = next(model.parameters()).device
    out = []
    for prompt, cont in zip(prompts, continuations):
        p_ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
        full = tokenizer(prompt + cont, return_tensors="pt").input_ids[0]
        n_prompt = min(len(p_ids), len(full) - 1)
        if len(full) - n_prompt < 1:
            out.append(float("nan"))
            continue
        ids = full.unsqueeze(0).to(device)  # [1, T]
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)  # [T-1, V]
        target = ids[0, 1:]
        nll = -logp.gather(1, target[:, None])[:, 0][n_prompt - 1:]
        out.append(float(nll.mean().exp()))
    return out


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
    def samples(handle, alpha: float | None) -> list[str]:
        if alpha is None:
            return generate(handle.model, handle.tokenizer, prompts, max_new_tokens, seed=seed)
        with steer(handle.model, vector, layer, scale=alpha):
            return generate(handle.model, handle.tokenizer, prompts, max_new_tokens, seed=seed)

    def ppl(texts: list[str]) -> float:
        values = [v for v in perplexity(base.model, base.tokenizer, prompts, texts) if v == v]
        return sum(values) / max(len(values), 1)

    plain = samples(organism, None)
    ppl_plain = ppl(plain)
    sweep, texts, chosen = [], [], None
    for alpha in sorted(alphas):
        steered = samples(organism, alpha)
        ratio = ppl(steered) / ppl_plain
        sweep.append({"alpha": alpha, "ppl_ratio": ratio, "coherent": ratio <= coherence_factor})
        texts.append(steered)
        if ratio <= coherence_factor:
            chosen = len(sweep) - 1
    coherent = chosen is not None
    best = chosen if coherent else 0
    alpha = sweep[best]["alpha"]
    base_plain, base_steered = samples(base, None), samples(base, alpha)
    rows = [{"prompt": p, "model": "organism", "alpha": alpha, "unsteered": u, "steered": s}
            for p, u, s in zip(prompts, plain, texts[best])]
    rows += [{"prompt": p, "model": "base", "alpha": alpha, "unsteered": u, "steered": s}
             for p, u, s in zip(prompts, base_plain, base_steered)]
    return SteeringSweep(sweep, alpha, sweep[best]["ppl_ratio"], coherent, rows)


def vector_layer(name: str, n_layers: int) -> int:
    """The layer a vector's name points at (`layer_2/...`, `L2`, `layer2`), else the middle layer."""
    m = re.search(r"(?:layer[_/]?|\bL)(\d+)", name)
    if m and int(m.group(1)) < n_layers:
        return int(m.group(1))
    return n_layers // 2
