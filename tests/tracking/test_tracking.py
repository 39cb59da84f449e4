"""MLflow conventions of `diffgame.tracking.runs`: URI resolution, fingerprints, tags, reuse of a FINISHED run by
fingerprint, FAILED runs with the error as a tag, resuming, and sweep parent/child runs, against a SQLite
store and against a real `mlflow server` on a free loopback port (started and stopped by the fixture)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from diffgame import __version__, tracking
from diffgame.errors import TrackingError

from helpers_mlflow import free_port, mlflow_server


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite_store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, monkeypatch):
    """The tracking URI for one backend, set the way the CLI sets it (env var + mlflow)."""
    uri = request.getfixturevalue(f"{request.param}_uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test; set_uri writes it too
    assert tracking.set_uri(None) == uri
    return uri


def _fp() -> str:
    return tracking.fingerprint({"test": uuid.uuid4().hex})


def test_resolve_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.resolve_uri() == "http://127.0.0.1:1"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_fingerprint_covers_config_inputs_and_version(monkeypatch):
    a = tracking.fingerprint({"layers": [0.5], "model": "toy"}, "fp_of_store")
    assert a == tracking.fingerprint({"model": "toy", "layers": [0.5]}, "fp_of_store")  # key order is irrelevant
    assert len(a) == 20 and int(a, 16) >= 0
    assert a != tracking.fingerprint({"layers": [0.25], "model": "toy"}, "fp_of_store")
    assert a != tracking.fingerprint({"layers": [0.5], "model": "toy"}, "other_store")
    assert a != tracking.fingerprint({"layers": [0.5], "model": "toy"})
    monkeypatch.setattr(tracking.runs, "__version__", __version__ + ".dev1")  # what `fingerprint` reads
    assert a != tracking.fingerprint({"layers": [0.5], "model": "toy"}, "fp_of_store")


def test_finished_run_is_tagged_and_found_by_fingerprint(store):
    fp = _fp()
    assert tracking.find_finished("preprocess", fp) is None
    with tracking.stage_run("preprocess", fp=fp, tags={tracking.TAG_MODEL: "toy", tracking.TAG_ORGANISM: "caps",
                                                      tracking.TAG_METHOD: None},
                            experiment="diffgame-test", run_name="pre", params={"layers": [0.5], "n": 3}) as run:
        run.log_metrics({"tokens": 1234, "kl/all/mean": 0.25})
        run.log_params({"n": 99, "extra": "x"})  # an existing param is never overwritten
        run.log_text("hello", "notes/hello.txt")
        run.log_dict({"a": 1}, "manifest.json")
    found = tracking.find_finished("preprocess", fp)
    assert found is not None and found.info.run_id == run.run_id
    assert found.info.status == "FINISHED" and found.info.run_name == "pre"
    tags = found.data.tags
    assert tags[tracking.TAG_STAGE] == "preprocess" and tags[tracking.TAG_FINGERPRINT] == fp
    assert tags[tracking.TAG_MODEL] == "toy" and tags[tracking.TAG_ORGANISM] == "caps"
    assert tracking.TAG_METHOD not in tags  # None-valued tags are left out
    assert tags["diffgame.version"] == __version__
    assert found.data.params == {"layers": "[0.5]", "n": "3", "extra": "x"}
    assert found.data.metrics == {"tokens": 1234.0, "kl/all/mean": 0.25}
    c = tracking.client()
    assert Path(c.download_artifacts(run.run_id, "notes/hello.txt")).read_text() == "hello"
    assert tracking.find_finished("diff", fp) is None  # the stage is part of the key
    assert tracking.find_finished("preprocess", _fp()) is None
    assert [r.info.run_id for r in tracking.search({tracking.TAG_FINGERPRINT: fp})] == [run.run_id]


def test_failed_run_is_marked_with_its_error_then_resumed(store):
    fp = _fp()
    with pytest.raises(ValueError, match="boom at layer 3"):
        with tracking.stage_run("diff", fp=fp, tags={tracking.TAG_METHOD: "kl"}, experiment="diffgame-test") as run:
            run.log_metrics({"partial": 1.0})
            raise ValueError("boom at layer 3")
    c = tracking.client()
    failed = c.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.TAG_ERROR] == "ValueError: boom at layer 3"
    trace = Path(c.download_artifacts(run.run_id, "error.txt")).read_text()
    assert "Traceback" in trace and "boom at layer 3" in trace
    assert tracking.find_finished("diff", fp) is None  # a failed run is never reused
    assert tracking.find_resumable("diff", fp).info.run_id == run.run_id

    with tracking.stage_run("diff", fp=fp, tags={}, resume_run_id=run.run_id) as resumed:
        assert resumed.resumed and resumed.run_id == run.run_id
        assert c.get_run(run.run_id).info.status == "RUNNING"
        resumed.log_metrics({"done": 1.0})
    final = c.get_run(run.run_id)
    assert final.info.status == "FINISHED"
    assert tracking.TAG_ERROR not in final.data.tags and final.data.tags["diffgame.resumed"] == "true"
    assert final.data.metrics == {"partial": 1.0, "done": 1.0}
    assert tracking.find_finished("diff", fp).info.run_id == run.run_id
    assert tracking.find_resumable("diff", fp) is None


def test_keyboard_interrupt_marks_killed(store):
    fp = _fp()
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run("diff", fp=fp, tags={}, experiment="diffgame-test") as run:
            raise KeyboardInterrupt
    assert tracking.client().get_run(run.run_id).info.status == "KILLED"
    assert tracking.find_resumable("diff", fp).info.run_id == run.run_id


def test_lightnings_interrupt_exit_marks_killed_and_a_resume_clears_the_error(store):
    """Lightning ends a Ctrl-C with `sys.exit(1)` after its graceful shutdown: still KILLED, with a resume hint; the
    resumed run finishes without the old error tag or error.txt."""
    fp = _fp()
    with pytest.raises(SystemExit):
        with tracking.stage_run("diff", fp=fp, tags={}, experiment="diffgame-test") as run:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise SystemExit(1)
    killed = tracking.client().get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert "run the same command again to resume" in killed.data.tags[tracking.TAG_ERROR]
    assert "Traceback" in _error_text(run.run_id)
    with tracking.stage_run("diff", fp=fp, tags={}, resume_run_id=run.run_id):
        pass
    assert tracking.client().get_run(run.run_id).info.status == "FINISHED"
    assert "Traceback" not in _error_text(run.run_id)  # gone (local store) or replaced by a note (server)


def _error_text(run_id: str) -> str:
    from diffgame.errors import TrackingError
    from diffgame.tracking import artifacts

    try:
        return artifacts.artifact_file(run_id, tracking.ERROR_FILE).read_text()
    except TrackingError:
        return ""


def test_sweep_parent_and_children(store):
    sweep_fp = _fp()
    with tracking.stage_run("sweep", fp=sweep_fp, tags={"diffgame.sweep": "organism=caps,control"},
                            experiment="diffgame-test", run_name="sweep") as parent:
        children = []
        for organism in ("caps", "control"):
            with tracking.stage_run("diff", fp=_fp(), tags={tracking.TAG_ORGANISM: organism},
                                    experiment="diffgame-test", parent_run_id=parent.run_id) as child:
                children.append(child.run_id)
    found = tracking.search({tracking.TAG_PARENT: parent.run_id})
    assert sorted(r.info.run_id for r in found) == sorted(children)
    assert {r.data.tags[tracking.TAG_ORGANISM] for r in found} == {"caps", "control"}
    assert all(r.info.status == "FINISHED" for r in found)
    p = tracking.client().get_run(parent.run_id)
    assert p.data.tags[tracking.TAG_STAGE] == "sweep" and tracking.TAG_PARENT not in p.data.tags
    assert tracking.search({tracking.TAG_STAGE: "sweep", tracking.TAG_FINGERPRINT: sweep_fp},
                           statuses=("FINISHED",))[0].info.run_id == parent.run_id


def test_runs_nest_under_an_mlflow_project_run(sqlite_uri, monkeypatch):
    """`mlflow run` sets MLFLOW_RUN_ID; stage runs in the same experiment become its children."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    c = tracking.client()
    project = c.create_run(tracking.experiment_id("diffgame-test")).info.run_id
    elsewhere = c.create_run(tracking.experiment_id("other-experiment")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", project)
    with tracking.stage_run("diff", fp=_fp(), tags={}, experiment="diffgame-test") as child:
        pass
    with tracking.stage_run("diff", fp=_fp(), tags={}, experiment="diffgame-test",
                            parent_run_id="explicit") as swept:
        pass
    monkeypatch.setenv("MLFLOW_RUN_ID", elsewhere)
    with tracking.stage_run("diff", fp=_fp(), tags={}, experiment="diffgame-test") as unrelated:
        pass
    assert c.get_run(child.run_id).data.tags[tracking.TAG_PARENT] == project
    assert c.get_run(swept.run_id).data.tags[tracking.TAG_PARENT] == "explicit"
    assert tracking.TAG_PARENT not in c.get_run(unrelated.run_id).data.tags


def test_search_filters_by_tags_and_status(store):
    organism = f"org_{uuid.uuid4().hex[:8]}"
    ids = {}
    for method, fail in (("kl", False), ("normdiff", False), ("pca", True)):
        try:
            with tracking.stage_run("diff", fp=_fp(), tags={tracking.TAG_ORGANISM: organism,
                                                            tracking.TAG_METHOD: method},
                                    experiment="diffgame-test") as run:
                ids[method] = run.run_id
                if fail:
                    raise RuntimeError("x")
        except RuntimeError:
            pass
    by_org = tracking.search({tracking.TAG_ORGANISM: organism})
    assert [r.info.run_id for r in by_org] == [ids["pca"], ids["normdiff"], ids["kl"]]  # newest first
    assert [r.info.run_id for r in tracking.search({tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: "kl"})] \
        == [ids["kl"]]
    assert {r.info.run_id for r in tracking.search({tracking.TAG_ORGANISM: organism}, statuses=("FINISHED",))} \
        == {ids["kl"], ids["normdiff"]}
    assert [r.info.run_id for r in tracking.search({tracking.TAG_ORGANISM: organism}, statuses=("FAILED",))] \
        == [ids["pca"]]


def test_artifact_location(store):
    with tracking.stage_run("zoo", fp=_fp(), tags={}, experiment="diffgame-artifacts") as run:
        run.log_text("x", "a.txt")
    local = run.artifact_dir
    if store.startswith("sqlite:///"):
        # beside the database, not in the current folder
        db_dir = Path(store.removeprefix("sqlite:///")).parent
        assert local is not None and local.is_relative_to(db_dir / "mlartifacts" / "diffgame-artifacts")
        assert (local / "a.txt").read_text() == "x"
    else:  # proxied by the server: no local path, reads go through the client
        assert local is None
        assert run.run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert tracking.ui_url(run.run_id).startswith(store + "/#/experiments/")


def test_unknown_stage_and_unreachable_store(monkeypatch):
    with pytest.raises(ValueError, match="unknown stage 'train'; known: zoo, preprocess, diff, sweep"):
        with tracking.stage_run("train", fp="x", tags={}):
            pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///definitely/not/a/db")  # MLflow refuses plain file stores
    with pytest.raises(TrackingError) as info:
        tracking.search({})
    assert str(info.value) == ("cannot open tracking store file:///definitely/not/a/db: The filesystem tracking "
                               "backend (e.g., './mlruns') is in maintenance mode and will not receive further "
                               "updates; use sqlite:///path/to/mlflow.db or an http:// server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(TrackingError, match=r"^cannot query tracking store http://127\.0\.0\.1:\d+: "):
        tracking.search({})
    with pytest.raises(TrackingError, match=r"^cannot reach tracking store http://127\.0\.0\.1:\d+: "):
        with tracking.stage_run("diff", fp="x", tags={}):
            pass
