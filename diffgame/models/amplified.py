"""Amplify what a finetuning changed at sampling time, so that a faint difference becomes loud in text.

Logit-diff amplification (model-diff amplification): each next token is drawn from `l_org + alpha * (l_org - l_base)`,
both models stepping over the same prefix with their own KV caches; `alpha = 0` samples the organism itself.
Weight amplification: the organism computes as if its weights were `theta_base + w * (theta_org - theta_base)`
(`amplified_weights`), module by module as each one runs, so no third copy of the weights is held; w = 0 is the base,
w = 1 the organism. A LoRA organism is merged at load, so its difference is the adapter's `BA` and `w` scales it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from diffgame.errors import ConfigError
from diffgame.models.batching import pad_left
from diffgame.models.loading import stop_ids


class _Stepper:
    """One model extending a batch a token at a time: with its own KV cache, or (uncached) over the whole prefix."""

    def __init__(self, model: nn.Module, use_cache: bool = True):
        self.model, self.use_cache, self.cache = model, use_cache, None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits `[B, V]` after `ids` `[B, T]` (left-padded; `mask` `[B, T]`)."""
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        if not self.use_cache:
            return self.model(input_ids=ids, attention_mask=mask, position_ids=position, logits_to_keep=1).logits[:, -1]
        first = self.cache is None
        x, pos = (ids, position) if first else (ids[:, -1:], position[:, -1:])  # later steps feed the newest token
        out = self.model(input_ids=x, attention_mask=mask, position_ids=pos, cache=self.cache, use_cache=True,
                         logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1]


def amplify_logits(l_org: torch.Tensor, l_base: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """`l_org + alpha * (l_org - l_base)` in float32 on the vocabulary both share (the organism's alone when
    `l_base` is None or `alpha` is 0)."""
    if l_base is None or alpha == 0:
        return l_org.float()
    shared = min(l_org.shape[-1], l_base.shape[-1])
    org = l_org[..., :shared].float()
    return org + alpha * (org - l_base[..., :shared].float().to(org.device))


@dataclass
class Step:
    """One sampling step of a batch."""

    token: torch.Tensor
    """The drawn tokens `[B]`."""
    logits: torch.Tensor
    """The (amplified) logits they were drawn from, before the temperature `[B, V]`."""
    base_logprob: torch.Tensor | None
    """Each drawn token's log-probability under the base `[B]` (None when the base is not run)."""


@torch.no_grad()
def steps(base_model: nn.Module | None, org_model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
          alpha: float = 0.0, temperature: float = 1.0, generator: torch.Generator | None = None,
          use_cache: bool = True) -> Iterator[Step]:
    """Sample from the amplified logits step after step (endless; the caller stops), starting from left-padded
    prompts `ids` `[B, T]`. The base runs beside the organism when given: it amplifies (`alpha` != 0) and scores each
    drawn token (the coherence check). Temperature 0 decodes greedily."""
    org = _Stepper(org_model, use_cache)
    base = _Stepper(base_model, use_cache) if base_model is not None else None
    while True:
        l_org = org(ids, mask)
        l_base = base(ids, mask) if base is not None else None
        logits = amplify_logits(l_org, l_base, alpha)
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        logprob = None
        if l_base is not None:
            logprob = torch.log_softmax(l_base.float(), dim=-1).gather(1, token[:, None].to(l_base.device))[:, 0]
        yield Step(token, logits, logprob)
        ids = torch.cat([ids, token[:, None].to(ids.device)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


@dataclass
class Replies:
    """Sampled replies per prompt, and each one's mean negative log-likelihood under the base (nan: empty reply)."""

    texts: list[list[str]]
    base_nll: list[list[float]]

    def perplexity(self) -> float:
        """Mean over replies of the base's perplexity of each (empty replies left out; nan when all are)."""
        values = [math.exp(n) for row in self.base_nll for n in row if n == n]
        return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def sample(base_model: nn.Module | None, org_model: nn.Module, tokenizer, prompts: Sequence[Sequence[int]],
           alpha: float = 0.0, samples_per_prompt: int = 1, max_new_tokens: int = 48, temperature: float = 1.0,
           seed: int = 0, batch_size: int = 16, use_cache: bool = True) -> Replies:
    """`samples_per_prompt` replies to each prompt (token ids) from the amplified logits, cut at the first special
    token; seeded per batch, so the same seed gives the same replies. `base_model` None samples `org_model` alone
    (no base scores); `alpha` 0 samples the organism and scores it under the base."""
    device = next(org_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = torch.tensor(sorted(stop_ids(tokenizer)), dtype=torch.long, device=device)
    rows = [list(p) for p in prompts for _ in range(samples_per_prompt)]  # each prompt's samples together
    texts, nlls = [], []
    for b, start in enumerate(range(0, len(rows), batch_size)):
        ids, mask = pad_left(rows[start:start + batch_size], pad)
        generator = torch.Generator(device).manual_seed(seed + b)
        new, done = [], torch.zeros(len(ids), dtype=torch.bool, device=device)
        nll, kept = torch.zeros(len(ids), device=device), torch.zeros(len(ids), device=device)
        for n, step in enumerate(steps(base_model, org_model, ids.to(device), mask.to(device), alpha, temperature,
                                       generator, use_cache)):
            token = step.token.to(device)
            done |= torch.isin(token, stop)
            live = ~done
            new.append(torch.where(live, token, pad))
            if step.base_logprob is not None:
                nll -= step.base_logprob.to(device) * live
            kept += live
            if done.all() or n + 1 == max_new_tokens:
                break
        tokens = torch.stack(new, dim=1).tolist()  # [B, n], the stop token and after replaced by padding
        for row, length, loss in zip(tokens, kept.tolist(), nll.tolist()):
            texts.append(tokenizer.decode(row[:int(length)], skip_special_tokens=True).strip())
            nlls.append(loss / length if length and base_model is not None else float("nan"))
    k = samples_per_prompt
    return Replies([texts[i:i + k] for i in range(0, len(texts), k)], [nlls[i:i + k] for i in range(0, len(nlls), k)])


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
