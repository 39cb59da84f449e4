"""Weight amplification, to make a faint finetuning difference loud: the organism computes as if its weights were
`theta_base + w * (theta_org - theta_base)` (`amplified_weights`), module by module as each one runs, so no third copy
of the weights is held; w = 0 is the base, w = 1 the organism. A LoRA organism is merged at load, so its difference is the adapter's `BA` and `w` scales it.
Logit-diff amplification is `diffgame.models.generation.sample` with `alpha`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from diffgame.errors import ConfigError

AFFINE = (nn.Linear, nn.Embedding, nn.LayerNorm)
"""Modules whose output is affine in their own weights for a fixed input (as are RMSNorms and GPT-2's Conv1D, matched
by class name): for them `base(x) + w (org(x) - base(x))` is what weights `theta_base + w delta` compute."""


def _affine(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, AFFINE) or name.endswith("RMSNorm") or name == "Conv1D"


class _Amplify(nn.Module):
    """A parametrization: `base + w * (theta - base)` on the rows both share (an organism's appended vocabulary rows
    stay as they are)."""

    def __init__(self, base: torch.Tensor, w: float):
        super().__init__()
        self.base, self.w = base, w

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape == self.base.shape:
            return self.base + self.w * (theta - self.base)
        n = self.base.shape[0]
        return torch.cat([self.base + self.w * (theta[:n] - self.base), theta[n:]])


def _mix_outputs(base_module: nn.Module, w: float):
    """A forward hook: the module's output becomes `base(x) + w (org(x) - base(x))`, the base's module run on the
    same input (an organism's appended vocabulary rows, which the base lacks, keep the organism's output)."""
    def hook(module, args, kwargs, out):
        if isinstance(module, nn.Embedding) and base_module.num_embeddings < module.num_embeddings:
            ids = args[0]
            shared = (ids < base_module.num_embeddings).unsqueeze(-1)  # appended tokens keep the organism's rows
            base_out = base_module(ids.clamp(max=base_module.num_embeddings - 1), *args[1:], **kwargs)
            return torch.where(shared, base_out + w * (out - base_out), out)
        base_out = base_module(*args, **kwargs)
        if base_out.shape != out.shape:  # an LM head over an extended vocabulary
            n = base_out.shape[-1]
            return torch.cat([base_out + w * (out[..., :n] - base_out), out[..., n:]], dim=-1)
        return base_out + w * (out - base_out)
    return hook


@contextmanager
def amplified_weights(base_model: nn.Module, org_model: nn.Module, w: float) -> Iterator[nn.Module]:
    """`org_model` computing as if its weights were `theta_base + w * (theta_org - theta_base)` inside the block; its
    weights are never changed, and nothing is left behind after it.

    A module whose output is affine in its weights (linear maps, embeddings, norms) runs beside the base's module on
    the same input and mixes the two outputs, `base(x) + w (org(x) - base(x))`: equal to the amplified weights' output
    up to rounding, with no weights materialised. Any other module's weights are computed as it reads them (a torch
    parametrization, not cached). Memory holds no third copy of the model; w = 1 leaves the organism untouched."""
    if w == 1:
        yield org_model
        return
    base_modules = dict(base_model.named_modules())
    hooks, params = [], []
    for name, module in org_model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        counterpart = base_modules.get(name)
        for pname, param in own:
            other = getattr(counterpart, pname, None)
            if other is None or other.shape[1:] != param.shape[1:] or other.shape[0] > param.shape[0]:
                raise ConfigError(f"cannot amplify the organism's weight {name}.{pname}: the base has no weight of "
                                  f"that name and shape; weight amplification needs an organism of the base's "
                                  f"architecture (a finetune or a LoRA of it)")
            if not _affine(module):
                params.append((module, pname, other.detach()))
        if _affine(module):
            hooks.append((module, counterpart))
    handles = []
    try:
        for module, counterpart in hooks:
            handles.append(module.register_forward_hook(_mix_outputs(counterpart, w), with_kwargs=True))
        for module, pname, other in params:
            parametrize.register_parametrization(module, pname, _Amplify(other, w), unsafe=True)
        yield org_model
    finally:
        for handle in handles:
            handle.remove()
        for module, pname, _ in params:
            if parametrize.is_parametrized(module, pname):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
