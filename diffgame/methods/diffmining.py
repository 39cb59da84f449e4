"""Diff mining: which tokens does the organism raise most often in its next-token logits, over generic text?

At every position d = logits_org - logits_base over the whole vocabulary, computed chunk by chunk beside the forwards
(`diffgame.models.paired`), is folded into per-token running statistics whose memory does not depend on the number of
positions: how often a token lands in the top-K of d, how often its d is positive, the sum and max of its d and
where it peaks. A bounded reservoir of positions' top-K sets feeds NMF topics (groups of tokens raised together).
The reference implementation keeps d for every position (N x T x V floats); `benchmarks/diffmining.py` compares both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest
from diffgame.models.batching import pad_right
from diffgame.models.paired import default_chunk_tokens, logit_chunks, vocab_size
from diffgame.records.evidence import Example, RankedTokens
from diffgame.records.examples import token_decoder
from diffgame.records.ranges import Checked, bounded, ge, gt


@dataclass
class DiffMiningConfig(Checked):
    """Where diff mining reads, how many tokens count as raised per position, and how much to keep."""

    SECTION = "method.diffmining"

    dataset: str = "@text"
    """Generic text the positions come from: `@text` (the dataset preset's text source), another `@name`, a zoo
    corpus, hub id or local file with a `text` column."""
    split: str = "test"
    """Split of `dataset` when it names a corpus, hub id or file (a `@name` source reads its own split)."""
    max_samples: int = bounded(gt(0), 200)
    """Documents read."""
    context_length: int = bounded(gt(0), 64)
    """Tokens kept per document."""
    top_k: int = bounded(gt(0), 100)
    """K of the per-position top-K of d (a token "occurs" at a position when it is among them)."""
    batch_tokens: int = bounded(gt(0), 8192)
    """Padded tokens per forward pass."""
    chunk_elements: int = bounded(ge(0), 0)
    """Logits per chunk per model (0: auto, as `kl`)."""
    n_ranked: int = bounded(gt(0), 100)
    """Tokens kept per ranked list."""
    n_examples: int = bounded(ge(0), 10)
    """Top tokens (by occurrence) whose peak position is kept as an example with token heat."""
    topics: int = bounded(ge(0), 4)
    """NMF components over the reservoir (0 skips topics)."""
    reservoir: int = bounded(gt(0), 2000)
    """Positions kept (uniformly, seeded) for the topic matrix."""
    topic_vocab: int = bounded(gt(0), 200)
    """Columns of the topic matrix: the tokens most often in a top-K."""



class DiffStats:
    """Running per-token statistics of d = logits_org - logits_base, O(V + reservoir x K) memory."""

    def __init__(self, vocab: int, top_k: int, reservoir: int, seed: int = 0):
        self.top_k, self.capacity = min(top_k, vocab), reservoir
        self.n = 0
        self.topk_count = torch.zeros(vocab, dtype=torch.int64)
        self.pos_count = torch.zeros(vocab, dtype=torch.int64)
        self.total = torch.zeros(vocab, dtype=torch.float64)
        self.max = torch.full((vocab,), float("-inf"))
        self.argmax = torch.full((vocab,), -1, dtype=torch.int64)
        """Stream index of each token's largest d."""
        self.sample = torch.empty(0, self.top_k, dtype=torch.int64)  # reservoir of positions' top-K sets
        self._gen = torch.Generator().manual_seed(seed)

    def add(self, d: torch.Tensor, where: torch.Tensor) -> None:
        """Fold in `d` [c, V] (any float dtype, any device) for the positions `where` [c] of the stream."""
        d = d.float()
        top = d.topk(self.top_k, dim=-1, sorted=False).indices  # [c, K]; only the set matters
        self.topk_count += torch.bincount(top.flatten(), minlength=len(self.topk_count)).cpu()
        self.pos_count += (d > 0).sum(0).cpu()
        self.total += d.sum(0, dtype=torch.float64).cpu()
        best, at = d.max(0)  # [V]
        best, at = best.cpu(), where[at.cpu()]
        better = best > self.max
        self.max[better], self.argmax[better] = best[better], at[better]
        self._reservoir(top.cpu())
        self.n += d.shape[0]

    def _reservoir(self, top: torch.Tensor) -> None:
        """Algorithm R over positions (Vitter 1985): each position seen so far is kept with equal probability."""
        free = self.capacity - len(self.sample)
        if free > 0:
            self.sample = torch.cat([self.sample, top[:free]])
            top = top[free:]
        if not len(top):
            return
        seen = self.n + free + torch.arange(len(top))  # 0-based index of each remaining position
        slot = (torch.rand(len(top), generator=self._gen) * (seen + 1)).long()
        keep = slot < self.capacity
        self.sample[slot[keep]] = top[keep]

    def frame(self) -> pd.DataFrame:
        """Per token id: occurrence (share of positions with it in the top-K), positive share, mean and max d."""
        n = max(self.n, 1)
        return pd.DataFrame({"token_id": np.arange(len(self.total)), "occurrence": (self.topk_count / n).numpy(),
                             "positive": (self.pos_count / n).numpy(), "mean_diff": (self.total / n).numpy(),
                             "max_diff": self.max.numpy(), "peak": self.argmax.numpy()})


def topics(sample: torch.Tensor, columns: list[int], n_topics: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NMF (scikit-learn) on the positions x `columns` indicator matrix of the sampled top-K sets: (W, H), H being
    [n_topics, len(columns)] token weights per topic."""
    from sklearn.decomposition import NMF

    col = {t: j for j, t in enumerate(columns)}
    x = np.zeros((len(sample), len(columns)), dtype=np.float32)
    for i, row in enumerate(sample.tolist()):
        for t in row:
            if t in col:
                x[i, col[t]] = 1.0
    model = NMF(n_components=n_topics, init="nndsvda", random_state=seed, max_iter=500)
    w = model.fit_transform(x)
    return w, model.components_


class DiffMiningMethod(Method):
    """Tokens the organism's next-token logits raise, counted over generic text with bounded memory."""

    needs_store = False
    needs_models = True
    headline: ClassVar[tuple[str, ...]] = ("diffmining/top_occurrence", "diffmining/top_mean_diff")

    def texts(self) -> dict[str, TextRequest]:
        c = self.config
        return {"documents": TextRequest(c.dataset, "text", c.split, c.max_samples)}

    def run(self, ctx: MethodContext) -> MethodResult:
        c, base, org = self.config, ctx.base.model, ctx.organism.model
        tok = ctx.tokenizer
        seqs = [ids[:c.context_length] for r in ctx.texts["documents"] if str(r.get("text") or "").strip()
                for ids in [list(tok(str(r["text"]), add_special_tokens=True)["input_ids"])]]
        lengths = torch.tensor([0] + [len(s) for s in seqs])
        offsets, flat = lengths.cumsum(0), torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        vocab = vocab_size(base)
        stats = DiffStats(vocab, c.top_k, c.reservoir, seed=ctx.seed)
        chunk = default_chunk_tokens(vocab, next(base.parameters()).device, c.chunk_elements)
        for where, lo, lb in logit_chunks(base, org, flat, offsets, c.batch_tokens, chunk):
            stats.add(lo.float() - lb.float(), where)
        table = stats.frame()
        table.insert(1, "token", tok.convert_ids_to_tokens(table["token_id"].tolist()))
        by_occ = table.sort_values(["occurrence", "mean_diff"], ascending=False, kind="stable").head(c.n_ranked)
        by_mean = table.sort_values("mean_diff", ascending=False, kind="stable").head(c.n_ranked)
        result = MethodResult(
            metrics={"diffmining/positions": float(stats.n), "diffmining/documents": float(len(seqs)),
                     "diffmining/top_occurrence": float(by_occ["occurrence"].iloc[0]),
                     "diffmining/top_mean_diff": float(by_mean["mean_diff"].iloc[0])},
            tables={"tokens": by_occ.reset_index(drop=True), "tokens_by_mean_diff": by_mean.reset_index(drop=True)},
            ranked_tokens={"top_k_occurrence": _ranked(by_occ, "occurrence"),
                           "mean_diff": _ranked(by_mean, "mean_diff")})
        if c.topics and len(stats.sample):
            columns = table.sort_values("occurrence", ascending=False, kind="stable").head(c.topic_vocab)
            _, h = topics(stats.sample, columns["token_id"].tolist(), c.topics, seed=ctx.seed)
            rows = [{"topic": k, "rank": r, "token_id": int(columns["token_id"].iloc[j]),
                     "token": columns["token"].iloc[j], "weight": float(h[k, j])}
                    for k in range(len(h)) for r, j in enumerate(np.argsort(-h[k])[:10]) if h[k, j] > 0]
            result.tables["topics"] = pd.DataFrame(rows)
        result.examples["peaks"] = self._peaks(base, org, tok, by_occ.head(c.n_examples), flat, offsets)
        return result

    @torch.inference_mode()
    def _peaks(self, base, org, tok, top: pd.DataFrame, flat, offsets) -> list[Example]:
        """Each top token's peak document with that token's d at every position as token heat."""
        decode, out = token_decoder(tok), []
        device = next(base.parameters()).device
        for row in top.itertuples(index=False):
            if row.peak < 0:
                continue
            s = int(torch.searchsorted(offsets, torch.tensor(row.peak), right=True)) - 1
            ids, mask = pad_right([flat[offsets[s]:offsets[s + 1]]], 0)
            ids, mask = ids.to(device), mask.to(device)
            d = (org(input_ids=ids, attention_mask=mask).logits[0, :, row.token_id].float()
                 - base(input_ids=ids, attention_mask=mask).logits[0, :, row.token_id].float()).cpu()
            out.append(Example(sequence_id=s, dataset=f"peak of {row.token!r}", score=float(d.max()),
                               token_ids=ids[0].tolist(), tokens=decode(ids[0].tolist()),
                               token_scores=d.tolist(), roles=["text"] * d.shape[0]))
        return out


def _ranked(table: pd.DataFrame, score: str) -> RankedTokens:
    return RankedTokens(table["token_id"].astype(int).tolist(), table["token"].tolist(),
                        table[score].astype(float).tolist())
