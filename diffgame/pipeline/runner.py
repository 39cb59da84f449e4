"""Run a plan's diffing methods: one `diff` run each, on one shared preprocess run and one model load, then grade.

The runner owns MLflow: it reuses a FINISHED run with a method's fingerprint (regrading it when it was graded under
older rules), makes or finds the store, loads the models once, gives each method its context, logs the result
(`diffgame.tracking.artifacts`), finds the control organism's evidence (making the control's run in `full` mode) and hands
both to `diffgame.grading.score`, which only computes scores.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from types import SimpleNamespace

from diffgame import tracking
from diffgame.config import registry
from diffgame.data.sequences import read_rows, request_source
from diffgame.errors import DataError, ModelError, StoreError
from diffgame.grading.ground_truth import GroundTruth, ground_truth
from diffgame.grading.score import GRADING_VERSION, grade
from diffgame.grading.words import WORDS_VERSION, WordCompleter, ranked_words
from diffgame.methods.base import MethodContext
from diffgame.models.loading import load_pair
from diffgame.models.paired import shared_vocab, vocab_size
from diffgame.records.plan import Plan
from diffgame.records.schema import CONTROL, OrganismConfig
from diffgame.store import ActivationStore
from diffgame.tracking import artifacts, claims

GRADE_HEADLINE = ("grade/relative/precision_at_*", "grade/precision_at_*", "grade/control/precision_at_*")
"""Grades lead every method's summary line (see `diffgame.grading.score`)."""

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


def run_methods(plan: Plan, parent_run_id: str | None = None) -> list[StageSummary]:
    """One `diff` run per method of `plan`; `full` mode makes the store if needed, `diffing` requires it."""
    summaries: list[StageSummary] = []
    todo = []
    for name, config in plan.methods.items():
        cls, _ = registry.get_method(name)
        fp = plan.diff_fingerprints[name]
        done = tracking.find_finished("diff", fp)
        if done is None:
            todo.append((name, cls, config, fp))
            continue
        metrics = dict(done.data.metrics)
        if done.data.tags.get(tracking.TAG_GRADING) != str(GRADING_VERSION):  # graded under older rules
            grades = regrade_run(plan, name, done.info.run_id)
            stale = tracking.StageRun(done.info.run_id)
            stale.log_metrics(grades)
            stale.set_tags({tracking.TAG_GRADING: GRADING_VERSION})
            metrics.update(grades)
        summaries.append(_summary(plan, name, cls, done.info.run_id, metrics, reused=True))
    if not todo:
        return summaries

    store, pre_run_id = None, None
    if any(cls.needs_store for _, cls, _, _ in todo):
        store, pre_run_id = _open_store(plan, parent_run_id)
    base = organism = completer = None
    if any(cls.needs_models for _, cls, _, _ in todo):
        base, organism = load_pair(plan.pair)
        completer = WordCompleter(organism.model, organism.tokenizer)  # shared: one cache for all methods
    for name, cls, config, fp in todo:
        with claims.claim("diff", fp, f"{name} diff of {plan.model_name}/{plan.organism_name}"):
            done = tracking.find_finished("diff", fp)  # a process we waited for may have made it meanwhile
            if done is not None:
                summaries.append(_summary(plan, name, cls, done.info.run_id, dict(done.data.metrics), reused=True))
                continue
            summaries.append(_run_method(plan, name, cls, config, fp, store, pre_run_id, base, organism,
                                         completer, parent_run_id))
    return summaries


def already_done(plan: Plan) -> list[StageSummary] | None:
    """The summary rows of `plan` when every method's diff run is FINISHED and graded under the current rules (nothing
    left to do: a fanned-out sweep submits no job for it), else None."""
    rows = []
    for name in plan.methods:
        done = tracking.find_finished("diff", plan.diff_fingerprints[name])
        if done is None or done.data.tags.get(tracking.TAG_GRADING) != str(GRADING_VERSION):
            return None
        rows.append(_summary(plan, name, registry.get_method(name)[0], done.info.run_id, dict(done.data.metrics),
                             reused=True))
    return rows


def _run_method(plan: Plan, name: str, cls, config, fp: str, store, pre_run_id, base, organism, completer,
                parent_run_id: str | None) -> StageSummary:
    """One new (or resumed) diff run of method `name`: run it, log its result, grade it."""
    cfg = plan.cfg
    method = cls(config)
    tags = {tracking.TAG_MODEL: plan.model_name, tracking.TAG_ORGANISM: plan.organism_name,
            tracking.TAG_VARIANT: cfg.organism.variant,
            tracking.TAG_METHOD: name, tracking.TAG_PREPROCESS: pre_run_id, tracking.TAG_GRADING: GRADING_VERSION,
            tracking.TAG_WORDS: WORDS_VERSION,
            tracking.TAG_ORGANISM_DATA: ",".join(organism_data(cfg, method, store)) or "none"}
    if cls.needs_models and vocab_size(organism.model) != vocab_size(base.model):
        tags[tracking.TAG_SHARED_VOCAB] = f"{shared_vocab(base.model, organism.model)} of {vocab_size(organism.model)}"
    params = {f"method.{k}": v for k, v in dataclasses.asdict(config).items()}
    params.update({"dataset": cfg.dataset.name, "layers": list(store.layers) if store is not None else None})
    if cls.needs_store:
        params["skip_first"] = int(cfg.model.skip_first)
    if plan.pair.organism.identity.get("kind") == "zoo":
        params["zoo.size"] = cfg.zoo.size  # the app loads zoo models of this size
    resumable = tracking.find_resumable("diff", fp) if cls.resumable else None
    with tracking.stage_run("diff", fp=fp, tags=tags, experiment=cfg.tracking.experiment,
                            run_name=f"{name}-{plan.organism_name}", params=params, parent_run_id=parent_run_id,
                            resume_run_id=resumable.info.run_id if resumable else None) as run:
        texts = method_texts(method, cfg.organism, cfg.dataset.sources)
        ctx = MethodContext(config=config, layers=list(plan.layers), seed=int(cfg.seed), tokenizer=plan.tokenizer,
                            store=store if cls.needs_store else None, base=base, organism=organism, texts=texts)
        if cls.resumable:
            ctx.logger = tracking.lightning_logger(run.run_id)
            ctx.workdir = artifacts.checkpoint_dir(run, fp)
        result = method.run(ctx)
        add_words(result, completer)
        artifacts.log_result(run, result)
        grades = _grade(plan, name, result)
        run.log_metrics(grades)
    return _summary(plan, name, cls, run.run_id, {**result.metrics, **grades}, reused=False)


def add_words(result, completer: WordCompleter | None) -> None:
    """Complete the result's token readouts into words with the organism's completer (`diffgame.grading.words`), where the
    method did not give them itself; nothing without a loaded organism (None)."""
    todo = {k: r for k, r in result.ranked_tokens.items() if k not in result.ranked_words}
    if todo and completer is not None:
        result.ranked_words.update(ranked_words(todo, completer))


def organism_data(cfg, method, store) -> list[str]:
    """Names of the inputs of `method`'s evidence that are the organism's own training data: the store's datasets
    from the `organism` source (or its `training_data`), and text requests of that source."""
    own = {"organism", *(d for d in (cfg.organism.training_data,) if d)}
    out = []
    if method.needs_store and store is not None:
        sources = cfg.dataset.sources or {}
        out += [d for d in store.datasets if d in sources and str(sources[d].source) in own]
    out += [k for k, r in method.texts().items()
            if r.evidence and request_source(r.source, cfg.dataset.sources) in own]
    return out


def method_texts(method, organism=None, sources=None) -> dict[str, list[dict]]:
    """The rows of every text source `method.texts()` asks for, by name (`organism`: the organism's config node,
    for its own training data; `sources`: the dataset preset's, for `@name` references)."""
    out = {}
    for key, r in method.texts().items():
        try:
            out[key] = read_rows(r.source, r.kind, r.split, r.max_samples, organism=organism, sources=sources)
        except DataError:
            if not r.optional:
                raise
    return out


def find_store(plan: Plan) -> tuple[str, ActivationStore]:
    """Run id and opened store of the FINISHED preprocess run of `plan`, else a StoreError naming the command."""
    fp, command = plan.store_fingerprint, plan.command()
    run = tracking.find_finished("preprocess", fp)
    if run is not None:
        try:
            return run.info.run_id, open_run_store(run.info.run_id, int(plan.cfg.model.skip_first))
        except StoreError as e:
            tracking.abandon(run.info.run_id, f"store unusable: {e}")
            raise StoreError(f"the store of preprocess run {run.info.run_id} is unusable ({str(e)[:300]}); the run "
                             f"is now marked FAILED; run `{command}` to build it again") from None
    busy = tracking.find_live("preprocess", fp)
    if busy is not None:
        raise StoreError(f"preprocess run {busy.info.run_id} for this store is still running in another process; "
                         f"wait for it to finish, then run this command again")
    stopped = tracking.find_resumable("preprocess", fp)
    if stopped is not None:
        raise StoreError(f"preprocess run {stopped.info.run_id} for this store did not finish "
                         f"({stopped.info.status}); run `{command}` to resume it")
    raise StoreError(f"no preprocess run for model={plan.model_name} organism={plan.organism_name} "
                     f"dataset={plan.cfg.dataset.name} (fingerprint {fp}) in {tracking.resolve_uri()}; "
                     f"run `{command}`")


def _open_store(plan: Plan, parent_run_id: str | None) -> tuple[ActivationStore, str]:
    """The store of the plan's preprocess run: made or reused in `full` mode, required in `diffing` mode."""
    if plan.mode == "diffing":
        run_id, store = find_store(plan)
        return store, run_id
    from diffgame.preprocess import preprocess  # Lightning: imported only when a store may have to be made

    result = preprocess(plan, parent_run_id=parent_run_id)
    # a remote store is read through the shard cache, also one built here (in the cache then, but evictable)
    return open_run_store(result.run_id, int(plan.cfg.model.skip_first)), result.run_id


def open_run_store(run_id: str, skip_first: int = 0) -> ActivationStore:
    """The store of FINISHED preprocess run `run_id`: in place, or fetched file by file as it is read."""
    folder, fetch = artifacts.store_source(run_id)
    return ActivationStore.open(folder, skip_first=skip_first, fetch=fetch)


# --- grading -----------------------------------------------------------------------------------------
def ground_truths(organism: OrganismConfig, candidates: dict[str, OrganismConfig] | None, tokenizer
                  ) -> tuple[GroundTruth, dict[str, GroundTruth] | None]:
    """The organism's ground truth, and every identification candidate's (`Plan.candidates`; None when the organism
    is not one of them), resolved against `tokenizer`."""
    gt = ground_truth(organism, tokenizer)
    if candidates is None:
        return gt, None
    return gt, {n: gt if n == gt.organism else ground_truth(org, tokenizer) for n, org in candidates.items()}


def _grade(plan: Plan, method: str, evidence) -> dict[str, float]:
    """Grades of a method's evidence: the ground truths and the control's evidence are gathered here, the scores
    computed by `diffgame.grading.score.grade`."""
    if not plan.cfg.organism.has_ground_truth:
        return {}
    ranked = bool(evidence.ranked_tokens) and plan.organism_name != CONTROL
    gt, candidates = ground_truths(plan.cfg.organism, plan.candidates, plan.tokenizer)
    grades = grade(evidence, gt, plan.tokenizer, control=control_evidence(plan, method) if ranked else None,
                   candidates=candidates if ranked else None)
    # ground truths graded without their data vocabulary (unreadable offline): such grades are not comparable
    missing = {g.organism for g in (gt, *((candidates or {}).values() if ranked else ())) if g.vocab_missing}
    if missing:
        grades["grade/vocab_missing"] = float(len(missing))
    return grades


def control_evidence(plan: Plan, method: str) -> SimpleNamespace | None:
    """Ranked tokens and words of the control organism's finished diff run of `method` with the same base, dataset and
    method config (its fingerprint), so a store holding other builds or configs never lends its control.

    In `full` mode a missing control run is made (reusing a finished one by fingerprint), as the runner would for
    `organism=control method=<method>`; in other modes a missing control gives None.
    """
    try:
        control = plan.control()
    except ModelError:  # its zoo model is not built: only `full` mode builds it, and then it is there
        if plan.mode == "full":
            raise
        return None
    if control is None:
        return None
    fp = control.diff_fingerprints[method]
    run = tracking.find_finished("diff", fp)
    if run is None and control.mode == "full":
        run_methods(only(control, method))
        run = tracking.find_finished("diff", fp)
    if run is None:
        return None
    paths = artifacts.list_artifacts(run.info.run_id, "evidence")
    return SimpleNamespace(ranked_tokens=artifacts.ranked_tokens(run.info.run_id, paths),
                           ranked_words=artifacts.ranked_words(run.info.run_id, paths))


def only(plan: Plan, method: str) -> Plan:
    """The plan restricted to one of its methods."""
    return dataclasses.replace(plan, methods={method: plan.methods[method]},
                               diff_fingerprints={method: plan.diff_fingerprints[method]})


def regrade_run(plan: Plan, method: str, run_id: str) -> dict[str, float]:
    """Grades of a finished diff run recomputed from its logged evidence (ranked tokens and samples)."""
    paths = artifacts.list_artifacts(run_id)
    evidence = SimpleNamespace(ranked_tokens=artifacts.ranked_tokens(run_id, paths),
                               ranked_words=artifacts.ranked_words(run_id, paths),
                               samples=artifacts.all_samples(run_id, paths))
    return _grade(plan, method, evidence)


# --- summaries ---------------------------------------------------------------------------------------
def _summary(plan: Plan, name, cls, run_id, metrics, reused) -> StageSummary:
    return StageSummary("diff", run_id, plan.model_name, plan.organism_name, method=name, reused=reused,
                        headline=headline(metrics, GRADE_HEADLINE + tuple(cls.headline)))


def headline(metrics: dict[str, float], patterns: tuple[str, ...], limit: int = 4) -> dict[str, float]:
    """Up to `limit` metrics matching `patterns` (glob, in pattern order); the first keys when none match."""
    keys: list[str] = []
    for pattern in patterns:
        keys += [k for k in sorted(metrics) if fnmatch.fnmatchcase(k, pattern) and k not in keys]
    keys = keys or sorted(metrics)
    return {k: float(metrics[k]) for k in keys[:limit]}
