"""The method contract: a config dataclass, `run(context) -> MethodResult`, no MLflow calls and no I/O inside.

The runner (`diffgame.pipeline.runner`) builds the context from the plan (layers, seed, tokenizer, store, models and the
text a method asks for), calls `run`, and logs every field of the result (`diffgame.tracking.artifacts.log_result`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from diffgame.records.evidence import \
    MethodResult  # noqa: F401  (part of the method contract: methods import it from here)

if TYPE_CHECKING:
    from pathlib import Path

    from diffgame.models.loading import ModelHandle
    from diffgame.store import ActivationStore


@dataclass(frozen=True)
class TextRequest:
    """Text a method reads besides the store (e.g. ADL's generic documents); the runner loads it."""

    source: str
    """`@name` (a source of the dataset preset: `@text` / `@chat` its first text / chat source, `@organism`), a zoo
    corpus (`zoo:generic_text`), hub id or local file."""
    kind: Literal["text", "chat"] = "text"
    split: str = "test"
    max_samples: int | None = None
    optional: bool = False
    """Skipped (left out of `ctx.texts`) when the source cannot be read, e.g. an organism without training data."""
    evidence: bool = True
    """The method's evidence (ranked lists, examples, samples) reads these rows; False for text only a metric reads
    (ADL's causal effect on the organism's own data), so the blind game may still show that method's evidence."""


@dataclass
class MethodContext:
    """What a method may read, all resolved by the pipeline's plan."""

    config: Any
    """The method's own config dataclass instance."""
    layers: list[int] = field(default_factory=list)
    """The configuration's layers (`preprocessing.layers`) as indices."""
    seed: int = 0
    tokenizer: Any = None
    """The base's tokenizer (the store's token ids decode with it)."""
    store: "ActivationStore | None" = None
    """The preprocess run's activation store (methods with `needs_store`)."""
    base: "ModelHandle | None" = None
    organism: "ModelHandle | None" = None
    """Both models loaded (methods with `needs_models`)."""
    texts: dict[str, list[dict]] = field(default_factory=dict)
    """Rows of each `Method.texts()` request, by its name."""
    logger: Any = None
    """A Lightning logger writing to this method's run (training curves of methods that train); None logs nothing."""
    workdir: "Path | None" = None
    """A local folder kept across an interrupted run of a `resumable` method (its checkpoints); None: no resume."""


class Method:
    """Base class of a diffing method. Subclasses set the class flags and implement `run`."""

    needs_store: ClassVar[bool] = True
    """Reads the activation store of a preprocess run (the runner makes or reuses one)."""
    needs_models: ClassVar[bool] = False
    """Needs both models loaded (the runner loads them once and shares them across methods)."""
    headline: ClassVar[tuple[str, ...]] = ()
    """Metric patterns (globs) shown in the closing summary after the grades."""
    resumable: ClassVar[bool] = False
    """An interrupted run is reopened (not started anew) and `ctx.workdir` keeps its checkpoints."""
    version: ClassVar[int] = 1
    """Bumped when the method's evidence changes for the same config (a new sampler, a fixed bug), so runs logged by
    an earlier version are made again instead of reused."""
    main_plot: ClassVar[str | None] = None
    """The figure (a `MethodResult.figures` key) the app shows beside the statistics; None: the first one logged."""

    def __init__(self, config: Any):
        self.config = config

    def texts(self) -> dict[str, TextRequest]:
        """Text sources to load into `ctx.texts` before `run` (none by default)."""
        return {}

    def run(self, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError
