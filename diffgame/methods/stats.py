"""Summary statistics of a per-token score (KL, activation-difference norm) by dataset, token role and position.

One layout for every per-token method: a long table with every group, and a few dozen metric keys drawn
from it (`kl/<dataset>/mean`, `kl/<dataset>/role/assistant/mean`, `kl/all/pos/0/mean`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

STATS = ("mean", "std", "median", "p90", "p95", "p99", "max")
"""Every statistic in the table, in column order."""
POSITION_EDGES = (0, 1, 4, 16, 64)
"""Left edges of the position buckets: 0, 1-3, 4-15, 16-63, 64-inf (MLflow metric names allow no `+`)."""
_QUANTILES = {"median": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def position_buckets() -> list[str]:
    """Bucket names in order (`0`, `1-3`, `4-15`, `16-63`, `64-inf`)."""
    names = []
    for lo, hi in zip(POSITION_EDGES, (*POSITION_EDGES[1:], None)):
        names.append(f"{lo}-inf" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"))
    return names


def bucket_index(positions: torch.Tensor) -> torch.Tensor:
    """Bucket index per token ([N] long) for `positions` [N]."""
    edges = torch.tensor(POSITION_EDGES[1:], dtype=positions.dtype)
    return torch.bucketize(positions, edges, right=True)


def describe(values: np.ndarray) -> dict[str, float]:
    """count and `STATS` of a 1-D array (NaN statistics for an empty one)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, **{k: float("nan") for k in STATS}}
    q = np.quantile(values, list(_QUANTILES.values()))
    out = {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
           "max": float(values.max())}
    out.update({k: float(v) for k, v in zip(_QUANTILES, q)})
    return {"count": out["count"], **{k: out[k] for k in STATS}}


def stats_table(scores: dict[str, torch.Tensor], roles: dict[str, torch.Tensor],
                positions: dict[str, torch.Tensor], role_names: Sequence[str]) -> pd.DataFrame:
    """One row per (dataset, group) with `count` and `STATS`; dataset `all` pools every dataset.

    `scores`, `roles` (codes into `role_names`) and `positions` map dataset -> [N] tensors.
    Groups: `all`, `role/<role>` (roles present), `pos/<bucket>` (buckets present).
    """
    names = list(scores)
    pooled = {"all": (torch.cat([scores[d] for d in names]), torch.cat([roles[d] for d in names]),
                      torch.cat([positions[d] for d in names]))} if len(names) > 1 else {}
    rows = []
    for dataset, (s, r, p) in {**{d: (scores[d], roles[d], positions[d]) for d in names}, **pooled}.items():
        s = s.double().numpy()
        rows.append({"dataset": dataset, "group": "all", **describe(s)})
        for code, role in enumerate(role_names):
            mask = (r == code).numpy()
            if mask.any():
                rows.append({"dataset": dataset, "group": f"role/{role}", **describe(s[mask])})
        buckets = bucket_index(p).numpy()
        for b, bucket in enumerate(position_buckets()):
            mask = buckets == b
            if mask.any():
                rows.append({"dataset": dataset, "group": f"pos/{bucket}", **describe(s[mask])})
    return pd.DataFrame(rows, columns=["dataset", "group", "count", *STATS])


def metrics_from_table(table: pd.DataFrame, prefix: str, stats: Sequence[str] = STATS) -> dict[str, float]:
    """The metric keys for the MLflow UI: `stats` of each dataset, role means, and pooled position-bucket means."""
    out: dict[str, float] = {}
    for row in table.itertuples(index=False):
        if row.group == "all":
            out.update({f"{prefix}/{row.dataset}/{k}": float(getattr(row, k)) for k in stats})
        elif row.group.startswith("role/"):
            out[f"{prefix}/{row.dataset}/{row.group}/mean"] = float(row.mean)
    datasets = set(table.dataset)
    pooled = "all" if "all" in datasets else next(iter(datasets), None)
    for row in table[(table.dataset == pooled) & table.group.str.startswith("pos/")].itertuples(index=False):
        out[f"{prefix}/all/{row.group}/mean"] = float(row.mean)
    return out


def by_position(scores: dict[str, torch.Tensor], positions: dict[str, torch.Tensor], max_position: int = 64
                ) -> pd.DataFrame:
    """Mean score per (dataset, position) for positions < `max_position` (the per-position profile)."""
    rows = []
    for dataset, s in scores.items():
        p = positions[dataset].long()
        keep = p < max_position
        sums = torch.zeros(max_position, dtype=torch.float64).index_add_(0, p[keep], s[keep].double())
        counts = torch.bincount(p[keep], minlength=max_position)
        for pos in torch.nonzero(counts).flatten().tolist():
            rows.append({"dataset": dataset, "position": pos, "mean": float(sums[pos] / counts[pos]),
                         "count": int(counts[pos])})
    return pd.DataFrame(rows, columns=["dataset", "position", "mean", "count"])


def by_token(scores: torch.Tensor, token_ids: torch.Tensor, min_count: int = 1) -> pd.DataFrame:
    """Per token id: count, mean and max score, sorted by mean (descending); ids seen < `min_count` times dropped."""
    ids, inverse = torch.unique(token_ids, return_inverse=True)
    s = scores.double()
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, s)
    counts = torch.bincount(inverse, minlength=len(ids))
    maxes = torch.full((len(ids),), -torch.inf, dtype=torch.float64).scatter_reduce_(0, inverse, s, "amax")
    df = pd.DataFrame({"token_id": ids.numpy(), "count": counts.numpy(), "mean": (sums / counts).numpy(),
                       "max": maxes.numpy()})
    df = df[df["count"] >= min_count]
    return df.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
