"""Diff mining: which tokens does the organism raise most often in its next-token logits, over generic text?

At every position d = logits_org - logits_base over the whole vocabulary, computed chunk by chunk beside the forwards
(`diffgame.models.paired`), is folded into per-token running statistics whose memory does not depend on the number of
positions: how often a token lands in the top-K of d, how often its d is positive, the sum and max of its d and
where it peaks. A bounded reservoir of positions' top-K sets feeds NMF topics (groups of tokens raised together).
The reference implementation keeps d for every position (N x T x V floats); `benchmarks/diffmining.py` compares both.
"""

from __future__ import annotations

import math
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


@dataclass
class RowTopK:
    """Each row's k-th largest value and, per row, a subset of its columns that holds the row's top k."""

    k: int
    kth: torch.Tensor
    """[c, 1]."""
    values: torch.Tensor
    """[c, m] the candidates' values."""
    columns: torch.Tensor
    """[c, m] their column indices."""

    def sets(self, rows: torch.Tensor) -> torch.Tensor:
        """The top-k column sets [len(rows), k] of rows without ties at their k-th value."""
        v = self.values[rows]
        return self.columns[rows][v >= self.kth[rows]].view(len(rows), self.k)


def row_top_k(x: torch.Tensor, k: int) -> RowTopK | None:
    """Each row's top k of a float32 CPU tensor [c, V] by selection instead of topk's sort; the k-th largest value
    equals `x.topk(k).values[:, -1:]`. None where tied group maxima make the shortcut unsafe (use topk then).

    On the CPU torch's topk sorts as it selects (~20 µs a row of 2,560 on this project's machine), more than a
    quarter of two small models' forwards. Here the columns fall into ~sqrt(V k) strided groups; the row's top k
    lie among the members of the k groups with the largest maxima (an element of the top k in another group would
    be at most each chosen group's maximum: k elements at least as large), so two narrow numpy partitions do it.
    """
    c, v = x.shape
    width = max(2, round(math.sqrt(v / k)))
    g = v // width
    body = x[:, :g * width].reshape(c, width, g)  # column j * g + i is member j of group i
    gmax = body.amax(1)
    tau = torch.from_numpy(np.partition(gmax.numpy(), g - k, axis=-1)[:, g - k:g - k + 1])
    groups = (gmax >= tau).nonzero()[:, 1]
    if len(groups) != c * k:  # tied maxima: some row has more than k groups at its threshold
        return None
    groups = groups.view(c, 1, k)
    values = body.gather(2, groups.expand(c, width, k)).reshape(c, width * k)
    columns = (groups + g * torch.arange(width).view(1, width, 1)).reshape(c, width * k)
    if g * width < v:
        values = torch.cat([values, x[:, g * width:]], dim=1)
        columns = torch.cat([columns, torch.arange(g * width, v).expand(c, -1)], dim=1)
    m = values.shape[1]
    kth = torch.from_numpy(np.partition(values.numpy(), m - k, axis=-1)[:, m - k:m - k + 1])
    return RowTopK(k, kth, values, columns)


class DiffStats:
    """Running per-token statistics of d = logits_org - logits_base, O(V + reservoir x K) memory.

    The counters live on the device of the first chunk, so a GPU never waits on the host between chunks. On the
    CPU a token's top-K count comes from each row's exact K-th largest d (`row_top_k`) instead of topk's indices,
    and only the reservoir's rows are turned into index sets.
    """

    def __init__(self, vocab: int, top_k: int, reservoir: int, seed: int = 0):
        self.top_k, self.capacity, self.vocab = min(top_k, vocab), reservoir, vocab
        self.n = 0
        self.topk_count = torch.zeros(vocab, dtype=torch.int64)
        self.pos_count = torch.zeros(vocab, dtype=torch.int64)
        self.total = torch.zeros(vocab, dtype=torch.float64)
        self.max = torch.full((vocab,), float("-inf"))
        self.argmax = torch.full((vocab,), -1, dtype=torch.int64)
        """Stream index of each token's largest d."""
        self.sample = torch.empty(0, self.top_k, dtype=torch.int64)  # reservoir of positions' top-K sets
        self._gen = torch.Generator().manual_seed(seed)
        self._scratch: torch.Tensor | None = None

    def add(self, d: torch.Tensor, where: torch.Tensor) -> None:
        """Fold in `d` [c, V] (any float dtype, any device) for the positions `where` [c] of the stream."""
        d = d.float()
        if self.topk_count.device != d.device:
            self._move(d.device)
        if d.device.type == "cpu":
            self._add_cpu(d, where)
        else:
            self._add_device(d, where.to(d.device, non_blocking=True))
        self.total += d.sum(0).double()
        self.n += d.shape[0]

    def _add_device(self, d: torch.Tensor, where: torch.Tensor) -> None:
        """topk and bincount on the device, records kept with where(): nothing waits on the host."""
        top = d.topk(self.top_k, dim=-1, sorted=False).indices  # [c, K]; only the set matters
        self.topk_count += torch.bincount(top.flatten(), minlength=self.vocab)
        self.pos_count += (d > 0).sum(0)
        best, at = d.max(0)
        better = best > self.max
        self.max = torch.where(better, best, self.max)
        self.argmax = torch.where(better, where[at], self.argmax)
        self._reservoir(len(d), lambda rows: top[rows])

    def _add_cpu(self, d: torch.Tensor, where: torch.Tensor) -> None:
        """Selection instead of topk, counts as float sums of 0/1 (exact below 2**24 rows; they vectorise where
        bool reductions do not), one scratch [c, V] for every pass (a fresh large tensor costs page faults)."""
        if self._scratch is None or self._scratch.shape[0] < d.shape[0] or self._scratch.shape[1] != d.shape[1]:
            self._scratch = torch.empty_like(d)
        buf = self._scratch[:d.shape[0]]
        sel = row_top_k(d, self.top_k) if self.vocab >= 4 * self.top_k else None
        if sel is None:
            top = d.topk(self.top_k, dim=-1, sorted=False).indices
            self.topk_count += torch.bincount(top.flatten(), minlength=self.vocab)
            self._reservoir(len(d), lambda rows: top[rows])
        else:
            self._count_above(d, sel, buf)
        self.pos_count += torch.sign(d, out=buf).clamp_(min=0).sum(0).long()
        best = d.amax(0)
        cols = (best > self.max).nonzero()[:, 0]
        if not len(cols):
            return
        self.max[cols] = best[cols]
        if 4 * len(cols) > self.vocab:  # argmax over many columns is slow: the first row equal to the max instead
            rank = torch.arange(len(d), 0, -1, dtype=d.dtype).view(-1, 1)  # c .. 1: the first equal row ranks highest
            first = len(d) - torch.sub(d, best, out=buf).sign_().add_(1).mul_(rank).amax(0).long()
            self.argmax[cols] = where[first[cols]]
        else:
            self.argmax[cols] = where[d.index_select(1, cols).argmax(0)]

    def _count_above(self, d: torch.Tensor, sel: RowTopK, buf: torch.Tensor) -> None:
        """Top-K counts from each row's K-th largest value; a row with ties at that value counts topk's choice."""
        above = torch.sub(d, sel.kth, out=buf).sign_().add_(1).clamp_(max=1)  # 1.0 where d >= the row's K-th
        tied = (above.sum(1) != self.top_k).nonzero()[:, 0]
        if len(tied):
            above[tied] = 0
            self.topk_count += torch.bincount(d[tied].topk(self.top_k, dim=-1).indices.flatten(),
                                              minlength=self.vocab)
        self.topk_count += above.sum(0).long()

        def top_of(rows: torch.Tensor) -> torch.Tensor:
            clean = ~torch.isin(rows, tied)
            out = torch.empty(len(rows), self.top_k, dtype=torch.int64)
            out[clean] = sel.sets(rows[clean])
            if not bool(clean.all()):
                out[~clean] = d[rows[~clean]].topk(self.top_k, dim=-1).indices
            return out

        self._reservoir(len(d), top_of)

    def _reservoir(self, c: int, top_of) -> None:
        """Algorithm R over positions (Vitter 1985): each position seen so far is kept with equal probability.
        `top_of(rows)` gives the top-K sets of the chunk's rows that are kept."""
        free = min(c, self.capacity - len(self.sample))
        rows = torch.arange(c)
        if free > 0:
            self.sample = torch.cat([self.sample, top_of(rows[:free]).to(self.sample.device)])
        rest = rows[max(free, 0):]
        if not len(rest):
            return
        slot = (torch.rand(len(rest), generator=self._gen) * (self.n + rest + 1)).long()
        keep = slot < self.capacity
        if bool(keep.any()):
            self.sample[slot[keep]] = top_of(rest[keep]).to(self.sample.device)

    def _move(self, device: torch.device) -> None:
        for name in ("topk_count", "pos_count", "total", "max", "argmax", "sample"):
            setattr(self, name, getattr(self, name).to(device))

    def frame(self) -> pd.DataFrame:
        """Per token id: occurrence (share of positions with it in the top-K), positive share, mean and max d."""
        n = max(self.n, 1)
        return pd.DataFrame({"token_id": np.arange(self.vocab), "occurrence": (self.topk_count.cpu() / n).numpy(),
                             "positive": (self.pos_count.cpu() / n).numpy(),
                             "mean_diff": (self.total.cpu() / n).numpy(), "max_diff": self.max.cpu().numpy(),
                             "peak": self.argmax.cpu().numpy()})


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
