"""Run the selected diffing methods: one `diff` run each, on one shared preprocess run and one model load.

The runner owns MLflow: it fingerprints each method's run, reuses a FINISHED match, makes or finds the
store, loads the models once, calls `Method.run`, and logs the `MethodResult` with `log_result`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffgame import tracking
from diffgame.config import method_names, weights_spec
from diffgame.grading import GRADING_VERSION, grade_result, regrade_run
from diffgame.methods import MethodContext, MethodResult, build_config, canonical_name, get_method
from diffgame.pipeline import StageSummary


GRADE_HEADLINE = ("grade/relative/precision_at_*", "grade/precision_at_*", "grade/control/precision_at_*")
"""Grades lead every method's summary line (see `diffgame.grading`)."""


def run_methods(cfg: DictConfig, parent_run_id: str | None = None) -> list[StageSummary]:
    """One `diff` run per method in `cfg.method`; `full` mode makes the store if needed, `diffing` requires it."""
    planned = []
    for name in method_names(cfg):
        canonical = canonical_name(name)
        method_cls, _ = get_method(name)
        planned.append((canonical, method_cls, build_config(name, cfg.method[name])))
    fingerprints = diff_fingerprints(cfg)

    summaries: list[StageSummary] = []
    todo = []
    for name, cls, config in planned:
        fp = fingerprints[name]
        done = tracking.find_finished("diff", fp)
        if done is not None:
            metrics = dict(done.data.metrics)
            if done.data.tags.get(tracking.TAG_GRADING) != str(GRADING_VERSION):  # graded under older rules
                grades = regrade_run(cfg, name, done.info.run_id)
                stale = tracking.StageRun(done.info.run_id)
                stale.log_metrics(grades)
                stale.set_tags({tracking.TAG_GRADING: GRADING_VERSION})
                metrics.update(grades)
            summaries.append(_summary(cfg, name, cls, done.info.run_id, metrics, reused=True))
        else:
            todo.append((name, cls, config, fp))
    if not todo:
        return summaries

    store, pre_run_id = None, None
    if any(cls.needs_store for _, cls, _, _ in todo):
        store, pre_run_id = _open_store(cfg, parent_run_id)
    base = organism = None
    if any(cls.needs_models for _, cls, _, _ in todo):
        from diffgame.models import load_pair

        base, organism = load_pair(cfg)
    zoo = weights_spec(cfg).kind == "zoo"
    for name, cls, config, fp in todo:
        tags = {tracking.TAG_MODEL: cfg.model.name, tracking.TAG_ORGANISM: cfg.organism.name,
                tracking.TAG_METHOD: name, tracking.TAG_PREPROCESS: pre_run_id, tracking.TAG_GRADING: GRADING_VERSION}
        params = {f"method.{k}": v for k, v in dataclasses.asdict(config).items()}
        params.update({"dataset": cfg.dataset.name, "layers": list(store.layers) if store is not None else None})
        if zoo:
            params["zoo.size"] = cfg.zoo.size  # the app loads zoo models of this size
        with tracking.stage_run("diff", fp=fp, tags=tags, experiment=cfg.tracking.experiment,
                                run_name=f"{name}-{cfg.organism.name}", params=params,
                                parent_run_id=parent_run_id) as run:
            ctx = MethodContext(config=config, cfg=cfg, store=store if cls.needs_store else None,
                                base=base, organism=organism)
            result = cls(config).run(ctx)
            log_result(run, result)
            grades = grade_result(cfg, name, result, tokenizer=organism.tokenizer if organism else None)
            run.log_metrics(grades)
        summaries.append(_summary(cfg, name, cls, run.run_id, {**result.metrics, **grades}, reused=False))
    return summaries


def diff_fingerprints(cfg: DictConfig) -> dict[str, str]:
    """Fingerprint of each method's diff run in `cfg.method` (canonical name -> fingerprint): the method's
    config, the base and organism identities, the dataset, and the store's fingerprint for store methods."""
    from diffgame.extract import preprocess_fingerprint
    from diffgame.models import organism_identity, resolve_base_source

    identity = {"model": resolve_base_source(cfg)[1], "organism": organism_identity(cfg),
                "dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}
    out, pre_fp = {}, None
    for name in method_names(cfg):
        cls, _ = get_method(name)
        if cls.needs_store and pre_fp is None:
            pre_fp = preprocess_fingerprint(cfg)
        config = build_config(name, cfg.method[name])
        out[canonical_name(name)] = tracking.fingerprint(
            {"method": canonical_name(name), "config": dataclasses.asdict(config), **identity},
            pre_fp if cls.needs_store else "")
    return out


def _open_store(cfg: DictConfig, parent_run_id: str | None):
    """The store of the matching preprocess run: made or reused in `full` mode, required in `diffing` mode."""
    from diffgame.extract import find_store, preprocess
    from diffgame.store import ActivationStore

    if cfg.pipeline.mode == "diffing":
        run_id, store = find_store(cfg)
        return store, run_id
    result = preprocess(cfg, parent_run_id=parent_run_id)
    return ActivationStore.open(result.store_path), result.run_id


def _summary(cfg, name, cls, run_id, metrics, reused) -> StageSummary:
    return StageSummary("diff", run_id, cfg.model.name, cfg.organism.name, method=name, reused=reused,
                        headline=headline(metrics, GRADE_HEADLINE + tuple(getattr(cls, "headline", ()))))


def headline(metrics: dict[str, float], patterns: tuple[str, ...], limit: int = 4) -> dict[str, float]:
    """Up to `limit` metrics matching `patterns` (glob, in pattern order); the first keys when none match."""
    keys: list[str] = []
    for pattern in patterns:
        keys += [k for k in sorted(metrics) if fnmatch.fnmatchcase(k, pattern) and k not in keys]
    keys = keys or sorted(metrics)
    return {k: float(metrics[k]) for k in keys[:limit]}


def log_result(run: tracking.StageRun, result: MethodResult) -> None:
    """Log every field of `result` under `run` (file layout: see `MethodResult`), in one artifact upload."""
    import matplotlib.pyplot as plt
    from safetensors.torch import save_file

    from diffgame import examples as examples_mod

    if result.metrics:
        run.log_metrics(result.metrics)
    with tempfile.TemporaryDirectory(prefix="diffgame-result-") as tmp:
        root = Path(tmp)
        for name, table in result.tables.items():
            table.to_parquet(_mkdir(root / "tables") / f"{name}.parquet", index=False)
        for name, found in result.examples.items():
            examples_mod.save(found, root / "examples" / f"{name}.json")
        if result.vectors:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in result.vectors.items()},
                      str(root / "vectors.safetensors"))
        for name, fig in result.figures.items():
            fig.savefig(_mkdir(root / "plots") / f"{name}.png", dpi=110)
            plt.close(fig)
        if result.ranked_tokens:
            (_mkdir(root / "evidence") / "ranked_tokens.json").write_text(
                json.dumps({k: v.to_dict() for k, v in result.ranked_tokens.items()}))
        for name, rows in result.samples.items():
            (_mkdir(root / "samples") / f"{name}.json").write_text(json.dumps(rows))
        if any(root.iterdir()):
            run.log_artifacts(root)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
