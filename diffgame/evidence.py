"""The common evidence shapes every method reports and grading and the app consume.

Ranked tokens (token, score), max-activating examples (token ids + per-token scores) and direction
vectors (plain tensors, saved as safetensors for steering).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
