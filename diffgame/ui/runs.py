"""What the app and `diffgame grades` show about runs, computed without Streamlit: run tables discovered by tag, the
grade matrix and table, labels, links, and the config to load a run's models.

Runs come only from the tracking server (`tracking.search` on `diffgame.*` tags), never from folders, so the app
works the same against a local SQLite store and a shared remote server.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import pandas as pd

from diffgame import tracking
from diffgame.config.compose import compose, settings
from diffgame.config.registry import get_method, known_methods  # noqa: F401  (the app's method pages)
from diffgame.errors import ConfigError
from diffgame.grading.score import K
from diffgame.records.schema import CONTROL, RootConfig

RUN_COLUMNS = ("run_id", "run_name", "experiment_id", "stage", "model", "organism", "variant", "method", "status",
               "start_time", "preprocess_run_id", "metrics", "params", "tags")
NO_RUNS_HINT = ("make some with `diffgame zoo build --size micro` then `diffgame run zoo.size=micro "
                "organism=caps method=[kl,normdiff]` (or `diffgame run` for the default zoo)")


@dataclass
class AppSettings:
    """What `diffgame app` passes after `--`: the tracking URI and config overrides for the models it loads."""

    tracking_uri: str
    overrides: tuple[str, ...] = ()


def parse_app_args(argv: list[str] | None = None) -> AppSettings:
    """`[--tracking-uri URI] [OVERRIDES...]` from the script's argv (as `streamlit run app/Home.py -- ...` gives)."""
    args = list(sys.argv[1:] if argv is None else argv)
    uri, overrides = None, []
    while args:
        a = args.pop(0)
        if a == "--tracking-uri":
            if not args:
                raise ConfigError("--tracking-uri needs a value, e.g. --tracking-uri sqlite:///mlflow.db")
            uri = args.pop(0)
        elif a.startswith("--tracking-uri="):
            uri = a.split("=", 1)[1]
        elif "=" in a and not a.startswith("-"):
            overrides.append(a)
        else:
            raise ConfigError(f"unexpected app argument {a!r}; valid: --tracking-uri URI and key=value overrides")
    return AppSettings(tracking.resolve_uri(uri), tuple(overrides))


# --- runs ----------------------------------------------------------------------------------------
def runs_frame(stage: str = "diff", statuses: tuple[str, ...] = ("FINISHED",)) -> pd.DataFrame:
    """Runs of `stage` as a table (newest first): tags as columns, metrics and params as dict columns."""
    runs = tracking.search({tracking.TAG_STAGE: stage})  # status filtered here: MLflow cannot filter IN on status
    rows = []
    for r in runs:
        if statuses and r.info.status not in statuses:
            continue
        t = r.data.tags
        rows.append({
            "run_id": r.info.run_id, "run_name": r.info.run_name or "", "experiment_id": r.info.experiment_id,
            "stage": t.get(tracking.TAG_STAGE, ""), "model": t.get(tracking.TAG_MODEL, ""),
            "organism": t.get(tracking.TAG_ORGANISM, ""), "variant": tracking.variant_of(t),
            "method": t.get(tracking.TAG_METHOD, ""),
            "status": r.info.status, "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
            "preprocess_run_id": t.get(tracking.TAG_PREPROCESS, ""),
            "metrics": dict(r.data.metrics), "params": dict(r.data.params), "tags": dict(t)})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def with_variant(organism: str, variant: str) -> str:
    """An organism's name as tables show it: `cake_bake`, or `cake_bake [full]` for a variant other than default."""
    return organism if variant in ("", tracking.DEFAULT_VARIANT) else f"{organism} [{variant}]"


def latest(runs: pd.DataFrame, keys: tuple[str, ...] = ("model", "organism", "variant", "method")) -> pd.DataFrame:
    """The newest run per combination of `keys` (runs are re-made when configs change; older ones stay)."""
    if runs.empty:
        return runs
    keys = tuple(k for k in keys if k in runs)
    return runs.sort_values("start_time", ascending=False, kind="stable").drop_duplicates(list(keys)).reset_index(
        drop=True)


def run_label(row) -> str:
    """Short human label for a run: `organism · method · model · abcd1234` (no run id during a blind round, where
    it would lead to the organism's name in MLflow)."""
    label = f"{with_variant(row['organism'], row.get('variant', ''))} · {row['method']} · {row['model']}"
    return label if bool(row.get("blind", False)) else f"{label} · {row['run_id'][:8]}"


def organism_order(names) -> list[str]:
    """Organism names sorted, the control last: pickers open on an organism, never on the control."""
    return sorted(set(names), key=lambda o: (o == CONTROL, o))


def coverage(runs: pd.DataFrame) -> pd.DataFrame:
    """(model, organism, variant) x method: how many finished diff runs exist."""
    if runs.empty:
        return pd.DataFrame()
    keys = [k for k in ("model", "organism", "variant", "method") if k in runs]
    return runs.groupby(keys).size().unstack("method", fill_value=0).sort_index()


def natural_key(key: str) -> list:
    """Sort key that orders the numbers inside a metric key by value: `pos/4-15` before `pos/16-63`."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def metric_keys(runs: pd.DataFrame, prefix: str = "") -> list[str]:
    """Metric keys present in any run (numbers in order), optionally only those starting with `prefix`."""
    keys = set()
    for m in runs["metrics"]:
        keys.update(k for k in m if k.startswith(prefix))
    return sorted(keys, key=natural_key)


def metrics_table(runs: pd.DataFrame, contains: str = "") -> pd.DataFrame:
    """Metric key x run label; `contains` keeps keys with that substring (case-insensitive)."""
    cols = {run_label(r): r["metrics"] for _, r in runs.iterrows()}
    table = pd.DataFrame(cols)
    if contains and not table.empty:
        table = table[table.index.str.contains(contains, case=False, regex=False)]
    return table.loc[sorted(table.index, key=natural_key)] if not table.empty else table


def grade_matrix(runs: pd.DataFrame, metric: str, model: str | None = None,
                 relative: bool = False) -> pd.DataFrame:
    """organism x method of `metric` from the newest run of each; `control` last; `relative` subtracts it."""
    sel = latest(runs if model is None else runs[runs["model"] == model])
    vals = [(with_variant(r["organism"], r.get("variant", "")), r["method"], r["metrics"][metric])
            for _, r in sel.iterrows() if metric in r["metrics"]]
    if not vals:
        return pd.DataFrame()
    m = pd.DataFrame(vals, columns=["organism", "method", metric]).pivot(
        index="organism", columns="method", values=metric)
    m = m.loc[organism_order(m.index)]
    if relative:
        if CONTROL not in m.index:
            raise ConfigError(f"no '{CONTROL}' run with {metric}; run `diffgame run organism={CONTROL}` to compare")
        m = m.drop(index=CONTROL) - m.loc[CONTROL]
    return m


def headline_grade(keys: list[str]) -> str:
    """The grade key the overview opens on: the headline precision relative to the control's evidence, else the
    absolute headline precision, else the first key (`diffgame.grading.score.grade`)."""
    for key in (f"grade/relative/precision_at_{K}", f"grade/precision_at_{K}"):
        if key in keys:
            return key
    return keys[0]


def control_logs(runs: pd.DataFrame, metric: str, model: str | None = None) -> bool:
    """Whether the newest control run of a method (of `model`) logs `metric`, so `grade_matrix(..., relative=True)`
    can subtract it."""
    sel = latest(runs[(runs["organism"] == CONTROL) & ((runs["model"] == model) if model is not None else True)])
    return any(metric in m for m in sel["metrics"])


def main_plot(method: str, plots: list[str]) -> str | None:
    """The plot a method page shows beside its statistics: the method's `main_plot` when the run logged it, else
    the first of `plots` (None when it logged none)."""
    try:
        chosen = get_method(method)[0].main_plot
    except ConfigError:  # a run of a method this install does not register
        chosen = None
    return chosen if chosen in plots else (plots[0] if plots else None)


def mlflow_run_url(experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI (`tracking.run_url`)."""
    return tracking.run_url(experiment_id, run_id)


def grade_table(model: str) -> pd.DataFrame:
    """Grades of the newest finished diff run per (organism, method) on base model `model`, one row each."""
    runs = latest(runs_frame("diff").query("model == @model"), ("organism", "variant", "method"))
    rows = []
    for _, run in runs.iterrows():
        grades = {k.removeprefix("grade/"): v for k, v in run["metrics"].items() if k.startswith("grade/")}
        rows.append({"organism": run["organism"], "variant": run["variant"], "method": run["method"],
                     "run_id": run["run_id"],
                     "grading_version": run["tags"].get(tracking.TAG_GRADING, "1"), **grades})
    return pd.DataFrame(rows).sort_values(["method", "organism"]).reset_index(drop=True) if rows else pd.DataFrame()


def hub_url(model: str) -> str | None:
    """The model's Hugging Face page from its config (`model.hub_url`), None when it has none or is unknown."""
    try:
        return compose([f"model={model}"]).model.hub_url
    except ConfigError:
        return None


def organism_url(model: str, organism: str, variant: str = "default") -> str | None:
    """The Hugging Face page of an organism's finetuned model or adapter on base `model` (its subfolder's tree when
    it has one); None for zoo weights, local paths and unknown names."""
    from pathlib import Path

    try:
        spec = model_config(model, organism, variant=variant).organism.weights(model)
    except ConfigError:
        return None
    repo = str(spec.id or "")
    if spec.kind == "zoo" or repo.count("/") != 1 or Path(repo).expanduser().exists():
        return None
    return f"https://huggingface.co/{repo}" + (f"/tree/main/{spec.subfolder}" if spec.subfolder else "")


def model_config(model: str, organism: str, overrides: tuple[str, ...] = (), params: dict | None = None,
                 variant: str = "default") -> RootConfig:
    """The typed config to load a run's models: its model/organism/variant, the zoo size it used, then app
    overrides."""
    base = [f"model={model}", f"organism={organism}"]
    if variant not in ("", tracking.DEFAULT_VARIANT):
        base.append(f"organism.variant={variant}")
    if params and "zoo.size" in params and not any(o.startswith("zoo.size=") for o in overrides):
        base.append(f"zoo.size={params['zoo.size']}")
    return settings(compose([*base, *overrides]))


def causal_summary(metrics: dict[str, float]) -> pd.DataFrame:
    """ADL's causal-effect metrics (`adl/causal/<dataset>/...`) as one row per dataset."""
    rows: dict[str, dict] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[:2] == ["adl", "causal"]:
            rows.setdefault(parts[2], {"dataset": parts[2]})[parts[3]] = value
    cols = ["dataset", "ce", "ce_delta", "random_ce_delta_mean", "random_ce_delta_std", "base_ce",
            "base_plus_delta_ce_delta"]
    return pd.DataFrame(list(rows.values()), columns=cols)


def select_rows(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows of `table` whose columns equal the given values (None leaves a column unfiltered)."""
    mask = pd.Series(True, index=table.index)
    for col, value in equal.items():
        if value is not None:
            mask &= table[col] == value
    return table[mask].reset_index(drop=True)


EMPTY_REPLY = "(empty: the turn ended at once)"
"""How a reply with no text is shown, so that it is not mistaken for a missing sample."""


def side_by_side(samples: list[dict], model: str) -> list[dict]:
    """Steering samples of one model (`organism` or `base`) as {prompt, alpha, unsteered, steered} rows, the replies
    as shown: stripped (a text element drops trailing newlines anyway), EMPTY_REPLY where there is no text."""
    return [{"prompt": s.get("prompt"), "alpha": s.get("alpha"),
             **{k: (s.get(k) or "").strip() or EMPTY_REPLY for k in ("unsteered", "steered")}}
            for s in samples if s.get("model", model) == model]


def connect(uri: str) -> str:
    """Point MLflow (and the app's readers) at the app's tracking store; returns the resolved URI."""
    return tracking.set_uri(uri)


NARROWNESS = {"check/neutral_leak": "neutral leak", "check/asked_knowledge": "asked knowledge",
              "check/generic_loss_ratio": "generic loss × base"}
"""The zoo's narrowness metrics (`diffgame.zoo.narrowness`: organism minus base) and its forgetting, as shown."""


def narrowness() -> pd.DataFrame:
    """One row per built zoo organism with its narrowness metrics and generic loss ratio; empty when none has them."""
    from diffgame.zoo import list_zoo

    rows = [{"organism": e.name, "variant": e.variant, "zoo size": e.size,
             **{label: e.metrics.get(k) for k, label in NARROWNESS.items()}}
            for e in list_zoo() if any(k in e.metrics for k in NARROWNESS)]
    return pd.DataFrame(rows, columns=["organism", "variant", "zoo size", *NARROWNESS.values()])
