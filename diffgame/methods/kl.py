"""Per-token divergence between the organism's and the base's next-token distributions.

Both models re-run the store's token sequences (batched by similar length, no padding counted). The LM
head and the divergence are computed over chunks of tokens, so memory stays bounded even for 262k-token
vocabularies: a chunk holds at most `chunk_elements` logits per model. The divergence is fp32 math fused by
`torch.compile` into a few passes over the logits (eager PyTorch where compiling is off or fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pandas as pd
import torch

from diffgame.data.sequences import ROLES
from diffgame.errors import ConfigError
from diffgame.methods import plots, stats
from diffgame.methods.base import Method, MethodContext, MethodResult
from diffgame.methods.divergence import divergence_fn
from diffgame.models.paired import default_chunk_tokens, logit_chunks, shared_vocab, vocab_size
from diffgame.records.evidence import RankedTokens
from diffgame.records.examples import TopKSequences, token_decoder
from diffgame.records.ranges import Checked, Range, bounded, ge, gt


@dataclass
class KLConfig(Checked):
    """Which divergence, at what temperature, and how much to compute at once."""

    SECTION = "method.kl"

    divergence: Literal["kl", "reverse_kl", "js"] = "kl"
    """`kl` = KL(P_org || P_base); `reverse_kl` = KL(P_base || P_org); `js` = Jensen-Shannon (nats)."""
    temperature: float = bounded(gt(0), 1.0)
    """Both models' logits are divided by this before the softmax."""
    batch_tokens: int = bounded(gt(0), 8192)
    """Padded tokens per forward pass (sequences are batched by similar length)."""
    chunk_elements: int = bounded(ge(0, "0: auto"), 0)
    """Logits per chunk per model (tokens per chunk = this // vocab size); bounds memory. 0 = auto: on the CPU
    2**19 (cache-sized) but at least 256 tokens (smaller LM-head matmuls re-read the unembedding too often); on
    an accelerator 2**28 (1 GiB per model in fp32), where small chunks starve the LM-head matmul."""
    top_k_examples: int = bounded(ge(0), 20)
    """Max-activating examples kept per ranking (max and mean per-token divergence)."""
    min_token_count: int = bounded(ge(0), 5)
    """Tokens seen fewer times are left out of the tokens-by-mean-divergence table."""
    promoted_share: float = bounded(Range(0, 1, note="0: skip"), 0.1)
    """Share of each chunk's tokens, the highest-divergence ones, at which the organism-minus-base next-token
    probabilities are averaged: the output tokens the organism promotes where it diverges (0 skips it)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Fuse the divergence into a few kernels with `torch.compile` (Triton on CUDA, C++ on the CPU; no fp32
    [n, V] intermediates): on a GPU the eager fp32 passes over a 262k vocabulary cost a third of the forwards.
    `auto`: compiled, falling back to eager (with a warning) where compiling fails; `on`: compiled or an error."""

    def __post_init__(self):
        super().__post_init__()
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"method.kl.compile must be one of auto, on, off; got {self.compile!r}")

    def divergence_fn(self):
        """The row-divergence function this config asks for (`diffgame.methods.divergence.divergence_fn`)."""
        return divergence_fn(self.compile)

    def chunk_tokens(self, vocab: int, device: torch.device) -> int:
        """Tokens per divergence chunk for a `vocab`-sized head on `device`."""
        return default_chunk_tokens(vocab, device, self.chunk_elements)


@dataclass
class Promoted:
    """Running sum of organism-minus-base next-token probabilities at the highest-divergence positions."""

    shift: torch.Tensor
    """[V] fp32 sum of p_org - p_base."""
    positions: int = 0

    def add(self, logits_org: torch.Tensor, logits_base: torch.Tensor, div: torch.Tensor, share: float,
            temperature: float) -> None:
        """Add the rows of the chunk's top `share` of divergence (at least one)."""
        top = div.topk(max(1, round(len(div) * share))).indices
        p_org = torch.softmax(logits_org[top].float() / temperature, -1)
        p_base = torch.softmax(logits_base[top].float() / temperature, -1)
        if self.shift.device != p_org.device:  # summed where the logits are: no host round trip per chunk
            self.shift = self.shift.to(p_org.device)
        self.shift += (p_org - p_base).sum(0)
        self.positions += len(top)

    def mean(self) -> torch.Tensor:
        return self.shift.cpu() / max(self.positions, 1)


@torch.inference_mode()
def per_token_divergence(base_model, org_model, input_ids: torch.Tensor, seq_offsets: torch.Tensor,
                         config: KLConfig, promoted: Promoted | None = None, keep: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Divergence of the next-token distributions at every token of a flat stream -> [N] fp32 (CPU).

    `input_ids` [N] holds sequences back to back; `seq_offsets` [S+1] marks where each starts and ends. With
    `promoted`, the probability shifts at each chunk's highest-divergence positions are added to it, among the
    tokens `keep` [N] bool marks (all when None).
    """
    device = next(base_model.parameters()).device
    out = torch.zeros(len(input_ids), dtype=torch.float32, device=device)  # copied to the host once, at the end
    chunk = config.chunk_tokens(vocab_size(base_model), device)
    divergence = config.divergence_fn()
    for where, logits_org, logits_base in logit_chunks(base_model, org_model, input_ids, seq_offsets,
                                                       config.batch_tokens, chunk):
        div = divergence(logits_org, logits_base, config.divergence, config.temperature).float()
        out[where.to(device, non_blocking=True)] = div
        if promoted is not None and config.promoted_share > 0:
            k = keep[where] if keep is not None else None  # decided on the host: no wait on the device
            if k is None or bool(k.all()):
                promoted.add(logits_org, logits_base, div, config.promoted_share, config.temperature)
            elif bool(k.any()):
                rows = k.nonzero().squeeze(1).to(div.device, non_blocking=True)
                promoted.add(logits_org[rows], logits_base[rows], div[rows], config.promoted_share,
                             config.temperature)
    return out.cpu()


class KLMethod(Method):
    """Where do the organism's next-token predictions diverge from the base's, and on which tokens?"""

    needs_store = True
    needs_models = True
    headline: ClassVar[tuple[str, ...]] = ("kl/all/mean", "kl/*/role/assistant/mean", "kl/*/role/user/mean",
                                           "kl/organism/mean")
    main_plot = "distribution"

    def run(self, ctx: MethodContext) -> MethodResult:
        cfg, store = self.config, ctx.store
        scores, roles, positions, token_ids = {}, {}, {}, {}
        top = TopKSequences(cfg.top_k_examples)
        promoted = Promoted(torch.zeros(shared_vocab(ctx.base.model, ctx.organism.model)))
        for dataset in store.datasets:
            ts, keep = store.tokens(dataset), store.keep(dataset)  # the models read every token; stats skip some
            kl = per_token_divergence(ctx.base.model, ctx.organism.model, ts.input_ids, ts.seq_offsets, cfg,
                                      promoted, keep)
            offsets = ts.seq_offsets.tolist()
            for s, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
                top.offer(dataset, int(ts.sequence_ids[s]), ts.input_ids[a:b], ts.roles[a:b], kl[a:b], keep[a:b])
            scores[dataset], roles[dataset] = kl[keep], ts.roles[keep]
            positions[dataset], token_ids[dataset] = ts.positions[keep], ts.input_ids[keep]
        decode = token_decoder(ctx.tokenizer)
        table = stats.stats_table(scores, roles, positions, ROLES)
        tokens = stats.by_token(torch.cat(list(scores.values())), torch.cat(list(token_ids.values())),
                                cfg.min_token_count).head(1000)
        tokens.insert(1, "token", decode(tokens["token_id"].tolist()))
        by_pos = stats.by_position(scores, positions)
        examples = top.examples(decode, ROLES)
        name = cfg.divergence
        ranked = {"tokens_by_mean_kl": _ranked(tokens.head(100))}
        tables = {"stats": table, "tokens": tokens, "positions": by_pos}
        if promoted.positions:
            shift = promoted.mean()
            ids = shift.topk(min(100, len(shift))).indices.tolist()
            tables["promoted"] = pd.DataFrame({"token_id": ids, "token": decode(ids),
                                               "mean_prob_shift": shift[ids].tolist()})
            ranked["promoted_by_kl"] = RankedTokens(ids, decode(ids), shift[ids].tolist())
        return MethodResult(
            metrics=stats.metrics_from_table(table, "kl"),
            tables=tables,
            examples={"max_kl": examples["max"], "mean_kl": examples["mean"]},
            figures={
                "distribution": plots.distribution(scores, f"per-token {name} (nats)", f"{name} by dataset", log_x=True),
                "positions": plots.profile(by_pos, "position", "mean", "dataset", f"mean {name}",
                                           f"{name} by position"),
                "roles": plots.role_comparison(table, f"mean {name}", f"{name} by token role", log_y=True),
            },
            ranked_tokens=ranked,
        )


def _ranked(tokens: pd.DataFrame) -> RankedTokens:
    return RankedTokens(tokens["token_id"].astype(int).tolist(), tokens["token"].tolist(),
                        tokens["mean"].astype(float).tolist())
