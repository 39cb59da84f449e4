"""Chain the stages for `diffgame run/preprocess/diff`: compose and validate every combination, type it, build the
zoo models it loads, plan it once, then execute.

`full` preprocesses (or reuses the store) then diffs; `preprocessing` only builds the store; `diffing` requires an
existing store; `evaluation` lets an agent play the game on the finished diff runs (`diffgame.pipeline.play`). The
control organism's plan rides in each organism's (made on first use), so grading compares like with like.
`--multirun` sweeps open one parent run with a child per combination, run here one after another or fanned out as
jobs (`launcher=local|slurm`, `diffgame.pipeline.fanout`).
"""

from __future__ import annotations

import warnings

from omegaconf import DictConfig

from diffgame import tracking
from diffgame.config.compose import compose, expand_sweep, settings
from diffgame.errors import ConfigError, SweepError
from diffgame.pipeline import planner
from diffgame.pipeline.building import build_for
from diffgame.pipeline.runner import StageSummary, run_methods
from diffgame.records.schema import RootConfig


def execute(overrides: list[str], mode: str | None = None, multirun: bool = False,
            tracking_uri: str | None = None) -> list[StageSummary]:
    """Run the pipeline for `overrides` (a sweep when `multirun`); validates all configs before any work."""
    from diffgame.zoo import EXPERIMENT as ZOO_EXPERIMENT

    combos = expand_sweep(overrides) if multirun else [list(overrides)]
    if mode:
        combos = [c + [f"pipeline.mode={mode}"] for c in combos]
    cfgs = [settings(compose(c)) for c in combos]
    for message in dict.fromkeys(filter(None, map(toy_data_warning, cfgs))):  # once per message
        warnings.warn(message, stacklevel=2)
    tracking.set_uri(tracking_uri or cfgs[0].tracking.uri)
    # before any work: the zoo's experiment too, as a missing zoo model is trained on first use
    tracking.check_writable(*dict.fromkeys([*(c.tracking.experiment for c in cfgs), ZOO_EXPERIMENT]))
    launcher = cfgs[0].launcher
    if not multirun and launcher.name == "serial":
        return run_one(cfgs[0])
    summaries: list[StageSummary] = []
    fp = tracking.fingerprint([list(c) for c in combos])
    failed = ""
    with tracking.stage_run("sweep", fp=fp, tags={"diffgame.sweep": " ".join(overrides),
                                                  "diffgame.launcher": launcher.name},
                            experiment=cfgs[0].tracking.experiment, run_name="sweep") as parent:
        if launcher.name == "serial":
            for cfg in cfgs:
                summaries.extend(run_one(cfg, parent_run_id=parent.run_id))
        else:  # each combination its own job; children that need the same store wait for one build
            from diffgame.pipeline.fanout import failures, fan_out

            summaries, children = fan_out(combos, launcher, parent)
            parent.set_tags({"diffgame.jobs": ",".join(c.job_id for c in children)[:5000]})
            parent.log_metrics({"sweep/children": len(children),
                                "sweep/failed": sum(c.state == "FAILED" for c in children),
                                "sweep/reused": sum(c.state == "REUSED" for c in children)})
            failed = failures(children)
        summaries.insert(0, StageSummary("sweep", parent.run_id, "*", "*", "*"))
        if failed:  # the parent fails with the list; the rows of the children that finished are kept
            raise SweepError(f"{failed.count(chr(10)) + 1} of {len(combos)} children failed (run the same sweep "
                             f"again to resume only what is missing):\n{failed}", summaries)
    return summaries


def toy_data_warning(cfg: RootConfig) -> str | None:
    """A warning when a public organism is diffed on the toy zoo's synthetic data (`dataset=toy`): it runs, but its
    results are not comparable with published ones, which read pretraining and chat data. Zoo-trained organisms
    (the toy and smol zoos) learnt that data, so they get none."""
    if cfg.dataset.name != "toy" or str(cfg.model.id).startswith("zoo:"):
        return None
    try:
        if cfg.organism.weights(str(cfg.model.name)).kind == "zoo":
            return None
    except ConfigError:
        return None
    return (f"model={cfg.model.name} runs on dataset=toy, the toy zoo's synthetic text: results will not be comparable "
            f"with published ones; point dataset.sources at pretraining and chat data (hub ids or local files)")


def run_one(cfg: RootConfig | DictConfig, parent_run_id: str | None = None) -> list[StageSummary]:
    """One configuration: its zoo models, its plan, then its preprocess run and/or one diff run per selected method;
    in `evaluation` mode, the configured agent's play on the finished diff runs instead."""
    cfg = settings(cfg) if isinstance(cfg, DictConfig) else cfg  # tests and scripts may hand a composed one
    if cfg.pipeline.mode == "evaluation":
        return [evaluate(cfg)]
    build_for(cfg, control=cfg.pipeline.mode == "full")  # `full` makes the control's runs to grade against
    plan = planner.make_plan(cfg)
    if plan.mode == "preprocessing":
        from diffgame.preprocess import preprocess  # Lightning: only the stages that extract import it

        result = preprocess(plan, parent_run_id=parent_run_id)
        return [StageSummary("preprocess", result.run_id, plan.model_name, plan.organism_name, reused=result.reused,
                             headline={"tokens": float(result.n_tokens), "bytes": float(result.n_bytes)})]
    return run_methods(plan, parent_run_id=parent_run_id)


def evaluate(cfg: RootConfig) -> StageSummary:
    """`pipeline.mode=evaluation`: `play.agent` plays the configured organism from `play.methods`' diff runs."""
    from diffgame.pipeline.play import play

    methods = [str(m) for m in cfg.play.methods]
    o = play(str(cfg.model.name), str(cfg.organism.name), methods, str(cfg.play.agent), cfg.tracking.experiment,
             overrides=list(cfg.overrides))
    keep = ("play/guess_correct", "play/keyword_hits", "play/rubric_score")
    return StageSummary("play", o.run_id, str(cfg.model.name), o.organism,
                        "+".join(methods), o.reused, {k: o.metrics[k] for k in keep if k in o.metrics})
