"""Chain the stages for `diffgame run/preprocess/diff`: compose, validate every combination, then execute.

`full` preprocesses (or reuses the store) then diffs; `preprocessing` only builds the store; `diffing`
requires an existing store. `--multirun` sweeps open one parent run with a child per combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from diffgame import config as config_mod
from diffgame import tracking


@dataclass
class StageSummary:
    """One line of the closing summary table."""

    stage: str
    run_id: str
    model: str
    organism: str
    method: str = ""
    reused: bool = False
    headline: dict[str, float] = field(default_factory=dict)
    """A few metrics worth printing (e.g. `kl/generic_chat/role/assistant/mean`)."""


def execute(overrides: list[str], mode: str | None = None, multirun: bool = False,
            tracking_uri: str | None = None) -> list[StageSummary]:
    """Run the pipeline for `overrides` (a sweep when `multirun`); validates all configs before any work."""
    combos = config_mod.expand_sweep(overrides) if multirun else [list(overrides)]
    if mode:
        combos = [c + [f"pipeline.mode={mode}"] for c in combos]
    cfgs = [config_mod.compose(c) for c in combos]
    tracking.set_uri(tracking_uri or cfgs[0].tracking.uri)
    if not multirun:
        return run_one(cfgs[0])
    summaries: list[StageSummary] = []
    fp = tracking.fingerprint([list(c) for c in combos])
    with tracking.stage_run("sweep", fp=fp, tags={"diffgame.sweep": " ".join(overrides)},
                            experiment=cfgs[0].tracking.experiment, run_name="sweep") as parent:
        for cfg in cfgs:
            summaries.extend(run_one(cfg, parent_run_id=parent.run_id))
        summaries.insert(0, StageSummary("sweep", parent.run_id, "*", "*", "*"))
    return summaries


def run_one(cfg: DictConfig, parent_run_id: str | None = None) -> list[StageSummary]:
    """One configuration: its preprocess run and/or one diff run per selected method."""
    if cfg.pipeline.mode == "preprocessing":
        from diffgame.extract import preprocess

        result = preprocess(cfg, parent_run_id=parent_run_id)
        return [StageSummary("preprocess", result.run_id, cfg.model.name, cfg.organism.name,
                             reused=result.reused,
                             headline={"tokens": float(result.n_tokens), "bytes": float(result.n_bytes)})]
    from diffgame.runner import run_methods

    return run_methods(cfg, parent_run_id=parent_run_id)
