"""Capture residual-stream outputs of chosen decoder layers, stopping the forward after the deepest one.

The LM head (and every layer past the deepest requested one) is never computed: a forward hook on the
deepest layer raises after recording its output.
"""

from __future__ import annotations

import torch
from torch import nn

from diffgame.errors import ConfigError
from diffgame.models import decoder_layers


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early."""


def capture_residuals(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      layers: list[int]) -> dict[int, torch.Tensor]:
    """Residual stream after each of `layers` (absolute indices): {layer: [B, T, D]}, in the model's dtype."""
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
