"""Fan a sweep's combinations out as jobs through submitit: processes on this machine (`launcher=local`) or a Slurm
array (`launcher=slurm`). Each child composes its combination and runs it as `diffgame run` would, under the sweep's
parent run; the existing claims and leases make children that need the same store or diff run wait for one and reuse
it, so a store is built once per sweep and a rerun of the sweep does only what is missing.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffgame import tracking
from diffgame.data.files import CONFIG_PATH_ENV
from diffgame.errors import ConfigError
from diffgame.pipeline.runner import StageSummary
from diffgame.records.schema import LauncherConfig

POLL_S = 1.0
CHILDREN = "sweep/children.json"
"""The parent sweep run's record of its children: overrides, job id, state, runs, log."""


@dataclass
class Child:
    """One combination of the sweep as a job: what it ran, where its log is, how it ended."""

    index: int
    overrides: list[str]
    job_id: str = ""
    state: str = "PENDING"
    """PENDING, RUNNING, then FINISHED or FAILED; REUSED when its runs were all done before the sweep (no job)."""
    log: str = ""
    """The job's stderr file (submitit's folder), where a failed child's traceback is."""
    runs: list[str] = field(default_factory=list)
    error: str = ""


def run_child(overrides: list[str], tracking_uri: str, config_path: str | None,
              parent_run_id: str) -> list[StageSummary]:
    """A child job's body: compose its combination and run it under the sweep's parent run."""
    from diffgame.config.compose import compose, settings
    from diffgame.pipeline.chain import run_one

    if config_path:
        os.environ[CONFIG_PATH_ENV] = config_path
    tracking.set_uri(tracking_uri)
    return run_one(settings(compose(overrides)), parent_run_id=parent_run_id)


def executor(launcher: LauncherConfig):
    """The submitit executor `launcher` names, with its resources; its folder holds every child's log."""
    import submitit

    if launcher.name == "slurm" and not tracking.resolve_uri().startswith("http"):
        warnings.warn(f"launcher=slurm with tracking store {tracking.resolve_uri()}: every job must reach it; use a "
                      f"tracking server (--tracking-uri http://host:5000, docs/cluster.md), as SQLite on a shared "
                      f"filesystem locks badly", stacklevel=3)
    folder = Path(launcher.folder).absolute()
    if launcher.name != "slurm":  # the local executor itself: it alone takes each child's `visible_gpus`
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=launcher.timeout_min, gpus_per_node=launcher.gpus_per_node)
        return ex
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as e:  # no `srun` here
        raise ConfigError(f"launcher=slurm needs a Slurm cluster ({e}); run the sweep from a Slurm login node, or "
                          f"use --launcher local on this machine") from None
    params = {"name": "diffgame", "timeout_min": launcher.timeout_min, "gpus_per_node": launcher.gpus_per_node,
              "slurm_array_parallelism": launcher.jobs, "slurm_setup": list(launcher.setup),
              "slurm_additional_parameters": dict(launcher.additional)}
    if launcher.cpus_per_task:
        params["cpus_per_task"] = launcher.cpus_per_task
    if launcher.mem_gb:
        params["mem_gb"] = launcher.mem_gb
    if launcher.partition:
        params["slurm_partition"] = launcher.partition
    ex.update_parameters(**params)
    return ex


def fan_out(combos: list[list[str]], launcher: LauncherConfig, parent: tracking.StageRun,
            progress: bool = True) -> tuple[list[StageSummary], list[Child]]:
    """Run every combination as a child job (at most `launcher.jobs` at once) and wait for all of them; returns the
    finished children's summary rows and every child's record, also logged to the parent as `CHILDREN`."""
    from tqdm.auto import tqdm

    ex = executor(launcher)
    children = [Child(i, list(c)) for i, c in enumerate(combos)]
    summaries: list[StageSummary] = []
    for c in children:  # a rerun submits nothing for what is done: a queued job that only finds its runs costs hours
        rows = _done(c.overrides)
        if rows is not None:
            c.state, c.runs = "REUSED", [r.run_id for r in rows]
            summaries.extend(rows)
    args = (tracking.resolve_uri(), os.environ.get(CONFIG_PATH_ENV), parent.run_id)
    jobs: dict[int, object] = {}
    pending = [c for c in children if c.state == "PENDING"]
    bar = tqdm(total=len(pending), desc=f"sweep ({launcher.name}, {launcher.jobs} at once)", unit="child",
               disable=not progress)
    if launcher.name == "slurm":  # one array; Slurm keeps `jobs` of it running
        with ex.batch():
            submitted = [ex.submit(run_child, c.overrides, *args) for c in pending]
        for c, job in zip(pending, submitted):
            jobs[c.index] = job
            c.job_id, c.state, c.log = str(job.job_id), "RUNNING", str(job.paths.stderr)
        _record(parent, launcher, children)
    todo = [c for c in pending if c.index not in jobs]
    slots: dict[int, int] = {}  # running child -> its slot (which GPUs it sees)
    while todo or jobs:
        while todo and len(jobs) < launcher.jobs:  # local: keep `jobs` processes running
            c = todo.pop(0)
            slot = min(set(range(launcher.jobs)) - set(slots.values()))
            if launcher.gpus_per_node:
                g = launcher.gpus_per_node
                ex.update_parameters(visible_gpus=list(range(slot * g, (slot + 1) * g)))
            job = ex.submit(run_child, c.overrides, *args)
            jobs[c.index], slots[c.index] = job, slot
            c.job_id, c.state, c.log = str(job.job_id), "RUNNING", str(job.paths.stderr)
            _record(parent, launcher, children)
        for index, job in list(jobs.items()):
            if not job.done():
                continue
            c = children[index]
            try:
                rows = job.result()
            except Exception as e:  # a failed or killed child: reported, the others go on
                c.state, c.error = "FAILED", _last_line(e)
            else:
                c.state, c.runs = "FINISHED", [r.run_id for r in rows]
                summaries.extend(rows)
            del jobs[index]
            slots.pop(index, None)
            bar.update(1)
            _record(parent, launcher, children)
        if jobs:
            time.sleep(POLL_S)
    bar.close()
    return summaries, children


def _done(overrides: list[str]) -> list[StageSummary] | None:
    """The summary rows of a combination whose diff runs are all finished already, else None (also when it cannot be
    planned here: its job will say why)."""
    from diffgame.config.compose import compose, settings
    from diffgame.pipeline import planner
    from diffgame.pipeline.runner import already_done

    try:
        cfg = settings(compose(overrides))
        if cfg.pipeline.mode not in ("full", "diffing"):
            return None
        return already_done(planner.make_plan(cfg))
    except Exception:  # noqa: BLE001 - only a shortcut; the child runs the combination and reports its own error
        return None


def _record(parent: tracking.StageRun, launcher: LauncherConfig, children: list[Child]) -> None:
    parent.log_dict({"launcher": dataclasses.asdict(launcher), "children": [dataclasses.asdict(c) for c in children]},
                    CHILDREN)


def _last_line(e: BaseException) -> str:
    """The error a child ended with: the last line of its traceback (submitit hands back the whole text)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]


def failures(children: list[Child]) -> str:
    """One line per failed child: its combination, error and log."""
    return "\n".join(f"  child {c.index} ({' '.join(c.overrides)}): {c.error}; log: {c.log}"
                     for c in children if c.state == "FAILED")
