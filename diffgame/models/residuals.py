"""Hooks on a model's residual stream: read the output of decoder layers (optionally stopping the forward after the
deepest one), add or replace a vector there. Extraction, ADL, steering, patchscope and the live probe share them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from diffgame.errors import ConfigError
from diffgame.models.loading import decoder_layers


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early."""


def block(model: nn.Module, layer: int, what: str = "layer") -> nn.Module:
    """Decoder block `layer` (negative counts from the end), or a ConfigError naming the valid range."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ConfigError(f"{what} {layer} is out of range for a model with {len(layers)} layers "
                          f"(valid: 0..{len(layers) - 1})")
    return layers[layer]


@contextmanager
def on_output(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None],
              what: str = "layer") -> Iterator[None]:
    """While inside, `fn(hidden [B, T, D])` runs on decoder block `layer`'s output; a tensor it returns replaces it."""
    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return output
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block(model, layer, what).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def capture_residuals(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      layers: list[int]) -> dict[int, torch.Tensor]:
    """Residual stream after each of `layers` (absolute indices): {layer: [B, T, D]}, in the model's dtype.

    The LM head and every layer past the deepest requested one are never computed: the deepest hook raises."""
    blocks = decoder_layers(model)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad or not layers:
        raise ConfigError(f"layers {list(layers)} out of range for a model with {len(blocks)} layers "
                          f"(valid: 0..{len(blocks) - 1}); fix preprocessing.layers")
    deepest, out = max(layers), {}

    def hook(index: int):
        def record(module, args, output):
            out[index] = output[0] if isinstance(output, tuple) else output  # [B, T, D]
            if index == deepest:
                raise _StopForward

        return record

    handles = [blocks[i].register_forward_hook(hook(i)) for i in sorted(set(layers))]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {i: out[i] for i in layers}
