"""Per-token divergence between the organism's and the base's next-token distributions.

Both models re-run the store's token sequences (batched by similar length, no padding counted). The LM
head and the divergence are computed over chunks of tokens, so memory stays bounded even for 262k-token
vocabularies: a chunk holds at most `chunk_elements` logits per model. The divergence is fp32 math fused by
`torch.compile` into a few passes over the logits (eager PyTorch where compiling is off or fails).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import pandas as pd
import torch
import torch.nn.functional as F

from diffgame import plots, stats
from diffgame.errors import ConfigError
from diffgame.evidence import RankedTokens
from diffgame.examples import TopKSequences, token_decoder
from diffgame.methods.base import Method, MethodContext, MethodResult
from diffgame.models import unembedding

log = logging.getLogger(__name__)


@dataclass
class KLConfig:
    """Which divergence, at what temperature, and how much to compute at once."""

    divergence: Literal["kl", "reverse_kl", "js"] = "kl"
    """`kl` = KL(P_org || P_base); `reverse_kl` = KL(P_base || P_org); `js` = Jensen-Shannon (nats)."""
    temperature: float = 1.0
    """Both models' logits are divided by this before the softmax."""
    batch_tokens: int = 8192
    """Padded tokens per forward pass (sequences are batched by similar length)."""
    chunk_elements: int = 0
    """Logits per chunk per model (tokens per chunk = this // vocab size); bounds memory. 0 = auto: on the CPU
    2**19 (cache-sized) but at least 256 tokens (smaller LM-head matmuls re-read the unembedding too often); on
    an accelerator 2**28 (1 GiB per model in fp32), where small chunks starve the LM-head matmul."""
    top_k_examples: int = 20
    """Max-activating examples kept per ranking (max and mean per-token divergence)."""
    min_token_count: int = 5
    """Tokens seen fewer times are left out of the tokens-by-mean-divergence table."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Fuse the divergence into a few kernels with `torch.compile` (Triton on CUDA, C++ on the CPU; no fp32
    [n, V] intermediates): on a GPU the eager fp32 passes over a 262k vocabulary cost a third of the forwards.
    `auto`: compiled, falling back to eager (with a warning) where compiling fails; `on`: compiled or an error."""

    def __post_init__(self):
        for name in ("temperature", "batch_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"method.kl.{name} must be > 0, got {getattr(self, name)}")
        if self.chunk_elements < 0:
            raise ConfigError(f"method.kl.chunk_elements must be >= 0 (0: auto), got {self.chunk_elements}")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"method.kl.compile must be one of auto, on, off; got {self.compile!r}")

    def divergence_fn(self):
        """The row-divergence function: compiled (fused) or eager. Under `auto` a compile failure (no Triton or
        C++ toolchain) warns once and falls back to eager."""
        if self.compile == "on":
            return fused_token_divergence
        if self.compile == "off":
            return token_divergence
        return _fused_or_eager

    def chunk_tokens(self, vocab: int, device: torch.device) -> int:
        """Tokens per divergence chunk for a `vocab`-sized head on `device`."""
        if self.chunk_elements:
            return max(1, self.chunk_elements // vocab)
        if device.type == "cpu":
            return max(256, 2 ** 19 // vocab)
        return max(1, 2 ** 28 // vocab)


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


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """LM head on final (already normed) hidden states [n, D] -> [n, V], with Gemma's soft-capping if set."""
    logits = unembedding(model)(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Sequence indices grouped longest first so that batch size x longest length <= `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.inference_mode()
def per_token_divergence(base_model, org_model, input_ids: torch.Tensor, seq_offsets: torch.Tensor,
                         config: KLConfig) -> torch.Tensor:
    """Divergence of the next-token distributions at every token of a flat stream -> [N] fp32 (CPU).

    `input_ids` [N] holds sequences back to back; `seq_offsets` [S+1] marks where each starts and ends.
    """
    device = next(base_model.parameters()).device
    offsets = seq_offsets.tolist()
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    out = torch.zeros(len(input_ids), dtype=torch.float32)
    vocab = unembedding(base_model).weight.shape[0]
    chunk = config.chunk_tokens(vocab, device)
    divergence = config.divergence_fn()
    for batch in length_batches(lengths, config.batch_tokens):
        width = lengths[batch[0]]
        ids = torch.full((len(batch), width), 0, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            ids[row, :lengths[s]] = input_ids[offsets[s]:offsets[s + 1]]
            mask[row, :lengths[s]] = 1
        ids, mask = ids.to(device), mask.to(device)
        # final hidden states of the valid tokens, row-major: [n, D]
        h_base = base_model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        h_org = org_model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        div = torch.cat([divergence(lm_logits(org_model, h_org[i:i + chunk]),
                                    lm_logits(base_model, h_base[i:i + chunk]),
                                    config.divergence, config.temperature)
                         for i in range(0, len(h_base), chunk)])
        where = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in batch])
        out[where] = div.float().cpu()
    return out


class KLMethod(Method):
    """Where do the organism's next-token predictions diverge from the base's, and on which tokens?"""

    needs_store = True
    needs_models = True
    headline: ClassVar[tuple[str, ...]] = ("kl/all/mean", "kl/*/role/assistant/mean", "kl/*/role/user/mean",
                                           "kl/organism/mean")

    def run(self, ctx: MethodContext) -> MethodResult:
        from diffgame.data import ROLES

        cfg, store = self.config, ctx.store
        scores, roles, positions, token_ids = {}, {}, {}, {}
        top = TopKSequences(cfg.top_k_examples)
        for dataset in store.datasets:
            ts = store.tokens(dataset)
            kl = per_token_divergence(ctx.base.model, ctx.organism.model, ts.input_ids, ts.seq_offsets, cfg)
            offsets = ts.seq_offsets.tolist()
            for s, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
                top.offer(dataset, int(ts.sequence_ids[s]), ts.input_ids[a:b], ts.roles[a:b], kl[a:b])
            scores[dataset], roles[dataset] = kl, torch.as_tensor(ts.roles)
            positions[dataset], token_ids[dataset] = torch.as_tensor(ts.positions), torch.as_tensor(ts.input_ids)
        decode = token_decoder(ctx.base.tokenizer)
        table = stats.stats_table(scores, roles, positions, ROLES)
        tokens = stats.by_token(torch.cat(list(scores.values())), torch.cat(list(token_ids.values())),
                                cfg.min_token_count).head(1000)
        tokens.insert(1, "token", decode(tokens["token_id"].tolist()))
        by_pos = stats.by_position(scores, positions)
        examples = top.examples(decode, ROLES)
        name = cfg.divergence
        return MethodResult(
            metrics=stats.metrics_from_table(table, "kl"),
            tables={"stats": table, "tokens": tokens, "positions": by_pos},
            examples={"max_kl": examples["max"], "mean_kl": examples["mean"]},
            figures={
                "distribution": plots.distribution(scores, f"per-token {name} (nats)", f"{name} by dataset", log_x=True),
                "positions": plots.profile(by_pos, "position", "mean", "dataset", f"mean {name}",
                                           f"{name} by position"),
                "roles": plots.role_comparison(table, f"mean {name}", f"{name} by token role", log_y=True),
            },
            ranked_tokens={"tokens_by_mean_kl": _ranked(tokens.head(100))},
        )


def _ranked(tokens: pd.DataFrame) -> RankedTokens:
    return RankedTokens(tokens["token_id"].astype(int).tolist(), tokens["token"].tolist(),
                        tokens["mean"].astype(float).tolist())
