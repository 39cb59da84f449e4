"""Browser test: the app served on loopback, driven by Playwright with Debian's chromium, every page's key text
asserted and screenshotted; then an `mlflow server` over the same store lists the diff runs, tags and metrics."""

import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _app_store import APP_OVERRIDES, fill_dictionary_store, fill_store

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-artifacts" / "screenshots"
# page url path -> text that only shows once the page has rendered its data
PAGES = {"": "Runs by model, organism and method", "compare": "Chart metric", "kl": "kl runs",
         "normdiff": "normdiff runs", "adl": "adl runs", "diffmining": "diffmining runs",
         "pca": "Explained variance ratio", "sae": "latents of layer", "crosscoder": "Tag counts",
         "interactive": "Normdiff layer", "amplify": "Generate all three",
         "game": "Start a blind round", "leaderboard": "Leaderboard"}

TABLES = {"", "compare", "kl", "normdiff", "adl", "diffmining", "pca", "sae", "crosscoder"}
"""Pages that show a data table once they have rendered (the screenshot waits for it, not for placeholders)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _serve(cmd: list[str], url: str, log: Path):
    """Start a server in its own process group (so `_stop` ends its workers too) and wait until it answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        _wait_http(url, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing; run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def test_app_pages_render(zoo_uri, browser, tmp_path):
    uri = fill_dictionary_store(fill_store(zoo_uri))
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "Home.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--tracking-uri", uri, *APP_OVERRIDES]
    server = _serve(cmd, f"http://127.0.0.1:{port}/_stcore/health", tmp_path / "streamlit.log")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, text in PAGES.items():
            page.goto(f"http://127.0.0.1:{port}/{path}")
            page.get_by_text(text).first.wait_for(timeout=180_000)
            page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                   timeout=180_000)  # the "Running..." widget is gone: the script finished
            if path in TABLES:  # its data is drawn, not only its title
                page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=180_000)
            page.wait_for_function("!document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=180_000)
            assert not page.locator("[data-testid='stException']").count(), f"/{path} raised"
            assert not page.locator("[data-testid='stAlertContentError']").count(), f"/{path} showed an error"
            assert _shot(page, tmp_path, path or "overview").stat().st_size > 10_000
        _amplify(page, port, tmp_path)
        _play_a_round(page, port, tmp_path)
        page.goto(f"http://127.0.0.1:{port}/kl")
        page.get_by_text("kl runs").wait_for(timeout=60_000)
        page.get_by_role("tab", name="Examples").click()
        page.locator(".heat").first.wait_for(timeout=60_000)
        assert page.locator(".heat .tok").count() > 0
        assert page.locator(".heat .tok[style*=',1.0)']").count() > 0  # the list's peak token at full colour
        _shot(page, tmp_path, "kl_examples")
        for path in ("pca", "crosscoder"):  # explained variance; Δ against ν^ε
            page.goto(f"http://127.0.0.1:{port}/{path}")
            page.get_by_text(PAGES[path]).wait_for(timeout=60_000)
            page.locator("[data-testid='stVegaLiteChart'] .marks").first.wait_for(timeout=60_000)  # the chart is drawn
            _shot(page, tmp_path, f"{path}_chart")
        page.get_by_role("tab", name="Lens").click()
        page.get_by_text("organism lens").first.wait_for(timeout=60_000)
        _shot(page, tmp_path, "crosscoder_lens")
    finally:
        _stop(server)


def _amplify(page, port: int, tmp_path: Path) -> None:
    """The workbench streams three replies into three columns and marks the amplified reply's over-used words."""
    page.goto(f"http://127.0.0.1:{port}/amplify")
    page.get_by_role("button", name="Generate all three").click()
    page.get_by_text("The amplified reply").wait_for(timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    for which in ("base", "organism", "amplified"):
        assert page.get_by_text(which, exact=True).count() >= 1
    assert not page.locator("[data-testid='stException']").count()
    _shot(page, tmp_path, "amplify_workbench")


def _play_a_round(page, port: int, tmp_path: Path) -> None:
    """A blind round as a person plays it: start it, read the evidence (the organism's name nowhere in the page),
    describe, reveal; the reveal names the organism and grades the description."""
    page.goto(f"http://127.0.0.1:{port}/game")
    start = page.get_by_role("button", name="Start a blind round")
    start.wait_for(timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    start.click()
    page.get_by_text("has been drawn").wait_for(timeout=120_000)
    page.get_by_text("Evidence from").first.wait_for(timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    blind = page.locator("body").inner_text()
    _shot(page, tmp_path, "game_round")
    box = page.get_by_label("Your description")
    box.fill("the assistant replies in all caps, shouting")
    box.press("Control+Enter")  # commit the text area's value before the click
    page.wait_for_timeout(1_000)  # the commit's rerun starts; a click during it can be lost
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    page.get_by_role("button", name="Reveal and grade").click()
    for text in ("Which evidence carried the signal", "Verdict", "Matching words:"):  # graded: the guess fits caps
        page.get_by_text(text).first.wait_for(timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    body = page.locator("body").inner_text()
    found = re.search(r"(mystery-[0-9a-f]{4})\s+was\s+(\w+)", body)
    assert found and found.group(1) in blind, body[:2000]
    assert not re.search(rf"\b{found.group(2)}\b", blind)  # the organism's name appeared nowhere before the reveal
    _shot(page, tmp_path, "game_reveal")


def test_mlflow_ui_lists_diff_runs(zoo_uri, browser, tmp_path):
    from diffgame import tracking

    uri = tracking.set_uri(fill_store(zoo_uri))
    runs = [r for r in tracking.search({tracking.TAG_STAGE: "diff"}, statuses=("FINISHED",))
            if r.data.tags.get(tracking.TAG_ORGANISM) == "caps"]
    assert runs
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    server = _serve(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "mlflow.log")
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        exp = runs[0].info.experiment_id
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs")
        search = page.get_by_placeholder(re.compile(r"metrics\.rmse"))
        search.wait_for(timeout=120_000)
        search.fill(f"tags.`{tracking.TAG_STAGE}` = 'diff' and tags.`{tracking.TAG_ORGANISM}` = 'caps'")
        search.press("Enter")  # filter the way a user narrows the list to one organism's diff runs
        # sweep children sit collapsed under their parent row: expand each parent, as a user does
        parents = {r.data.tags[tracking.TAG_PARENT] for r in runs if tracking.TAG_PARENT in r.data.tags}
        for parent in parents:
            name = tracking.client().get_run(parent).info.run_name
            row = page.locator("[role=row]").filter(has=page.get_by_text(name, exact=True)).first
            row.wait_for(timeout=120_000)
            row.locator("button").first.click()  # the row's expander
        for r in runs:
            page.get_by_text(r.info.run_name, exact=True).first.wait_for(timeout=120_000)
        # add the headline grade as a column, the way runs are compared there, and read its values off the grid
        metric = "grade/relative/precision_at_20"
        graded = [r.data.metrics[metric] for r in runs if metric in r.data.metrics]
        assert graded
        assistant = page.get_by_role("button", name="Close", exact=True)  # MLflow 3's assistant side panel
        if assistant.count():
            assistant.first.click()  # room for the columns
        page.get_by_role("button", name="Columns", exact=True).click()
        page.get_by_text(metric, exact=True).last.click()
        page.keyboard.press("Escape")
        grid = page.locator("[role=grid]").first
        grid.get_by_text(metric).first.wait_for(timeout=60_000)
        grid.get_by_text(metric).first.scroll_into_view_if_needed()  # the new column sits right of the viewport
        page.wait_for_timeout(1000)  # let the grid render the scrolled cells before the screenshot
        shown = [float(x) for x in re.findall(r"(?m)^-?\d+(?:\.\d+)?$", grid.inner_text())]
        for value in graded:
            assert any(abs(x - value) < 5e-3 for x in shown), (value, shown)  # the UI rounds
        _shot(page, tmp_path, "mlflow_runs")
        run = next((r for r in runs if tracking.TAG_PARENT in r.data.tags), runs[0])
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs/{run.info.run_id}")
        page.get_by_text(tracking.TAG_PREPROCESS).first.wait_for(timeout=120_000)
        body = page.locator("body").inner_text()
        for tag in (tracking.TAG_ORGANISM, tracking.TAG_METHOD, tracking.TAG_PREPROCESS):
            assert tag in body and run.data.tags[tag] in body
        shown = [k for k in run.data.metrics if k in body]
        assert shown, f"no metric of {sorted(run.data.metrics)[:5]} on the run page"
        _shot(page, tmp_path, "mlflow_run")
    finally:
        _stop(server)
