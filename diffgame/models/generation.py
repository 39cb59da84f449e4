"""The one generation routine: batched, left-padded sampling with KV caches, from one model or amplified against the base.

Every sampled text in diffgame comes from `sample`: the zoo's behaviour checks, steering samples, the black-box
baseline, amplification, the app's Generate, Steer and Amplify tabs and the agents' questions. Each token is drawn
from `l_org + alpha * (l_org - l_base)` (logit-diff amplification; `alpha = 0` samples the organism itself), both
models stepping over the same prefix with their own KV caches; the base, when given, also scores every drawn token,
which is the coherence check of steering and amplification. Hooks on a model (steering) act on every pass it runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

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
        if l_base is not None:  # a token of an organism's appended vocabulary has no base score (nan)
            logp = torch.log_softmax(l_base.float(), dim=-1)
            at = token.to(l_base.device)
            logprob = logp.gather(1, at.clamp(max=logp.shape[-1] - 1)[:, None])[:, 0]
            logprob = torch.where(at < logp.shape[-1], logprob, torch.nan)
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
        nll, kept, scored = (torch.zeros(len(ids), device=device) for _ in range(3))
        for n, step in enumerate(steps(base_model, org_model, ids.to(device), mask.to(device), alpha, temperature,
                                       generator, use_cache)):
            token = step.token.to(device)
            done |= torch.isin(token, stop)
            live = ~done
            new.append(torch.where(live, token, pad))
            if step.base_logprob is not None:
                logprob = step.base_logprob.to(device)
                counted = live & ~logprob.isnan()
                nll -= torch.where(counted, logprob, 0.0)
                scored += counted
            kept += live
            if done.all() or n + 1 == max_new_tokens:
                break
        tokens = torch.stack(new, dim=1).tolist()  # [B, n], the stop token and after replaced by padding
        for row, length, loss, n_scored in zip(tokens, kept.tolist(), nll.tolist(), scored.tolist()):
            texts.append(tokenizer.decode(row[:int(length)], skip_special_tokens=True).strip())
            nlls.append(loss / n_scored if n_scored else float("nan"))
    k = samples_per_prompt
    return Replies([texts[i:i + k] for i in range(0, len(texts), k)], [nlls[i:i + k] for i in range(0, len(nlls), k)])


def continue_ids(model: nn.Module, tokenizer, ids: Sequence[int], max_new_tokens: int = 24, do_sample: bool = True,
                 temperature: float = 1.0, seed: int = 0) -> str:
    """The text one model writes after the token ids `ids`, cut at its first special token (greedy without
    `do_sample`), seeded."""
    replies = sample(None, model, tokenizer, [list(ids)], max_new_tokens=max_new_tokens,
                     temperature=temperature if do_sample else 0.0, seed=seed)
    return replies.texts[0][0]
