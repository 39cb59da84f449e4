"""The method contract: a config dataclass, `run(context) -> MethodResult`, no MLflow calls inside.

The runner (`diffgame.runner`) builds the context, calls `run`, and logs every field of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.figure import Figure
    from omegaconf import DictConfig

    from diffgame.evidence import Example, RankedTokens
    from diffgame.models import ModelHandle
    from diffgame.store import ActivationStore


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
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Generated texts (e.g. steered vs unsteered), logged as `samples/<name>.json`."""


@dataclass
class MethodContext:
    """What a method may read: its config, the composed config, the store and/or the two models."""

    config: Any
    """The method's own config dataclass instance."""
    cfg: "DictConfig"
    """The whole composed config (model, organism, dataset, ...)."""
    store: "ActivationStore | None" = None
    """The preprocess run's activation store (methods with `needs_store`)."""
    base: "ModelHandle | None" = None
    organism: "ModelHandle | None" = None
    """Both models loaded (methods with `needs_models`)."""


class Method:
    """Base class of a diffing method. Subclasses set the class flags and implement `run`."""

    needs_store: ClassVar[bool] = True
    """Reads the activation store of a preprocess run (the runner makes or reuses one)."""
    needs_models: ClassVar[bool] = False
    """Needs both models loaded (the runner loads them once and shares them across methods)."""

    def __init__(self, config: Any):
        self.config = config

    def run(self, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError
