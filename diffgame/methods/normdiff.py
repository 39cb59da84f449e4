"""Activation differences per token and layer from the store: ||h_org - h_base||, cosine distance, both norms.

Also the mean difference vectors (over all tokens, per early position, per chat-template token id),
saved as named vectors for steering, and max-activating examples by difference norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
import torch.nn.functional as F

from diffgame.data.sequences import ROLES
from diffgame.methods import plots, stats
from diffgame.methods.base import Method, MethodContext, MethodResult
from diffgame.records.examples import TopKSequences, token_decoder
from diffgame.records.ranges import Checked, bounded, ge, gt

MEASURES = ("norm", "cosine", "relative", "base_norm", "organism_norm")
"""Per-token quantities: ||h_org - h_base||, 1 - cos(h_org, h_base), norm / ||h_base||, and both norms."""


@dataclass
class NormDiffConfig(Checked):
    """How many examples and position vectors to keep, and how much to read at once."""

    SECTION = "method.normdiff"

    top_k_examples: int = bounded(ge(0), 20)
    """Max-activating examples kept per layer and ranking (max and mean difference norm)."""
    positions: int = bounded(gt(0), 5)
    """Mean difference vectors are also saved for each of the first `positions` token positions."""
    batch_tokens: int = bounded(gt(0), 16384)
    """Tokens read from the store per batch."""



def token_measures(base: torch.Tensor, org: torch.Tensor) -> dict[str, torch.Tensor]:
    """`MEASURES` for paired activations [n, D] -> each [n] (fp32)."""
    base, org = base.float(), org.float()
    norm = (org - base).norm(dim=-1)
    base_norm = base.norm(dim=-1)
    return {"norm": norm, "cosine": 1.0 - F.cosine_similarity(org, base, dim=-1),
            "relative": norm / base_norm.clamp_min(1e-12), "base_norm": base_norm,
            "organism_norm": org.norm(dim=-1)}


class DeltaMeans:
    """Running sums of h_org - h_base: over all tokens, per early position and per template token id."""

    def __init__(self, d_model: int, positions: int):
        self.total = torch.zeros(d_model, dtype=torch.float64)
        self.count = 0
        self.pos_sum = torch.zeros(positions, d_model, dtype=torch.float64)
        self.pos_count = torch.zeros(positions, dtype=torch.long)
        self.template: dict[int, list] = {}

    def add(self, delta: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor,
            template: torch.Tensor) -> None:
        """`delta` [n, D]; `positions`, `token_ids` [n]; `template` [n] bool (chat-template tokens)."""
        delta = delta.double()
        self.total += delta.sum(0)
        self.count += len(delta)
        early = positions < len(self.pos_count)
        self.pos_sum.index_add_(0, positions[early].long(), delta[early])
        self.pos_count += torch.bincount(positions[early].long(), minlength=len(self.pos_count))
        if template.any():
            ids, inverse = torch.unique(token_ids[template], return_inverse=True)
            sums = torch.zeros(len(ids), delta.shape[1], dtype=torch.float64).index_add_(0, inverse, delta[template])
            counts = torch.bincount(inverse, minlength=len(ids))
            for i, tok in enumerate(ids.tolist()):
                entry = self.template.setdefault(tok, [torch.zeros_like(self.total), 0])
                entry[0] += sums[i]
                entry[1] += int(counts[i])

    def vectors(self, prefix: str) -> dict[str, torch.Tensor]:
        """`<prefix>/mean`, `<prefix>/pos<p>`, `<prefix>/template/<token id>` -> [D] fp32."""
        out = {f"{prefix}/mean": (self.total / max(self.count, 1)).float()}
        for p in range(len(self.pos_count)):
            if self.pos_count[p]:
                out[f"{prefix}/pos{p}"] = (self.pos_sum[p] / self.pos_count[p]).float()
        for tok, (total, count) in sorted(self.template.items()):
            out[f"{prefix}/template/{tok}"] = (total / count).float()
        return out


class NormDiffMethod(Method):
    """How far apart are the two models' residual streams, per token, layer, role and position?"""

    needs_store = True
    needs_models = False
    headline: ClassVar[tuple[str, ...]] = ("normdiff/all/mean", "normdiff/*/role/assistant/mean",
                                           "normdiff/*/role/user/mean", "normdiff/organism/mean")
    main_plot = "distribution"

    def run(self, ctx: MethodContext) -> MethodResult:
        cfg, store = self.config, ctx.store
        template_code = ROLES.index("template")
        layers = list(store.layers)
        headline_layer = layers[len(layers) // 2]
        streams = {d: store.tokens(d) for d in store.datasets}
        keep = {d: store.keep(d) for d in streams}  # [N] bool: tokens past `skip_first`, the only ones counted
        roles = {d: ts.roles[keep[d]] for d, ts in streams.items()}
        positions = {d: ts.positions[keep[d]] for d, ts in streams.items()}
        result = MethodResult()
        tables, profile_rows = [], []
        examples: dict[str, TopKSequences] = {}
        for layer in layers:
            means = DeltaMeans(store.d_model, cfg.positions)
            per_dataset: dict[str, dict[str, torch.Tensor]] = {}
            top = examples[f"layer{layer}"] = TopKSequences(cfg.top_k_examples)
            for dataset, ts in streams.items():
                n = len(ts.input_ids)
                measures = {m: torch.zeros(n) for m in MEASURES}
                for start, base, org in store.iter_batches(dataset, layer, cfg.batch_tokens):
                    sl = slice(start, start + len(base))
                    for m, v in token_measures(base, org).items():
                        measures[m][sl] = v
                    k = keep[dataset][sl]
                    means.add((org.double() - base.double())[k], ts.positions[sl][k], ts.input_ids[sl][k],
                              ts.roles[sl][k] == template_code)
                offsets = ts.seq_offsets.tolist()
                for s, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
                    top.offer(dataset, int(ts.sequence_ids[s]), ts.input_ids[a:b], ts.roles[a:b], measures["norm"][a:b],
                              keep[dataset][a:b])
                per_dataset[dataset] = {m: v[keep[dataset]] for m, v in measures.items()}
            result.vectors.update(means.vectors(f"normdiff/layer{layer}"))
            for m in MEASURES:
                t = stats.stats_table({d: v[m] for d, v in per_dataset.items()}, roles, positions, ROLES)
                t.insert(0, "layer", layer)
                t.insert(1, "measure", m)
                tables.append(t)
                pooled = t[(t.group == "all") & (t.dataset == ("all" if len(per_dataset) > 1 else t.dataset.iloc[0]))]
                profile_rows.append({"layer": layer, "measure": m, "mean": float(pooled["mean"].iloc[0])})
            if layer == headline_layer:
                norms = {d: v["norm"] for d, v in per_dataset.items()}
                headline_table = tables[-len(MEASURES)].drop(columns=["layer", "measure"])
                by_pos = stats.by_position(norms, positions)
                result.figures["distribution"] = plots.distribution(
                    norms, "||h_org - h_base||", f"difference norm at layer {layer}")
                result.figures["positions"] = plots.profile(
                    by_pos, "position", "mean", "dataset", "mean ||h_org - h_base||", f"by position, layer {layer}")
                result.figures["roles"] = plots.role_comparison(
                    headline_table, "mean ||h_org - h_base||", f"by token role, layer {layer}")
                result.tables["positions"] = by_pos
        table = pd.concat(tables, ignore_index=True)
        profile = pd.DataFrame(profile_rows)
        result.tables["stats"] = table
        result.tables["layers"] = profile
        result.metrics = stats.metrics_from_table(headline_table, "normdiff", stats=("mean", "median", "p95", "max"))
        for row in profile[profile.measure.isin(["norm", "cosine", "relative"])].itertuples(index=False):
            result.metrics[f"normdiff/layer{row.layer}/{row.measure}_mean"] = row.mean
        result.figures["layers"] = plots.profile(profile[profile.measure.isin(["norm", "base_norm", "organism_norm"])],
                                                 "layer", "mean", "measure", "mean norm", "norms by layer")
        decode = token_decoder(ctx.tokenizer)
        for key, top in examples.items():
            found = top.examples(decode, ROLES)
            result.examples[f"{key}_max_norm"] = found["max"]
            result.examples[f"{key}_mean_norm"] = found["mean"]
        return result
