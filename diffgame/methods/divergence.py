"""Divergence between two models' next-token distributions per token, from their logits, in fp32 nats.

Used by the `kl` method and the app's live probe. `token_divergence` is eager PyTorch in the fewest passes over
[n, V]; `fused_token_divergence` is the same math through `torch.compile`; `divergence_fn` picks one.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Compile = Literal["auto", "on", "off"]


def divergence_fn(compile: str = "auto"):
    """The row-divergence function: compiled (fused) or eager. Under `auto` a compile failure (no Triton or C++
    toolchain) warns once and falls back to eager."""
    if compile == "on":
        return fused_token_divergence
    if compile == "off":
        return token_divergence
    return _fused_or_eager


def token_divergence(logits_org: torch.Tensor, logits_base: torch.Tensor, kind: str = "kl",
                     temperature: float = 1.0) -> torch.Tensor:
    """Divergence per row of two [n, V] logit tensors, in fp32 nats -> [n].

    Two fused fp32 log-softmaxes, then in-place work on their outputs: the fewest passes over [n, V] that
    eager PyTorch allows (the divergence is memory-bound, the LM head compute-bound).
    """
    if kind not in ("kl", "reverse_kl", "js"):
        raise ValueError(f"unknown divergence {kind!r}; known: kl, reverse_kl, js")
    if kind == "reverse_kl":
        logits_org, logits_base = logits_base, logits_org
    lp, lq = (_log_probs(x, temperature) for x in (logits_org, logits_base))
    if kind == "js":
        lm = torch.logaddexp(lp, lq).sub_(math.log(2.0))
        return 0.5 * (F.kl_div(lm, lp, log_target=True, reduction="none").sum(-1)
                      + F.kl_div(lm, lq, log_target=True, reduction="none").sum(-1))
    torch.sub(lp, lq, out=lq)  # log p - log q
    return torch.linalg.vecdot(lp.exp_(), lq)  # sum_v p_v (log p_v - log q_v)


def _divergence_math(logits_org: torch.Tensor, logits_base: torch.Tensor, kind: str,
                     temperature: float) -> torch.Tensor:
    """`token_divergence` written out of pure elementwise ops and row reductions, for the compiler to fuse.

    Compiled, each row's logits are read a few times in their own dtype and no fp32 [n, V] tensor is written.
    """
    if kind == "reverse_kl":
        logits_org, logits_base = logits_base, logits_org
    x, y = logits_org.float() / temperature, logits_base.float() / temperature
    lp = x - torch.logsumexp(x, -1, keepdim=True)
    lq = y - torch.logsumexp(y, -1, keepdim=True)
    if kind == "js":
        lm = torch.logaddexp(lp, lq) - math.log(2.0)
        return 0.5 * (lp.exp() * (lp - lm) + lq.exp() * (lq - lm)).sum(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


_compiled_math = None


def fused_token_divergence(logits_org: torch.Tensor, logits_base: torch.Tensor, kind: str = "kl",
                           temperature: float = 1.0) -> torch.Tensor:
    """`token_divergence` through `torch.compile` (Triton kernels on CUDA, C++ on the CPU); same values."""
    global _compiled_math
    if kind not in ("kl", "reverse_kl", "js"):
        raise ValueError(f"unknown divergence {kind!r}; known: kl, reverse_kl, js")
    if _compiled_math is None:
        # default dynamic=None: a second chunk length recompiles once with the row count symbolic, while the
        # vocabulary size stays a constant the kernels are specialised on
        _compiled_math = torch.compile(_divergence_math)
    return _compiled_math(logits_org, logits_base, kind, float(temperature))


_compile_failure: str | None = None
"""Why compiling the divergence failed in this process, if it did: `auto` then stays eager."""


def _fused_or_eager(*args) -> torch.Tensor:
    """`compile: auto`: the fused divergence until compiling fails once (warned), then the eager one."""
    global _compile_failure
    if _compile_failure is None:
        try:
            return fused_token_divergence(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure; eager computes the same values
            _compile_failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("torch.compile of the divergence failed (%s); computing it eagerly", _compile_failure)
    return token_divergence(*args)


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 log-softmax of `logits / temperature` (a new tensor; the cast is fused where the backend can)."""
    if temperature != 1.0:
        logits = logits.float() / temperature
    return F.log_softmax(logits, dim=-1, dtype=torch.float32)
