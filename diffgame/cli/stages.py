"""The pipeline's commands (run, preprocess, diff), the config printout, and the runs, grades and play commands."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from diffgame.cli import Jobs, Launcher, Multirun, Overrides, Rebuild, TrackingUri, _fail, app
from diffgame.errors import ConfigError, DiffgameError


def _summary(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    from diffgame import tracking

    console = Console(width=None if sys.stdout.isatty() else 200, markup=False)
    table = Table(title="diffgame runs")
    for col in ("stage", "model", "organism", "method", "run id", "reused", "headline"):
        table.add_column(col)
    for r in rows:
        head = "  ".join(f"{k}={v:.4g}" for k, v in list(r.headline.items())[:4])
        table.add_row(r.stage, r.model, r.organism, r.method, r.run_id, "yes" if r.reused else "", head)
    console.print(table)
    uri = tracking.resolve_uri()
    console.print(f"tracking: {uri}")
    if rows:
        console.print(f"open a run: {tracking.ui_url(rows[-1].run_id)}")
    if not uri.startswith("http"):
        console.print(f"compare in the MLflow UI:  mlflow ui --backend-store-uri {uri}")
    console.print(f"inspect in the app:        diffgame app --tracking-uri {uri}")


def _pipeline(overrides, mode, multirun, tracking_uri, rebuild: bool = False, launcher: str | None = None,
              jobs: int | None = None) -> None:
    from diffgame.errors import SweepError
    from diffgame.pipeline.chain import execute

    extra = (["preprocessing.rebuild=true"] if rebuild else []) + ([f"launcher={launcher}"] if launcher else []) + (
        [f"launcher.jobs={jobs}"] if jobs else [])
    try:
        rows = execute(list(overrides or []) + extra, mode=mode, multirun=multirun or bool(launcher),
                       tracking_uri=tracking_uri)
    except SweepError as e:  # what finished is still worth its table
        _summary(e.summaries)
        _fail(e)
    except DiffgameError as e:
        _fail(e)
    _summary(rows)


@app.command()
def run(overrides: Overrides = None, multirun: Multirun = False, tracking_uri: TrackingUri = None,
        rebuild: Rebuild = False, launcher: Launcher = None, jobs: Jobs = None) -> None:
    """Run the pipeline: preprocess (or reuse the store), then one diff run per method.

    `pipeline.mode=preprocessing` stops after the store; `pipeline.mode=diffing` requires an existing one.

    Example: diffgame run organism=caps method=\\[kl,normdiff]

    Fanned out: diffgame run organism=caps,tea_lover method=kl,adl --launcher local --jobs 2
    """
    _pipeline(overrides, None, multirun, tracking_uri, rebuild, launcher, jobs)


@app.command()
def preprocess(overrides: Overrides = None, multirun: Multirun = False, tracking_uri: TrackingUri = None,
               rebuild: Rebuild = False, launcher: Launcher = None, jobs: Jobs = None) -> None:
    """Cache base and organism activations on the same tokens into an activation store (a `preprocess` run).

    Example: diffgame preprocess organism=caps preprocessing.layers=\\[0.5]
    """
    _pipeline(overrides, "preprocessing", multirun, tracking_uri, rebuild, launcher, jobs)


@app.command()
def diff(overrides: Overrides = None, multirun: Multirun = False, tracking_uri: TrackingUri = None,
         launcher: Launcher = None, jobs: Jobs = None) -> None:
    """Run diffing methods on an existing store (one `diff` run per method); fails if none matches.

    Example: diffgame diff organism=caps method=kl
    """
    _pipeline(overrides, "diffing", multirun, tracking_uri, launcher=launcher, jobs=jobs)


@app.command()
def config(overrides: Overrides = None) -> None:
    """Print the composed config as YAML for the given overrides (nothing is loaded or run).

    Example: diffgame config model=gemma3_1B organism=cake_bake
    """
    from diffgame.config.compose import compose, describe_weights, to_yaml

    try:
        cfg = compose(list(overrides or []))
        typer.echo(to_yaml(cfg))
        typer.echo(f"# organism weights: {describe_weights(cfg)}")
    except DiffgameError as e:
        _fail(e)


@app.command()
def runs(stage: Annotated[Optional[str], typer.Option(help="zoo | preprocess | diff | sweep | play | game")] = None,
         model: Annotated[Optional[str], typer.Option(help="Filter by base model name.")] = None,
         organism: Annotated[Optional[str], typer.Option(help="Filter by organism name.")] = None,
         method: Annotated[Optional[str], typer.Option(help="Filter by method name.")] = None,
         variant: Annotated[Optional[str], typer.Option(help="Filter by organism variant (default, full, ...).")] = None,
         limit: Annotated[int, typer.Option(help="Show at most this many runs, newest first.")] = 50,
         tracking_uri: TrackingUri = None) -> None:
    """List runs in the tracking store as a table, filtered by their diffgame tags.

    Example: diffgame runs --stage diff --organism caps
    """
    from rich.console import Console
    from rich.table import Table

    from diffgame import tracking

    tracking.set_uri(tracking_uri)
    filters = {k: v for k, v in ((tracking.TAG_STAGE, stage), (tracking.TAG_MODEL, model),
                                 (tracking.TAG_ORGANISM, organism), (tracking.TAG_METHOD, method),
                                 (tracking.TAG_VARIANT, variant)) if v}
    try:
        found = tracking.search(filters, max_results=limit)
    except DiffgameError as e:
        _fail(e)
    table = Table(title=f"runs in {tracking.resolve_uri()}")
    for col in ("run id", "stage", "model", "organism", "variant", "method", "status", "fingerprint"):
        table.add_column(col)
    for r in found:
        t = r.data.tags
        table.add_row(r.info.run_id, t.get(tracking.TAG_STAGE, ""), t.get(tracking.TAG_MODEL, ""),
                      t.get(tracking.TAG_ORGANISM, ""), t.get(tracking.TAG_VARIANT, ""), t.get(tracking.TAG_METHOD, ""),
                      r.info.status, t.get(tracking.TAG_FINGERPRINT, ""))
    Console(width=200, markup=False).print(table)
    if not found:
        typer.echo("no runs; make some with `diffgame zoo build` or `diffgame run`")


@app.command()
def grades(overrides: Annotated[Optional[list[str]], typer.Argument(
               help="`model=<name>`, as for `run` (the same as --model).", show_default=False)] = None,
           model: Annotated[str, typer.Option(help="Base model name (the diffgame.model tag).")] = "toy",
           tracking_uri: TrackingUri = None) -> None:
    """Grade table of the newest diff run per organism and method, next to the control's, with identification.

    Example: diffgame grades model=smollm2_135m
    """
    from rich.console import Console
    from rich.table import Table

    from diffgame import tracking
    from diffgame.config.compose import selections
    from diffgame.config.configtree import CONTROL
    from diffgame.grading import score as grading
    from diffgame.ui.runs import grade_table

    tracking.set_uri(tracking_uri)
    try:
        picked, rest = selections(list(overrides or []))
        if rest or set(picked) - {"model"}:
            raise ConfigError(f"grades takes model=<name> only (the table covers every organism and method), "
                              f"got {' '.join(overrides or [])}")
        model = picked.get("model", [model])[-1]
        found = grade_table(model)
    except DiffgameError as e:
        _fail(e)
    if found.empty:
        _fail(DiffgameError(f"no finished diff runs of model '{model}' in {tracking.resolve_uri()}; "
                            f"make some with `diffgame run model={model} ...`"))
    cols = [("precision_at_20", "p@20"), ("control/precision_at_20", "control p@20"),
            ("relative/precision_at_20", "relative"), ("identification_rank", "ident. rank"),
            ("tokens/relative/precision_at_20", "tokens relative"), ("tokens/identification_rank", "tokens rank"),
            ("samples/steered_hit_rate", "steered hits"), ("samples/unsteered_hit_rate", "unsteered hits")]
    table = Table(title=f"grades of model {model} in {tracking.resolve_uri()}")
    for head in ("method", "organism", "variant", *(h for _, h in cols), "run id"):
        table.add_column(head)
    for _, row in found[found["organism"] != CONTROL].iterrows():  # the control is the reference column
        cells = [("" if k not in row or row[k] != row[k] else f"{row[k]:.0f}" if k.endswith("identification_rank")
                  else f"{row[k]:+.2f}" if "relative" in k else f"{row[k]:.2f}") for k, _ in cols]
        table.add_row(row["method"], row["organism"], row["variant"], *cells, row["run_id"])
    console = Console(width=200, markup=False)
    console.print(table)
    console.print("headline columns grade whole words where a run has them (tokens otherwise); `tokens` columns grade "
                  "the raw token lists")
    by_tokens = grading.identification_by_method(found, "tokens/identification_rank")
    for method, summary in grading.identification_by_method(found).items():
        tok = by_tokens.get(method)
        console.print(f"{method}: identification accuracy {summary['accuracy']:.2f}, MRR {summary['mrr']:.2f}"
                      + (f" (tokens: accuracy {tok['accuracy']:.2f}, MRR {tok['mrr']:.2f})" if tok else ""))
    stale = found[found["grading_version"] != str(grading.GRADING_VERSION)]
    if len(stale):
        console.print(f"{len(stale)} of these runs were graded under older rules than version "
                      f"{grading.GRADING_VERSION}; `diffgame run` with their config regrades them "
                      f"({', '.join(stale['run_id'].head(3))}{', ...' if len(stale) > 3 else ''})")


@app.command()
def play(organisms: Annotated[Optional[list[str]], typer.Argument(
             help="Overrides as for `run`: `organism=caps,tea_lover` (default: every drawable organism with runs of "
                  "the methods), `method=\\[adl,kl]`, `model=toy`, `zoo.size=micro`, `play.budget.tool_calls=8`; "
                  "bare organism names work too.", show_default=False)] = None,
         model: Annotated[str, typer.Option(help="Base model name (the diffgame.model tag).")] = "toy",
         method: Annotated[Optional[list[str]], typer.Option(
             "--method", help="Methods whose evidence the agent reads (repeat; default: adl and blackbox).")] = None,
         agent: Annotated[str, typer.Option(
             help="The agent: lens (offline, no LLM), llm (evidence, questions, steering) or llm_blackbox "
                  "(questions only); the LLM agents need --set play.endpoint.model=NAME.")] = "lens",
         settings: Annotated[Optional[list[str]], typer.Option(
             "--set", help="Config overrides (repeat): the endpoint, budget and rubric, e.g. --set "
                           "play.endpoint.base_url=http://127.0.0.1:8000/v1 --set play.endpoint.model=qwen "
                           "--set play.budget.tool_calls=8.")] = None,
         tracking_uri: TrackingUri = None) -> None:
    """An agent plays the diffing game on finished diff runs: one `play` run per organism, scored.

    Example: diffgame play organism=roman_concrete 'method=\\[adl,kl]' zoo.size=micro
    """
    from rich.console import Console
    from rich.table import Table

    from diffgame import tracking
    from diffgame.config.compose import selections
    from diffgame.pipeline.play import DEFAULT_METHODS
    from diffgame.pipeline.play import play as play_one
    from diffgame.pipeline.play import playable

    tracking.set_uri(tracking_uri)
    try:
        picked, rest = selections([a for a in organisms or [] if "=" in a])
        model = picked.get("model", [model])[-1]
        methods = list(picked.get("method") or method or DEFAULT_METHODS)
        settings = [*(settings or []), *rest]
        names = [a for a in organisms or [] if "=" not in a] + picked.get("organism", [])
        names = names or playable(model, [] if agent == "probe" else methods)
        if not names:
            raise DiffgameError(f"no organism of model '{model}' has finished diff runs of {', '.join(methods)} in "
                                f"{tracking.resolve_uri()}; make them with `diffgame run model={model} "
                                f"method=[{','.join(methods)}] organism=<name>`")
        outcomes = [play_one(model, name, methods, agent, overrides=list(settings or [])) for name in names]
    except DiffgameError as e:
        _fail(e)
    evidence = "none (questions only)" if agent == "probe" else ", ".join(methods)
    table = Table(title=f"{agent} agent on model {model}, evidence: {evidence}")
    for head in ("organism", "guess", "correct", "keyword hits", "score 1-5", "rubric", "outcome", "run id",
                 "reused"):
        table.add_column(head, no_wrap=True)
    for o in outcomes:
        rubric, score = o.metrics.get("play/rubric_score"), o.metrics.get("play/keyword_score")
        table.add_row(o.organism, o.guess or "(none)", "yes" if o.metrics["play/guess_correct"] else "no",
                      f"{o.metrics['play/keyword_hits']:.0f}", "" if score is None else f"{score:.0f}",
                      "" if rubric is None else f"{rubric:.0f}", o.outcome, o.run_id, "yes" if o.reused else "")
    console = Console(width=200, markup=False)
    console.print(table)
    for o in outcomes:
        console.print(f"{o.organism}: {o.description}")
    accuracy = sum(o.metrics["play/guess_correct"] for o in outcomes) / len(outcomes)
    keyword = sum(o.metrics["play/keyword_correct"] for o in outcomes) / len(outcomes)
    console.print(f"accuracy {accuracy:.2f} ({len(outcomes)} organisms), keyword grader {keyword:.2f}; "
                  f"runs in {tracking.resolve_uri()}")
