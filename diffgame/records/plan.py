"""What one configuration resolves to, worked out once by `diffgame.pipeline.planner` and handed down the stages.

A `ModelSource` says where one model loads from; `PairSources` is the base and organism pair with the model config
that says how to load them; a `Plan` adds the typed config, the resolved layers, the tokenizer, the fingerprints of
every stage, the method configs, the identification candidates and the control's plan, so no stage below the
pipeline resolves, searches the tracking store or reads the config tree again.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffgame.records.schema import ModelConfig, OrganismConfig, RootConfig


@dataclass(frozen=True)
class ModelSource:
    """Where one model's weights load from."""

    path: str
    """Local directory or hub id of a full model; for `lora`, the adapter (loaded over `base`)."""
    kind: str = "full"
    """`full` (a complete model) or `lora` (a peft adapter merged into a fresh copy of the base)."""
    revision: str | None = None
    subfolder: str | None = None
    identity: dict = field(default_factory=dict, hash=False, compare=False)
    """What fingerprints cover: the configured source, revision, adapter, zoo run id."""


@dataclass
class PairSources:
    """The base and the organism, resolved, with the model config (dtype, device, attention) to load them by."""

    model: ModelConfig
    base: ModelSource
    organism: ModelSource
    base_name: str
    organism_name: str


@dataclass
class Plan:
    """One configuration, resolved: sources, identities, layers, tokenizer, fingerprints and method configs."""

    cfg: RootConfig
    """The typed config (names, dataset, preprocessing and tracking settings)."""
    pair: PairSources
    tokenizer: Any
    """The base's tokenizer (also the store's: base and organism share one vocabulary)."""
    n_layers: int
    d_model: int
    layers: list[int]
    """`preprocessing.layers` as sorted unique indices."""
    store_fingerprint: str
    """Fingerprint of the activation store (the `preprocess` run)."""
    methods: dict[str, Any]
    """Registry name -> the method's config dataclass, in the order selected."""
    diff_fingerprints: dict[str, str]
    """Registry name -> fingerprint of that method's `diff` run."""
    candidates: dict[str, OrganismConfig] | None = None
    """Every organism identification ranks among on this base, by name (the organism itself as configured here);
    None when the organism is not one of them (the control, one without ground truth)."""
    control: Callable[[], Plan | None] = lambda: None
    """The control organism's plan with the same base, data and method configs, made on first use (resolving it
    may need models a run never asks for); None where the control has no weights for this base."""

    @property
    def model_name(self) -> str:
        return str(self.cfg.model.name)

    @property
    def organism_name(self) -> str:
        return str(self.cfg.organism.name)

    @property
    def mode(self) -> str:
        return str(self.cfg.pipeline.mode)

    def command(self, stage: str = "preprocess") -> str:
        """The command line that makes this configuration's `stage` run, quoted in error messages: the names that
        identify the store, then every override the user gave (so `zoo.size=micro` and the like are kept)."""
        given = [str(o) for o in self.cfg.overrides  # the stage's command sets its mode; a hint never rebuilds
                 if not str(o).lstrip("+~").startswith(("pipeline.mode=", "preprocessing.rebuild="))]
        keys = {o.split("=", 1)[0].lstrip("+~") for o in given}
        named = {"model": self.model_name, "organism": self.organism_name, "dataset": self.cfg.dataset.name,
                 "preprocessing.layers": f"[{','.join(str(x) for x in self.cfg.preprocessing.layers)}]"}
        parts = [f"{k}={v}" for k, v in named.items() if k not in keys] + given
        return " ".join(["diffgame", stage, *(shlex.quote(p) if " " in p else p for p in parts)])
