"""The MLproject: its entry points mirror the CLI with typed parameters, their commands split `overrides`
into CLI arguments without shell surprises, and `mlflow run . -e config --env-manager local` really runs,
recording a FINISHED (or, on bad input, FAILED) run in the tracking store it is pointed at."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _project():
    from mlflow.projects._project_spec import load_project

    return load_project(str(ROOT))


def test_entry_points_mirror_the_cli():
    project = _project()
    assert set(project._entry_points) == {"main", "sweep", "preprocess", "diff", "zoo", "config", "runs", "play"}
    for name in ("main", "sweep", "preprocess", "diff", "config"):
        params = project.get_entry_point(name).parameters
        assert set(params) == {"overrides"} and params["overrides"].type == "string"
    zoo = project.get_entry_point("zoo").parameters
    assert (zoo["size"].type, zoo["size"].default, zoo["names"].default) == ("string", "small", "")
    assert project.env_type == "conda_env" and (ROOT / "conda.yaml").is_file()


def _argv(entry: str, params: dict, cwd: Path) -> list[str]:
    """What `diffgame` receives from the entry point's command (bash with `diffgame` as an argv printer)."""
    command = _project().get_entry_point(entry).compute_command(params, storage_dir=None)
    out = subprocess.run(["bash", "-c", 'diffgame() { printf "%s\\n" "$@"; }; ' + command], cwd=cwd,
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_commands_split_overrides_into_cli_arguments(tmp_path):
    (tmp_path / "method=k").touch()  # would match the pattern `method=[kl,normdiff]` if globbing were on
    assert _argv("main", {"overrides": "organism=caps method=[kl,normdiff]"}, tmp_path) == [
        "run", "organism=caps", "method=[kl,normdiff]"]
    assert _argv("main", {}, tmp_path) == ["run"]
    assert _argv("sweep", {"overrides": "organism=caps,control"}, tmp_path) == [
        "run", "--multirun", "organism=caps,control"]
    assert _argv("preprocess", {"overrides": "preprocessing.layers=[0.5] model.id={x}"}, tmp_path) == [
        "preprocess", "preprocessing.layers=[0.5]", "model.id={x}"]
    assert _argv("diff", {"overrides": "organism.finetuned.toy={default:{kind:full,id:/a}}"}, tmp_path) == [
        "diff", "organism.finetuned.toy={default:{kind:full,id:/a}}"]
    assert _argv("zoo", {"size": "micro", "names": "caps control"}, tmp_path) == [
        "zoo", "build", "--size", "micro", "caps", "control"]
    assert _argv("config", {"overrides": "$(touch pwned) ; echo x"}, tmp_path) == [
        "config", "$(touch", "pwned)", ";", "echo", "x"]
    assert not (tmp_path / "pwned").exists()
    assert _argv("runs", {"stage": "diff"}, tmp_path) == ["runs", "--stage", "diff"]
    assert _argv("runs", {}, tmp_path) == ["runs"]
    assert _argv("play", {}, tmp_path) == ["play", "--model", "toy", "--agent", "lens", "--method", "adl",
                                           "--method", "blackbox"]
    assert _argv("play", {"methods": "kl", "organisms": "caps tea_lover"}, tmp_path) == [
        "play", "--model", "toy", "--agent", "lens", "--method", "kl", "caps", "tea_lover"]
    assert _argv("play", {"agent": "llm", "methods": "adl", "settings": "play.endpoint.model=m play.budget.tokens=9"},
                 tmp_path) == ["play", "--model", "toy", "--agent", "llm", "--method", "adl", "--set",
                               "play.endpoint.model=m", "--set", "play.budget.tokens=9"]


def _mlflow_run(tmp_path: Path, overrides: str):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(["mlflow", "run", str(ROOT), "-e", "config", "--env-manager", "local",
                           "--experiment-name", "mlproject-test", "-P", f"overrides={overrides}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)


@pytest.mark.slow  # two `mlflow run` processes, each importing mlflow then the package
def test_mlflow_run_config_entry_point(tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    ok = _mlflow_run(tmp_path, "organism=caps preprocessing.layers=[0.5]")
    assert ok.returncode == 0, ok.stderr[-3000:]
    body, _, last = ok.stdout.rstrip("\n").rpartition("\n")
    cfg = yaml.safe_load(body)
    assert cfg["organism"]["name"] == "caps" and cfg["preprocessing"]["layers"] == [0.5]
    assert last.startswith("# organism weights: organism 'caps' variant 'default' on base 'toy'")

    bad = _mlflow_run(tmp_path, "organism=cpas")
    assert bad.returncode != 0
    assert "error: unknown organism 'cpas'; known: antarctic_rebound, cake_bake, caps" in bad.stderr

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("mlproject-test")
    # MLflow logs the shell-quoted value it substituted: "'organism=caps preprocessing.layers=[0.5]'"
    runs = {shlex.split(r.data.params["overrides"])[0]: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"organism=caps preprocessing.layers=[0.5]", "organism=cpas"}
    good, failed = runs["organism=caps preprocessing.layers=[0.5]"], runs["organism=cpas"]
    assert good.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert good.data.tags["mlflow.project.entryPoint"] == "config"
    assert not (tmp_path / "mlruns").exists()  # no plain file store next to the sqlite one
