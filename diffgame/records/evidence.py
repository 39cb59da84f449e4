"""The common evidence shapes every method reports and grading and the app consume.

Ranked tokens (token, score), max-activating examples (token ids + per-token scores) and direction
vectors (plain tensors, saved as safetensors for steering), gathered in a method's `MethodResult`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.figure import Figure

WORD_START_MARKERS = ("Ġ", "▁", "Ċ", " ")
"""Leading markers of a token or word that opens a new word (byte-level BPE, SentencePiece, a newline, a space)."""


@dataclass
class RankedTokens:
    """Tokens ranked by a method's score, best first (e.g. ADL logit lens at one layer and position)."""

    token_ids: list[int]
    tokens: list[str]
    scores: list[float]
    """Higher is stronger evidence; probabilities for lens readouts."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RankedTokens":
        return cls(list(d["token_ids"]), list(d["tokens"]), [float(s) for s in d["scores"]])


@dataclass
class Example:
    """One sequence with a per-token score, e.g. a max-KL example; the app renders it as token heat."""

    sequence_id: int
    dataset: str
    score: float
    """The sequence's ranking score (max or mean of `token_scores`)."""
    token_ids: list[int]
    tokens: list[str]
    token_scores: list[float]
    roles: list[str] = field(default_factory=list)
    """Per-token role: text, user, assistant, template (empty when unknown)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(**d)


@dataclass
class MethodResult:
    """Everything a method found; each field is logged by the runner under the method's run."""

    metrics: dict[str, float] = field(default_factory=dict)
    """A few dozen scalars with slash-namespaced keys (`kl/generic_text/mean`)."""
    tables: dict[str, "pd.DataFrame"] = field(default_factory=dict)
    """Logged as `tables/<name>.parquet`."""
    examples: dict[str, list["Example"]] = field(default_factory=dict)
    """Logged as `examples/<name>.json` (max-activating examples)."""
    vectors: dict[str, "torch.Tensor"] = field(default_factory=dict)
    """Logged together as `vectors.safetensors` (steering directions, `[D]` each)."""
    figures: dict[str, "Figure"] = field(default_factory=dict)
    """Logged as `plots/<name>.png`."""
    ranked_tokens: dict[str, "RankedTokens"] = field(default_factory=dict)
    """Token evidence for grading and the app, logged as `evidence/ranked_tokens.json`."""
    ranked_words: dict[str, "RankedTokens"] = field(default_factory=dict)
    """The same readouts as whole words (` waggle`), logged as `evidence/ranked_words.json`; the runner completes
    every `ranked_tokens` key a method left out here with the organism (`diffgame.grading.words`)."""
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Generated texts (e.g. steered vs unsteered), logged as `samples/<name>.json`."""
    weights: dict[str, dict[str, "torch.Tensor"]] = field(default_factory=dict)
    """Trained parameters (a dictionary per layer), logged as `weights/<name>.safetensors`, loadable by run id."""
