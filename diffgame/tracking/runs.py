"""MLflow conventions: tracking URI and client, fingerprints, run reuse and FAILED marking (leases: `leases`).

Every stage is one MLflow run opened with `stage_run`. It sets the `diffgame.*` tags, reuses nothing by
itself (callers ask `find_finished` first), and marks the run FAILED with the error text when the body raises.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from diffgame import __version__
from diffgame.errors import Terminated, TrackingError
from diffgame.tracking import locations
from diffgame.tracking.leases import held, live
from diffgame.tracking.tags import (STAGES, TAG_ABANDONED, TAG_ERROR, TAG_FINGERPRINT, TAG_MACHINE, TAG_PARENT,
                                    TAG_STAGE)

ERROR_FILE = "error.txt"
"""A failed or killed run's traceback (removed when the run is resumed)."""
_usable: set[str] = set()
"""URIs whose store `locations.check_store` accepted in this process."""


def resolve_uri(uri: str | None = None) -> str:
    """`uri`, else `MLFLOW_TRACKING_URI`, else a SQLite database `mlflow.db` in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def set_uri(uri: str | None = None) -> str:
    """Point MLflow (and, through the env var, Lightning loggers and subprocesses) at one tracking URI."""
    import mlflow

    resolved = resolve_uri(uri)
    mlflow.set_tracking_uri(resolved)
    os.environ["MLFLOW_TRACKING_URI"] = resolved
    return resolved


def client(verb: str = "reach"):
    """An MlflowClient on the resolved URI; a store MLflow refuses (e.g. a plain `file:` store), a server that does not
    answer or a database folder that does not exist is a TrackingError ("cannot {verb} tracking store ...")."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_uri()
    if uri not in _usable:
        locations.check_store(uri, verb)
        _usable.add(uri)
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as e:
        first = str(e).splitlines()[0].split(". ")[0]
        raise TrackingError(f"cannot open tracking store {uri}: {first}; "
                            f"use sqlite:///path/to/mlflow.db or an http:// server") from None


def fingerprint(config: Any, *consumed: str) -> str:
    """Hash of a stage's effective config, the fingerprints it consumes and the package version."""
    payload = json.dumps({"config": config, "consumed": list(consumed), "version": __version__},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def experiment_id(name: str) -> str:
    c = client()
    try:
        exp = c.get_experiment_by_name(name)
    except Exception as e:  # unreachable server, bad URI
        raise TrackingError(f"cannot reach tracking store {resolve_uri()}: {str(e).splitlines()[0]}") from None
    if exp is None:
        return c.create_experiment(name, artifact_location=_default_artifact_location(name))
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _default_artifact_location(experiment: str) -> str | None:
    """Beside a SQLite database, artifacts go to `mlartifacts/` next to it (not the current folder)."""
    uri = resolve_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


def check_writable(*experiments: str) -> None:
    """Fail before any work, in one line, where this process could not record its runs: a read-only SQLite database
    or database folder (SQLite writes its journal beside the database), or a local artifact folder of `experiments`
    (their own, or the default `mlartifacts/` beside the database) that cannot be written."""
    c = client()
    db = locations.sqlite_file(resolve_uri())
    if db is not None and db.exists():
        try:
            open(db, "r+b").close()
        except OSError:
            raise TrackingError(f"tracking database {db} is read-only; make it writable (chmod u+w {db}) "
                                f"{locations.ELSEWHERE}") from None
    if db is not None and not locations.can_create_in(db.parent):
        raise TrackingError(f"folder {db.parent} of tracking database {db.name} is read-only (SQLite writes its "
                            f"journal there); make it writable {locations.ELSEWHERE}")
    for name in experiments:
        try:
            exp = c.get_experiment_by_name(name)
        except Exception as e:
            raise TrackingError(f"cannot reach tracking store {resolve_uri()}: {str(e).splitlines()[0]}") from None
        location = exp.artifact_location if exp is not None else _default_artifact_location(name)
        parsed = urlparse(location or "")
        folder = Path(unquote(parsed.path)) if location and parsed.scheme in ("", "file") else None
        if folder is not None and not locations.can_create_in(folder):
            raise TrackingError(f"artifact folder {folder} of experiment '{name}' is not writable; make it writable "
                                f"or pick another tracking store with --tracking-uri or MLFLOW_TRACKING_URI")


def search(filters: dict[str, str] | None = None, statuses: tuple[str, ...] = (), max_results: int = 1000):
    """Runs in all experiments whose tags equal `filters`, newest first."""
    c = client("query")
    clauses = [f"tags.`{k}` = '{v}'" for k, v in (filters or {}).items()]
    try:
        exps = [e.experiment_id for e in c.search_experiments()]
        if not exps:
            return []
        # MLflow's filter grammar has no `status IN (...)`, so statuses are filtered here
        runs = c.search_runs(exps, " and ".join(clauses), max_results=max(max_results, 1000) if statuses else max_results,
                             order_by=["attributes.start_time DESC"])
        return [r for r in runs if r.info.status in statuses][:max_results] if statuses else runs
    except Exception as e:
        raise TrackingError(f"cannot query tracking store {resolve_uri()}: {str(e).splitlines()[0]}") from None


def find_finished(stage: str, fp: str):
    """The newest FINISHED run of `stage` with fingerprint `fp`, or None."""
    runs = search({TAG_STAGE: stage, TAG_FINGERPRINT: fp}, statuses=("FINISHED",), max_results=1)
    return runs[0] if runs else None


def find_resumable(stage: str, fp: str):
    """The newest unfinished (RUNNING, FAILED, KILLED) run of `stage` with fingerprint `fp` that no live process
    holds and that was not abandoned, or None."""
    runs = search({TAG_STAGE: stage, TAG_FINGERPRINT: fp}, statuses=("RUNNING", "FAILED", "KILLED"))
    return next((r for r in runs if not live(r) and TAG_ABANDONED not in r.data.tags), None)


def find_live(stage: str, fp: str):
    """The newest RUNNING run of `stage` with fingerprint `fp` that a live process (another one) holds, or None."""
    runs = search({TAG_STAGE: stage, TAG_FINGERPRINT: fp}, statuses=("RUNNING",))
    return next((r for r in runs if live(r)), None)


def abandon(run_id: str, reason: str) -> None:
    """Mark a run FAILED with `reason` so that it is neither reused nor resumed: the next call rebuilds."""
    c = client()
    c.set_tag(run_id, TAG_ERROR, reason[:4900])
    c.set_tag(run_id, TAG_ABANDONED, "true")
    c.set_terminated(run_id, status="FAILED")


def local_artifact_dir(run) -> Path | None:
    """The run's artifact root as a local path when it is one (file URI or plain path), else None."""
    uri = run.info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


@dataclass
class StageRun:
    """An open MLflow run with the logging calls stages need; no global active-run state."""

    run_id: str
    resumed: bool = False

    @property
    def run(self):
        return client().get_run(self.run_id)

    @property
    def artifact_dir(self) -> Path | None:
        return local_artifact_dir(self.run)

    def set_tags(self, tags: dict[str, Any]) -> None:
        c = client()
        for k, v in tags.items():
            c.set_tag(self.run_id, k, str(v))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.run.data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        if new:
            client().log_batch(self.run_id, params=new)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            client().log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        client().log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        client().log_artifacts(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        client().log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        client().log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        client().log_figure(self.run_id, figure, artifact_file)


def _project_run(exp_id: str) -> str | None:
    """Inside `mlflow run` (which sets MLFLOW_RUN_ID), the project's run when it is in the same experiment."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        run = client().get_run(run_id)
    except Exception:
        return None
    return run_id if run.info.experiment_id == exp_id else None


def _record_failure(c, run_id: str, status: str, text: str, error: BaseException) -> None:
    """Record `error` on the run as far as the store lets us (tag, `error.txt`, then the status, each tried on its
    own); raises nothing, so the caller re-raises the original error rather than, say, a PermissionError."""
    steps = (("error tag", lambda: c.set_tag(run_id, TAG_ERROR, text[:4900])),
             (ERROR_FILE, lambda: c.log_text(run_id, "".join(traceback.format_exception(error)), ERROR_FILE)),
             (f"status {status}", lambda: c.set_terminated(run_id, status=status)))
    for what, record in steps:
        try:
            record()
        except Exception as failure:
            print(f"[diffgame] could not record the {what} of run {run_id}: {type(failure).__name__}: "
                  f"{str(failure).splitlines()[0] if str(failure) else ''}", file=sys.stderr, flush=True)


def machine() -> str:
    """This machine in a few words: architecture, cores, processor (or the CUDA device when there is one)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}"


@contextmanager
def stage_run(stage: str, *, fp: str, tags: dict[str, Any], experiment: str = "diffgame",
              run_name: str | None = None, params: dict[str, Any] | None = None,
              parent_run_id: str | None = None, resume_run_id: str | None = None) -> Iterator[StageRun]:
    """Open a run for `stage`, tag it, and close it FINISHED, or FAILED with the error as a tag.

    `resume_run_id` reopens an unfinished run (its artifacts stay, so the stage can resume its work).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    c = client()
    all_tags = {TAG_STAGE: stage, TAG_FINGERPRINT: fp, "diffgame.version": __version__, TAG_MACHINE: machine(),
                **{k: str(v) for k, v in tags.items() if v is not None}}
    exp_id = None if resume_run_id else experiment_id(experiment)
    parent_run_id = parent_run_id or (None if resume_run_id else _project_run(exp_id))
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
    if resume_run_id:
        c.update_run(resume_run_id, status="RUNNING")
        had_error = TAG_ERROR in c.get_run(resume_run_id).data.tags
        if had_error:
            c.delete_tag(resume_run_id, TAG_ERROR)
        run = StageRun(resume_run_id, resumed=True)
        local = run.artifact_dir
        if local is not None:  # the interrupted attempt's error is no longer this run's
            (local / ERROR_FILE).unlink(missing_ok=True)
        elif had_error:  # a remote artifact store cannot delete: the file says so instead
            c.log_text(resume_run_id, "resumed: the error of the interrupted attempt no longer applies\n", ERROR_FILE)
        run.set_tags({"diffgame.resumed": "true"})
    else:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        if run_name:
            all_tags[MLFLOW_RUN_NAME] = run_name
        info = c.create_run(exp_id, tags=all_tags, run_name=run_name).info
        run = StageRun(info.run_id)
    run.set_tags(all_tags)
    if params:
        run.log_params(params)
    try:
        with held(run.run_id), _sigterm_raises():
            yield run
    except BaseException as e:
        killed = interrupted(e)
        status = "KILLED" if killed else "FAILED"
        text = (f"{_signal_name(e)}: interrupted; run the same command again to resume" if killed
                else f"{type(e).__name__}: {e}")
        _record_failure(c, run.run_id, status, text, e)
        raise
    else:
        c.set_terminated(run.run_id, status="FINISHED")


def lightning_logger(run_id: str):
    """Lightning's MLflow logger writing into the open run `run_id`, whose status stays ours (`StageLogger`)."""
    from diffgame.tracking.stagelogger import StageLogger

    return StageLogger(tracking_uri=resolve_uri(), run_id=run_id)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a stage run is open, SIGTERM raises `Terminated` in the main thread (Python's default would end the
    process with the run left RUNNING). Inside a Lightning loop, Lightning calls this handler after its own, so a
    predict loop (which never checks for SIGTERM) stops too. A handler someone else installed is left alone."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _signal_name(e: BaseException) -> str:
    return "SIGTERM" if isinstance(e, Terminated) or "SIGTERM" in type(e).__name__ else "KeyboardInterrupt"


def interrupted(e: BaseException) -> bool:
    """Ctrl-C, also after Lightning turned it into `sys.exit(1)` at the end of its graceful shutdown, or a SIGTERM
    (a preempted cluster job): ours (`Terminated`) or Lightning's `SIGTERMException` at the next step."""
    if isinstance(e, (KeyboardInterrupt, Terminated)) or type(e).__name__ == "SIGTERMException":
        return True
    return isinstance(e, SystemExit) and interrupted(e.__context__) if e.__context__ is not None else False


def run_url(experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI: the tracking server itself for http URIs, else a local `mlflow ui`."""
    uri = resolve_uri()
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_url(run_id: str) -> str | None:
    """`run_url` of a run known only by its id (None when the store does not have it)."""
    try:
        exp = client().get_run(run_id).info.experiment_id
    except Exception:
        return None
    return run_url(exp, run_id)
