"""Tracking locations that cannot be used (issue #21, cases 6 and 7), through the real CLI on real SQLite stores:
a refused or silent server fails in seconds with the fix; a database folder that is missing, a read-only database or
folder and an unwritable artifact folder are one line before any work, while `runs` and `grades` still read a
read-only database; a result whose logging fails is kept in a local folder the error names; and a failure while
recording a run's error never replaces the original error."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffgame import tracking
from diffgame.cli import app
from diffgame.errors import TrackingError
from diffgame.tracking import artifacts, locations

from helpers_mlflow import free_port

runner = CliRunner()
RUN = ["run", "zoo.size=micro", "organism=caps", "method=[kl]"]
"""A pipeline command whose first write would reach the store (no zoo is needed to fail before it)."""


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    """The CLI sets MLFLOW_TRACKING_URI and MLflow's HTTP retry defaults in os.environ: recorded here, undone after."""
    for key in ("MLFLOW_TRACKING_URI", *locations.HTTP_RETRY_DEFAULTS):
        monkeypatch.setenv(key, "recorded")
        monkeypatch.delenv(key)


def _store(folder: Path) -> tuple[str, str]:
    """A SQLite store in `folder` holding one FINISHED diff run (with grades and an artifact); returns (uri, run id)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with tracking.stage_run("diff", fp=uuid.uuid4().hex[:20], tags={
            tracking.TAG_MODEL: "toy", tracking.TAG_ORGANISM: "caps", tracking.TAG_METHOD: "kl"}) as run:
        run.log_metrics({"grade/precision_at_20": 0.5, "grade/control/precision_at_20": 0.1,
                         "grade/relative/precision_at_20": 0.4, "grade/identification_rank": 1})
        run.log_text("kl", "note.txt")  # creates its artifact folder, mlartifacts/diffgame/<run id>
    return uri, run.run_id


def _writable(path: Path) -> bool:
    try:
        if path.is_dir():
            (path / ".probe").touch()
            (path / ".probe").unlink()
        else:
            open(path, "r+b").close()
        return True
    except OSError:
        return False


@contextmanager
def read_only(path: Path):
    """`path` (a folder or file) made read-only for real: by its mode, else (root ignores modes) by `chattr +i`;
    skips the test where neither stops a write here."""
    mode = path.stat().st_mode
    path.chmod(0o500 if path.is_dir() else 0o400)
    immutable = False
    if _writable(path) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    try:
        if _writable(path):
            pytest.skip("neither a 0o500 mode nor chattr +i makes a path read-only here (root without "
                        "CAP_LINUX_IMMUTABLE?)")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


# --- a server that is down ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)  # a hang guard: MLflow's own retries took ~250 s before this check
def test_refused_server_fails_in_seconds_with_the_fix():
    port = free_port()  # nothing listens there
    result = runner.invoke(app, ["runs", "--tracking-uri", f"http://127.0.0.1:{port}"])
    line = _one_line(result)
    assert line == (f"error: cannot query tracking store http://127.0.0.1:{port}: connection refused; start a server "
                    f"there (mlflow server --host 127.0.0.1 --port {port} --backend-store-uri sqlite:///mlflow.db) "
                    f"or pick another with --tracking-uri or MLFLOW_TRACKING_URI")


@pytest.mark.timeout(120)  # a hang guard
def test_a_server_that_accepts_but_never_answers_times_out(monkeypatch):
    monkeypatch.setattr(locations, "PROBE_TIMEOUT_S", 1.0)
    with socket.socket() as silent:  # the kernel accepts connections into the backlog; nobody reads them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = runner.invoke(app, ["runs", "--tracking-uri", uri])
    line = _one_line(result)
    assert line.startswith(f"error: cannot query tracking store {uri}: no answer within 1 s; start a server there")


class _Health(BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [200, 404])
def test_an_answering_server_is_probed_once_and_retries_are_bounded(monkeypatch, status):
    """Any HTTP answer (a 404 behind a path prefix too) counts as up; the probe runs once per URI and process, and
    lowers MLflow's retry budget unless the user set one."""
    monkeypatch.setattr(_Health, "hits", [])
    monkeypatch.setattr(_Health, "status", status)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "17")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
        tracking.client()
        tracking.client()
    finally:
        server.shutdown()
        server.server_close()
    assert _Health.hits == ["/health"]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == locations.HTTP_RETRY_DEFAULTS[
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "17"  # the user's own value stays


# --- database locations -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["runs"], RUN])
def test_missing_database_folder_is_an_error_and_nothing_is_created(tmp_path, command):
    folder = tmp_path / "no" / "such"
    result = runner.invoke(app, [*command, "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"])
    verb = "query" if command == ["runs"] else "reach"
    assert _one_line(result) == (f"error: cannot {verb} tracking store sqlite:///{folder / 'mlflow.db'}: folder "
                                 f"{folder} does not exist; create it (mkdir -p {folder}) or pick another with "
                                 f"--tracking-uri or MLFLOW_TRACKING_URI")
    assert not (tmp_path / "no").exists()


@pytest.mark.timeout(120)  # a hang guard: MLflow alone spent ~107 s in retries, then printed a traceback
def test_new_database_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with read_only(folder):
        result = runner.invoke(app, ["runs", "--tracking-uri", uri])
    assert _one_line(result) == (f"error: cannot query tracking store {uri}: folder {folder} is read-only, so no "
                                 f"database can be created there; make it writable or pick another with "
                                 f"--tracking-uri or MLFLOW_TRACKING_URI")
    assert not (folder / "mlflow.db").exists()


@pytest.mark.timeout(180)  # a hang guard
@pytest.mark.parametrize("what", ["folder", "database"])
def test_read_only_database_is_read_but_not_run_into(tmp_path, what):
    """`runs` and `grades` read a read-only database (or one in a read-only folder); `run` stops before any work
    with one line, and the store holds the same runs afterwards."""
    uri, run_id = _store(tmp_path)
    db = tmp_path / "mlflow.db"
    with read_only(tmp_path if what == "folder" else db):
        listed = runner.invoke(app, ["runs", "--tracking-uri", uri], env={"COLUMNS": "200"})
        assert listed.exit_code == 0 and run_id in listed.output, listed.output
        graded = runner.invoke(app, ["grades", "--tracking-uri", uri], env={"COLUMNS": "200"})
        assert graded.exit_code == 0 and run_id in graded.output, graded.output
        result = runner.invoke(app, [*RUN, "--tracking-uri", uri])
    expected = (f"error: folder {tmp_path} of tracking database mlflow.db is read-only (SQLite writes its journal "
                f"there); make it writable" if what == "folder" else
                f"error: tracking database {db} is read-only; make it writable (chmod u+w {db})")
    assert _one_line(result) == expected + " or pick another with --tracking-uri or MLFLOW_TRACKING_URI"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    assert [r.info.run_id for r in tracking.search({})] == [run_id]


# --- artifact locations -------------------------------------------------------------------------------------
def test_unwritable_artifact_folder_is_one_line_before_any_work(tmp_path):
    uri, _ = _store(tmp_path)  # experiment 'diffgame', artifacts in mlartifacts/diffgame beside the database
    folder = tmp_path / "mlartifacts" / "diffgame"
    with read_only(folder):
        result = runner.invoke(app, [*RUN, "--tracking-uri", uri])
    assert _one_line(result) == (f"error: artifact folder {folder} of experiment 'diffgame' is not writable; make it "
                                 f"writable or pick another tracking store with --tracking-uri or "
                                 f"MLFLOW_TRACKING_URI")


def test_artifact_folder_that_cannot_be_created(tmp_path, monkeypatch):
    """A new experiment's default folder under `mlartifacts/`, here blocked by a file (unwritable even for root)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.check_writable("fresh")  # nothing there yet: MLflow would create mlartifacts/fresh
    (tmp_path / "mlartifacts").write_text("not a folder")
    with pytest.raises(TrackingError) as info:
        tracking.check_writable("diffgame", "fresh")
    assert str(info.value).startswith(f"artifact folder {tmp_path / 'mlartifacts' / 'diffgame'} of experiment "
                                      f"'diffgame' is not writable")


# --- a logging failure keeps the result ---------------------------------------------------------------------
def _result():
    import pandas as pd
    import torch

    from diffgame.methods.base import MethodResult

    return MethodResult(metrics={"kl/all/mean": 0.25}, tables={"tokens": pd.DataFrame({"token": ["a", "b"],
                                                                                        "score": [2.0, 1.0]})},
                        vectors={"layer1": torch.arange(4.0)}, samples={"steering": [{"text": "hi"}]})


def _check_kept(kept: Path) -> None:
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    assert json.loads((kept / "metrics.json").read_text()) == {"kl/all/mean": 0.25}
    assert pd.read_parquet(kept / "tables" / "tokens.parquet").to_dict("list") == {"token": ["a", "b"],
                                                                                   "score": [2.0, 1.0]}
    assert torch.equal(load_file(str(kept / artifacts.VECTORS))["layer1"], torch.arange(4.0))
    assert json.loads((kept / "samples" / "steering.json").read_text()) == [{"text": "hi"}]


@pytest.mark.parametrize("how", ["blocked", "read-only"])
def test_a_failed_log_keeps_the_result_and_names_the_folder(tmp_path, monkeypatch, capfd, how):
    """The run's artifact folder is a file (fails for everyone) or read-only: the result lands in
    DIFFGAME_UNLOGGED_DIR/<run id>, the error names it, and the run is FAILED with that error although its
    error.txt cannot be written either."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DIFFGAME_UNLOGGED_DIR", str(tmp_path / "unlogged"))
    with ExitStack() as stack, pytest.raises(TrackingError) as info:
        with tracking.stage_run("diff", fp=uuid.uuid4().hex[:20], tags={}) as run:
            local = run.artifact_dir
            local.parent.mkdir(parents=True, exist_ok=True)
            if how == "blocked":
                local.write_text("not a folder")
            else:
                local.mkdir()
                stack.enter_context(read_only(local))  # until the run has recorded its failure
            artifacts.log_result(run, _result())
    kept = tmp_path / "unlogged" / run.run_id
    message = str(info.value)
    assert message.startswith(f"could not log the result of run {run.run_id} (")
    assert message.endswith(f"); what was computed is kept in {kept}") and "\n" not in message
    _check_kept(kept)
    after = tracking.client().get_run(run.run_id)
    assert after.info.status == "FAILED" and after.data.tags[tracking.TAG_ERROR] == f"TrackingError: {message}"
    assert f"could not record the error.txt of run {run.run_id}" in capfd.readouterr().err


def test_unlogged_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFGAME_UNLOGGED_DIR", raising=False)
    monkeypatch.delenv("DIFFGAME_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert artifacts.unlogged_dir("abc") == tmp_path / "diffgame" / "unlogged" / "abc"
    monkeypatch.setenv("DIFFGAME_UNLOGGED_DIR", str(tmp_path / "mine"))
    assert artifacts.unlogged_dir("abc") == tmp_path / "mine" / "abc"


# --- a failing error handler --------------------------------------------------------------------------------
@pytest.mark.parametrize("error, status", [(ValueError("boom at layer 3"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_the_original_error_survives_a_failing_error_handler(tmp_path, monkeypatch, capfd, error, status):
    """Recording the error tag and error.txt raise PermissionError: the body's error propagates unchanged and the
    run still ends with its status."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "mlartifacts"))

    with monkeypatch.context() as m, pytest.raises(type(error)) as info:
        with tracking.stage_run("diff", fp=uuid.uuid4().hex[:20], tags={}) as run:
            m.setattr(MlflowClient, "set_tag", denied)
            m.setattr(MlflowClient, "log_text", denied)
            raise error
    assert info.value is error
    after = tracking.client().get_run(run.run_id)
    assert after.info.status == status and tracking.TAG_ERROR not in after.data.tags
    err = capfd.readouterr().err
    assert f"could not record the error tag of run {run.run_id}: PermissionError" in err
    assert f"could not record the error.txt of run {run.run_id}: PermissionError" in err
