"""Evidence as the app shows it, without Streamlit: token heat as HTML, example filters, ranked-token tables."""

from __future__ import annotations

import html
import math

import pandas as pd


def heat_alpha(score: float, vmax: float) -> float:
    """Opacity of a token's colour: |score| / vmax clipped to [0, 1], 3 decimals (0 for vmax <= 0 or NaN)."""
    if not vmax or vmax <= 0 or score is None or math.isnan(score):
        return 0.0
    return round(min(abs(score) / vmax, 1.0), 3)


def heat_html(tokens: list[str], scores: list[float], vmax: float | None = None) -> str:
    """Tokens as inline spans coloured by score (red positive, blue negative); hover shows the value."""
    finite = [abs(s) for s in scores if s is not None and not math.isnan(s)]
    vmax = vmax if vmax is not None else (max(finite) if finite else 0.0)
    spans = []
    for tok, s in zip(tokens, scores):
        rgb = "220,38,38" if (s or 0) >= 0 else "37,99,235"
        text = html.escape(tok).replace("\n", "↵<br>")
        spans.append(f'<span class="tok" title="{s:.4g}" style="background-color:rgba({rgb},'
                     f'{heat_alpha(s, vmax)})">{text}</span>')
    return ('<div class="heat" style="font-family:monospace;white-space:pre-wrap;line-height:1.7">'
            + "".join(spans) + "</div>")


def example_role(example) -> str:
    """The role of an example's highest-scoring token ('' when roles are unknown)."""
    if not example.roles:
        return ""
    i = max(range(len(example.token_scores)), key=lambda j: example.token_scores[j])
    return example.roles[i]


def filter_examples(examples: list, query: str = "", datasets: list[str] | None = None,
                    roles: list[str] | None = None) -> list:
    """Examples whose text contains `query` (case-insensitive), from `datasets`, peaking on a token of `roles`."""
    q = query.lower()
    out = []
    for ex in examples:
        if q and q not in "".join(ex.tokens).lower():
            continue
        if datasets and ex.dataset not in datasets:
            continue
        if roles and example_role(ex) not in roles:
            continue
        out.append(ex)
    return out


def ranked_frame(ranked, label: str = "token") -> pd.DataFrame:
    """A RankedTokens as a table: rank, token (or `label`), id, score."""
    return pd.DataFrame({"rank": range(1, len(ranked.tokens) + 1), label: ranked.tokens,
                         "token_id": ranked.token_ids, "score": ranked.scores})


