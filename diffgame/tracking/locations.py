"""Whether a tracking URI and the folders a stage writes can be used, found out before any work: a server that does not
answer, a SQLite database whose folder is missing or read-only, a filesystem too full for what a stage will write.
MLflow alone retries a refused server for minutes or creates folders silently; a full disk shows only mid-write.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from diffgame.errors import SpaceError, TrackingError

PROBE_TIMEOUT_S = 5.0
"""Seconds the one health check of an http(s) tracking server waits before calling it unreachable."""
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
"""MLflow's HTTP retry budget in our processes (its own, 7 retries with backoff and 120 s each, waits minutes on a
server that went away); a value the user set is kept."""
ELSEWHERE = "or pick another with --tracking-uri or MLFLOW_TRACKING_URI"


def check_store(uri: str, verb: str) -> None:
    """Fail in seconds, with the fix, on a server that does not answer (MLflow alone retries for minutes) and on a
    SQLite database that cannot exist: its folder is missing (MLflow would create it) or, for a new one, read-only."""
    db = sqlite_file(uri)
    if db is not None and not db.parent.is_dir():
        raise TrackingError(f"cannot {verb} tracking store {uri}: folder {db.parent} does not exist; "
                            f"create it (mkdir -p {db.parent}) {ELSEWHERE}")
    if db is not None and not db.exists() and not can_create_in(db.parent):
        raise TrackingError(f"cannot {verb} tracking store {uri}: folder {db.parent} is read-only, so no database "
                            f"can be created there; make it writable {ELSEWHERE}")
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)
        reason = _unanswered(uri)
        if reason:
            where = urlparse(uri)
            port = where.port or (443 if where.scheme == "https" else 80)
            fix = ("check the host name" if reason.startswith("unknown host") else
                   f"start a server there (mlflow server --host {where.hostname} --port {port} "
                   f"--backend-store-uri sqlite:///mlflow.db)")
            raise TrackingError(f"cannot {verb} tracking store {uri}: {reason}; {fix} {ELSEWHERE}")


def _unanswered(uri: str) -> str | None:
    """Why one GET of `<uri>/health` got no answer within `PROBE_TIMEOUT_S`, or None when the server answered."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered (a login, a path prefix): MLflow reports what follows
    except (OSError, ValueError) as e:
        cause = getattr(e, "reason", e)
        if isinstance(cause, ssl.SSLError):
            return None  # it answered; MLflow has its own TLS settings (MLFLOW_TRACKING_INSECURE_TLS, ...)
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return f"no answer within {PROBE_TIMEOUT_S:g} s"
        if isinstance(cause, socket.gaierror):
            return f"unknown host {urlparse(uri).hostname}"
        return str(cause)
    return None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working directory unless absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?")[0]))


def can_create_in(folder: Path) -> bool:
    """Whether a file can be created in `folder`, or where it is missing in the nearest folder above it (MLflow makes
    the rest). Tried for real: permission bits do not tell for root, read-only mounts or immutable folders."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=nearest_existing(folder), prefix=".diffgame-write-check-"):
            return True
    except OSError:
        return False


SPACE_MARGIN = 1.05
"""Free space asked for beyond a stage's estimate (file headers, markers, the filesystem's own rounding)."""


def require_space(needs: dict[Path, int], what: str, fix: str) -> None:
    """Refuse in one line, before any work, when a filesystem has less free space than `needs` will write to it.

    `needs` maps each folder (it may not exist yet) to the bytes written there; folders on one filesystem add up.
    `what` names the writing ("the activation store of caps on toy"), `fix` says what to do instead."""
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, n in needs.items():
        anchor = nearest_existing(folder)
        device = anchor.stat().st_dev
        first, total = by_device.get(device, (anchor, 0))
        by_device[device] = (first, total + int(n))
    for anchor, n in by_device.values():
        free = shutil.disk_usage(anchor).free
        if free < n * SPACE_MARGIN:
            raise SpaceError(f"not enough disk space for {what}: it needs {human_bytes(n * SPACE_MARGIN)} on the "
                             f"filesystem of {anchor}, which has {human_bytes(free)} free; {fix}")


def nearest_existing(folder: Path) -> Path:
    """`folder`, or where it is missing the nearest folder above it that exists."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def human_bytes(n: float) -> str:
    """`1.2 GB`, `340.0 MB`, `12.0 kB`, `512 B`: decimal units, one decimal."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
