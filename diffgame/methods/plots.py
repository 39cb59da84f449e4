"""Seaborn figures for per-token scores: distributions, per-layer and per-position profiles, per-role comparison.

Each function returns a `matplotlib.figure.Figure` built without pyplot's global state, so methods can
return figures in `MethodResult.figures` and the runner saves them; nothing leaks between runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

_MAX_POINTS = 200_000
"""Histograms subsample to this many values per group (deterministically) to stay fast on big stores."""


def _sns():
    """seaborn, imported on first plot: it pulls in scipy, which would slow every CLI call (`diffgame config`)."""
    import seaborn

    return seaborn


def _figure(width: float = 6.4, height: float = 4.0):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _subsample(x: np.ndarray) -> np.ndarray:
    if x.size <= _MAX_POINTS:
        return x
    return x[np.linspace(0, x.size - 1, _MAX_POINTS).astype(np.int64)]


def distribution(values: dict[str, torch.Tensor], xlabel: str, title: str, log_x: bool = False) -> Figure:
    """Histogram of a per-token score per group (dataset or role), densities overlaid."""
    frames = [pd.DataFrame({"value": _subsample(v.double().numpy()), "group": k}) for k, v in values.items()]
    df = pd.concat(frames, ignore_index=True)
    fig, ax = _figure()
    if log_x and (df["value"] > 0).any():
        df = df[df["value"] > 0]
    else:
        log_x = False  # nothing positive to put on a log axis (e.g. a model diffed against itself)
    _sns().histplot(df, x="value", hue="group", stat="density", common_norm=False, element="step", bins=60,
                 log_scale=log_x, ax=ax)
    ax.set(xlabel=xlabel, title=title)
    return fig


def profile(table: pd.DataFrame, x: str, y: str, hue: str | None, ylabel: str, title: str) -> Figure:
    """A line per `hue` of `y` against `x` (mean score by layer or by position)."""
    fig, ax = _figure()
    _sns().lineplot(table, x=x, y=y, hue=hue, marker="o", ax=ax)
    ax.set(ylabel=ylabel, title=title)
    return fig


def role_comparison(table: pd.DataFrame, ylabel: str, title: str, log_y: bool = False) -> Figure:
    """Bars of the mean score per token role, grouped by dataset (from a `stats.stats_table`)."""
    rows = table[table["group"].str.startswith("role/") & (table["dataset"] != "all")].copy()
    rows["role"] = rows["group"].str.removeprefix("role/")
    fig, ax = _figure()
    _sns().barplot(rows, x="dataset", y="mean", hue="role", ax=ax)
    if log_y:
        ax.set_yscale("log")
    ax.set(ylabel=ylabel, title=title)
    return fig
