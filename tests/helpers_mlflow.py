"""A real `mlflow server` on a free loopback port for tests: started as its own process group, stopped by PID; with
a SQLite backend and local artifacts, or as a shared deployment would run it: PostgreSQL (pgserver) and an S3 bucket
(moto's server)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(workdir: Path, timeout: float = 300.0, backend: str | None = None, artifacts: str | None = None,
                  env: dict[str, str] | None = None):
    """Yield `http://127.0.0.1:<port>` of a server with a SQLite backend and proxied artifacts under `workdir`, or the
    given `backend` store URI and `artifacts` destination (`s3://bucket/path`, with `env` saying where S3 is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    exe = shutil.which("mlflow") or f"{sys.executable} -m mlflow"
    cmd = [*exe.split(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend or f"sqlite:///{workdir / 'server.db'}",
           "--artifacts-destination", artifacts or str(workdir / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with _process(cmd, workdir / "server.log", f"{url}/health", timeout, cwd=workdir,
                  env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}):
        yield url


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def shared_deployment(workdir: Path, bucket: str = "diffgame"):
    """Yield `(tracking url, s3 endpoint, bucket)` of a shared deployment on loopback: an `mlflow server` on a
    PostgreSQL database (pgserver, a real server in `workdir`) whose artifacts go to an S3 bucket (moto's server),
    proxied by the tracking server so workers need only its URL."""
    import boto3
    import pgserver

    workdir.mkdir(parents=True, exist_ok=True)
    pg = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    try:
        pg.psql("CREATE DATABASE mlflow;")
        backend = pg.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
        s3_port = free_port()
        endpoint = f"http://127.0.0.1:{s3_port}"
        moto = [shutil.which("moto_server") or f"{sys.executable} -m moto.server", "-H", "127.0.0.1", "-p",
                str(s3_port)]
        with _process([*moto[0].split(), *moto[1:]], workdir / "moto.log", f"{endpoint}/moto-api/", 60):
            boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs()).create_bucket(Bucket=bucket)
            with mlflow_server(workdir / "mlflow", backend=backend, artifacts=f"s3://{bucket}/mlflow",
                               env={**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}) as url:
                yield url, endpoint, bucket
    finally:
        pg.cleanup()


def _boto_kwargs() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}


def s3_objects(endpoint: str, bucket: str) -> dict[str, int]:
    """Every object of `bucket` by key, with its size."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


@contextmanager
def _process(cmd: list[str], log_path: Path, health: str, timeout: float, cwd: Path | None = None,
             env: dict[str, str] | None = None):
    """A server process in its own group, yielded once `health` answers 200; stopped on exit."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True, env=env)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{cmd[0]} did not answer on {health} within {timeout:.0f} s")
            time.sleep(0.3)
        yield proc
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn workers included), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
