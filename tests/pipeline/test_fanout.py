"""A sweep fanned out through submitit's local executor (`--launcher local --jobs 2`) against a shared deployment:
an `mlflow server` on PostgreSQL with its artifacts in S3 (moto), all on loopback. Every run finishes once per
fingerprint, each store is built and uploaded once, the parent lists every child with its job, a child killed
mid-run fails the sweep with its log, and rerunning the sweep submits only what is missing and resumes the killed
run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from _tiny_models import TINY_OVERRIDES, write_config_dir
from helpers_mlflow import s3_objects, shared_deployment

pytestmark = pytest.mark.slow

METHODS = "kl,normdiff,diffmining"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with shared_deployment(tmp_path_factory.mktemp("shared")) as found:
        yield found


def _sweep_cmd(conf: Path, names: list[str], uri: str) -> list[str]:
    exe = shutil.which("diffgame") or f"{sys.executable} -m diffgame.cli"
    return [*exe.split(), "--config-dir", str(conf), "run", f"organism={','.join(names)}", f"method={METHODS}",
            *TINY_OVERRIDES, "method.diffmining.max_samples=8", "--launcher", "local", "--jobs", "2",
            "--tracking-uri", uri]


def _runs(client, stage: str, status: str | None = None):
    query = f"tags.`diffgame.stage` = '{stage}'" + (f" and attributes.status = '{status}'" if status else "")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, query, max_results=1000)


def _kill_first_extraction(client, proc: subprocess.Popen, timeout: float = 600) -> str:
    """SIGKILL the child process that holds the first RUNNING preprocess run (its lease names its pid)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for run in _runs(client, "preprocess", "RUNNING"):
            host, pid, _ = run.data.tags.get("diffgame.lease", "::").rsplit(":", 2)
            if host == socket.gethostname() and pid.isdigit():
                os.kill(int(pid), signal.SIGKILL)
                return run.info.run_id
        time.sleep(0.05)
    raise AssertionError(f"no extraction to kill (sweep exited {proc.poll()})")


def _children(client, sweep_id: str) -> list[dict]:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=sweep_id, artifact_path="sweep/children.json",
                                               tracking_uri=client.tracking_uri)
    return json.loads(Path(path).read_text())["children"]


def test_two_worker_sweep_on_postgres_and_s3_resumes_a_killed_child(deployment, tmp_path):
    from mlflow import MlflowClient

    from diffgame.store.reader import file_digest

    url, endpoint, bucket = deployment
    conf, names = write_config_dir(tmp_path / "tiny")
    client = MlflowClient(url)
    env = {**os.environ, "DIFFGAME_CACHE": str(tmp_path / "worker_a"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = _sweep_cmd(conf, names, url)

    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_first_extraction(client, first)
    out, err = first.communicate(timeout=900)
    assert first.returncode == 1, err[-3000:]
    assert "1 of 12 children failed" in err and "run the same sweep again" in err
    (sweep1,) = _runs(client, "sweep")
    assert sweep1.info.status == "FAILED" and sweep1.data.tags["diffgame.launcher"] == "local"
    kids = _children(client, sweep1.info.run_id)
    assert len(kids) == 12 and len({k["job_id"] for k in kids}) == 12  # the parent lists every child's job
    assert sweep1.data.tags["diffgame.jobs"].split(",") == [k["job_id"] for k in kids]
    (dead,) = [k for k in kids if k["state"] == "FAILED"]
    assert Path(dead["log"]).is_file() and dead["log"] in err  # the failed child's log, named in the summary
    assert Counter(k["state"] for k in kids) == {"FINISHED": 11, "FAILED": 1}

    # the rerun, on "another machine" (a fresh worker cache): one job, for the killed child's combination only
    env["DIFFGAME_CACHE"] = str(tmp_path / "worker_b")
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    sweep2 = next(r for r in _runs(client, "sweep") if r.info.run_id != sweep1.info.run_id)
    kids2 = _children(client, sweep2.info.run_id)
    assert Counter(k["state"] for k in kids2) == {"REUSED": 11, "FINISHED": 1}
    assert [k["overrides"] for k in kids2 if k["state"] == "FINISHED"] == [dead["overrides"]]
    assert sweep2.data.metrics["sweep/reused"] == 11 and sweep2.data.metrics["sweep/failed"] == 0

    # every run FINISHED exactly once per fingerprint; each store built once; the killed one resumed, not redone
    stores = _runs(client, "preprocess", "FINISHED")
    diffs = _runs(client, "diff", "FINISHED")
    assert len(stores) == 4 and len({r.data.tags["diffgame.fingerprint"] for r in stores}) == 4
    assert len(diffs) == 12 and len({r.data.tags["diffgame.fingerprint"] for r in diffs}) == 12
    assert {(r.data.tags["diffgame.organism"], r.data.tags["diffgame.method"]) for r in diffs} == {
        (n, m) for n in names for m in METHODS.split(",")}
    resumed = client.get_run(killed)
    assert resumed.info.status == "FINISHED" and resumed.data.tags.get("diffgame.resumed") == "true"
    assert not _runs(client, "preprocess", "RUNNING") and not _runs(client, "preprocess", "FAILED")

    # the stores are in S3, uploaded once each: one manifest per preprocess run
    objects = s3_objects(endpoint, bucket)
    manifests = [k for k in objects if k.endswith("/artifacts/store/manifest.json")]
    assert sorted(k.split("/")[2] for k in manifests) == sorted(r.info.run_id for r in stores)

    # a worker reads a store through the server, file by file, into its own cache: what was uploaded, checksums kept
    read = 0
    for cache in (tmp_path / "worker_a", tmp_path / "worker_b"):
        stores_dir = cache / "stores"
        assert not list(stores_dir.glob(".download-*"))  # no half-downloaded file left behind
        for run_dir in (d for d in stores_dir.iterdir() if d.is_dir()):
            manifest = json.loads((run_dir / "store" / "manifest.json").read_text())
            listed = {rel: info for d in manifest["datasets"].values() for sh in d["shards"]
                      for rel, info in sh["files"].items()}
            for file in (run_dir / "store").rglob("*.safetensors"):
                rel = str(file.relative_to(run_dir / "store"))
                assert objects[f"mlflow/{stores[0].info.experiment_id}/{run_dir.name}/artifacts/store/{rel}"] == \
                    file.stat().st_size
                assert file_digest(file, "xxh3_128") == listed[rel]["xxh3_128"]
                read += 1
    assert read and (tmp_path / "worker_b" / "stores").is_dir()  # the rerun's child read its store from S3
