"""Steer any loaded model by adding a vector to the residual stream after one decoder layer.

`steer(model, vector, layer)` is a context manager over a forward hook on `decoder_layers(model)[layer]`;
ADL, later methods and the app use it. `generate` and `perplexity` are the two measurements steering needs
(samples, and how coherent they stay under a reference model).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from diffgame.errors import ConfigError
from diffgame.models import decoder_layers

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
    block = _block(model, layer, "steering")
    if vector.ndim != 1:
        raise ConfigError(f"steering vector must be 1-D [d_model], got shape {tuple(vector.shape)}")
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        calls["n"] += 1
        if mode == "prompt" and calls["n"] > 1:
            return output
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        if hidden.shape[-1] != vector.shape[0]:
            raise ConfigError(f"steering vector has {vector.shape[0]} dims but layer {layer} "
                              f"outputs {hidden.shape[-1]}; use a vector from this model family")
        hidden = hidden + scale * vector.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with _hooked(block, hook):
        yield


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, seed: int = 0,
             do_sample: bool = True, temperature: float = 1.0) -> list[str]:
    """Continue each prompt (one at a time, so no padding enters the steered positions); new text only."""
    device = next(model.parameters()).device
    out = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)  # [1, T]
        torch.manual_seed(seed + i)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=do_sample, temperature=temperature if do_sample else None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


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
    block = _block(model, layer, "patch")

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        hidden = hidden.clone()
        hidden[:, position] = vector.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with _hooked(block, hook):
        yield


def _block(model: torch.nn.Module, layer: int, what: str) -> torch.nn.Module:
    """Decoder block `layer` (negative counts from the end), or a ConfigError naming the valid range."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ConfigError(f"{what} layer {layer} is out of range for a model with {len(layers)} layers "
                          f"(valid: 0..{len(layers) - 1})")
    return layers[layer]


@contextmanager
def _hooked(block: torch.nn.Module, hook) -> Iterator[None]:
    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
