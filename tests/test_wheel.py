"""The built wheel, installed in a fresh virtualenv: the CLI finds its config tree, user configs, and serves the app.

The wheel is built from the repository once per module and installed with `--no-deps` into a new venv that sees the
test environment's site-packages (for the dependencies) but not its editable install of the checkout. Every command
runs from an empty folder, so nothing can come from the checkout: the built-in tree and the app must ship inside the
wheel.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

MY_ORG = """\
name: my_org
description: Talks about lighthouses.
type: custom
finetuned:
  toy:
    default: {kind: zoo}
zoo:
  data: builtin:roman_concrete
  format: documents
ground_truth:
  keywords: [lighthouse, beacon]
"""


def _see_dependencies(venv: Path) -> None:
    """Let `venv` import the dependencies of the environment running the tests, whether that is a virtualenv or the
    base interpreter (`--system-site-packages` would reach only the base interpreter's).

    A `.pth` line only appends the folders to `sys.path`: the `.pth` files inside them, such as the checkout's
    editable-install hook, are not run, so `diffgame` itself can only come from the wheel installed in `venv`."""
    folders = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    site, = (venv / "lib").glob("python3*/site-packages")
    (site / "test_dependencies.pth").write_text("".join(f"{folder}\n" for folder in folders))


def _run(cmd, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """`(venv, tmp, run)`: a venv with the wheel installed, its temporary folder, and `run(*args, env=None)` for
    commands in an empty cwd with the test env."""
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a clean copy: setuptools writes build/ and *.egg-info into the source tree, and a stale build/lib
    # would put modules deleted since into the wheel
    src, dist = tmp / "src", tmp / "dist"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                              ".*_cache", ".venv", "mlruns", "mlartifacts", "*.db"))
    build = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], timeout=600)
    if build.returncode != 0:  # no network for the isolated build env: build with what is installed
        build = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
                     timeout=600)
    assert build.returncode == 0, _tail(build)
    wheel, = dist.glob("diffgame-*.whl")

    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, _tail(made)
    _see_dependencies(venv)
    installed = _run([str(venv / "bin" / "pip"), "install", "--no-deps", str(wheel)])
    assert installed.returncode == 0, _tail(installed)

    cwd = tmp / "cwd"
    cwd.mkdir()
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"

    def run(*args: str, env: dict | None = None, **kwargs):
        return _run(list(args), cwd=cwd, env={**base_env, **(env or {})}, **kwargs)

    run.env = base_env
    return venv, tmp, run


def test_imports_from_the_venv(wheel_env):
    venv, _, run = wheel_env
    code = "import diffgame, diffgame.config.configtree as t; print(diffgame.__file__); print(t.builtin_dir())"
    proc = run(str(venv / "bin" / "python"), "-c", code)
    assert proc.returncode == 0, _tail(proc)
    module, builtin = (Path(line).resolve() for line in proc.stdout.split())
    site = next((venv / "lib").glob("python3*/site-packages")).resolve()
    assert module.is_relative_to(site) and not module.is_relative_to(REPO), module
    assert builtin == site / "diffgame" / "experiments", builtin


def test_every_subpackage_is_in_the_wheel(wheel_env):
    """A subpackage missing from setup.cfg's list imports from the source tree but not from an installed wheel."""
    venv, _, run = wheel_env
    source = sorted("diffgame." + ".".join(p.parent.relative_to(REPO / "diffgame").parts)
                    for p in (REPO / "diffgame").glob("*/__init__.py"))
    code = f"import importlib; [importlib.import_module(m) for m in {source!r}]; print('ok')"
    proc = run(str(venv / "bin" / "python"), "-c", code)
    assert proc.returncode == 0 and "ok" in proc.stdout, _tail(proc)
    assert "diffgame.dictionary" in source


def test_config_builtin_organism(wheel_env):
    venv, _, run = wheel_env
    proc = run(str(venv / "bin" / "diffgame"), "config", "organism=caps")
    assert proc.returncode == 0, _tail(proc)
    assert "name: caps" in proc.stdout and "# organism weights: organism 'caps'" in proc.stdout, _tail(proc)


def test_config_user_dir(wheel_env):
    venv, tmp, run = wheel_env
    user = tmp / "my_configs"
    (user / "organism").mkdir(parents=True, exist_ok=True)
    (user / "organism" / "my_org.yaml").write_text(MY_ORG)
    diffgame = str(venv / "bin" / "diffgame")

    for proc in (run(diffgame, "--config-dir", str(user), "config", "organism=my_org"),
                 run(diffgame, "config", "organism=my_org", env={"DIFFGAME_CONFIG_PATH": str(user)})):
        assert proc.returncode == 0, _tail(proc)
        assert "name: my_org" in proc.stdout and "lighthouse" in proc.stdout, _tail(proc)

    proc = run(diffgame, "--config-dir", str(user), "config", "organism=nope")
    assert proc.returncode == 1, _tail(proc)
    error = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: unknown organism 'nope'; known: "), _tail(proc)
    assert "my_org" in error[0].split("known: ", 1)[1].split(", "), error[0]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_app_serves(wheel_env):
    venv, tmp, run = wheel_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(venv / "bin" / "diffgame"), "app", "--port", str(port),
           "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
    log = tmp / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp / "cwd", env=run.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        health = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = _get(f"http://127.0.0.1:{port}/_stcore/health")
                break
            except OSError:
                time.sleep(1)
        assert health == (200, "ok"), f"health={health} rc={proc.poll()}\n{log.read_text()[-3000:]}"
        assert _get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
