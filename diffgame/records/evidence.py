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


@dataclass(frozen=True)
class DirectionNames:
    """How a result names directions found on the store (PCA components, dictionary latents), stated once for the
    methods that write them and the app that reads them: `layer{L}/{prefix}{j}` for vectors, lens readouts and ranked
    tokens, `<name>/neg` for the negated direction's readout, `layer{L}_{prefix}{j}` (`_neg`) for examples."""

    prefix: str

    def name(self, layer: int, j: int) -> str:
        return f"layer{layer}/{self.prefix}{j}"

    def examples(self, layer: int, j: int, negated: bool = False) -> str:
        return f"layer{layer}_{self.prefix}{j}" + ("_neg" if negated else "")

    @staticmethod
    def signed(name: str, negated: bool) -> str:
        """The readout name of direction `name`, or of its negation."""
        return f"{name}/neg" if negated else name


COMPONENTS = DirectionNames("pc")
"""PCA's components."""
LATENTS = DirectionNames("latent")
"""SAE and crosscoder latents."""


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
