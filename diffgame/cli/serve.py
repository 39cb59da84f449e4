"""`diffgame app`: serve the Streamlit app (loopback unless asked otherwise)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from diffgame.cli import Overrides, TrackingUri, _fail, app
from diffgame.errors import DiffgameError


@app.command("app")
def app_cmd(overrides: Overrides = None,
            port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
            host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to share it.")] = "127.0.0.1",
            tracking_uri: TrackingUri = None) -> None:
    """Serve the Streamlit app: browse runs, compare methods, inspect evidence, chat with and steer both models.

    Overrides apply to the models the app loads (e.g. `model.dtype=float32`).

    Example: diffgame app --port 8501 model.device=cpu
    """
    from diffgame import tracking

    uri = tracking.set_uri(tracking_uri)
    entry = _app_entry()
    if not _loopback(host):
        reach = "every network interface of this machine" if host in ("0.0.0.0", "::", "") else host
        print(f"[diffgame] warning: the app has no authentication: anyone who can reach {reach} on port {port} can "
              f"browse the runs of {uri} and load, prompt and steer their models", file=sys.stderr, flush=True)
    args = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.port", str(port),
            "--server.address", host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer",  # no "Deploy" button or developer menu for the app's users
            "--", "--tracking-uri", uri, *(overrides or [])]
    os.execv(sys.executable, args)


def _loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whoever resolves it may reach it
        return False


def _app_entry() -> Path:
    """The app's `Home.py` beside this code: `diffgame/app` in a wheel, the repository's `app/` in a checkout."""
    import importlib.util

    package = Path(__file__).resolve().parent.parent  # diffgame/
    spec = importlib.util.find_spec("diffgame.app")
    mapped = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    for folder in (package / "app", package.parent / "app", *mapped):
        if (folder / "Home.py").is_file():
            return folder / "Home.py"
    _fail(DiffgameError("the app is not installed with this diffgame (no app/Home.py beside it); reinstall it"))
