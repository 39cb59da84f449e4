"""One process at a time executes a stage's run: the others wait for it and reuse its result.

On one machine a file lock per (stage, fingerprint), kept beside the SQLite database (or in the user cache for a
server), orders the processes and is released by the OS when its holder dies, however it dies. Across machines that
share a tracking server, a RUNNING run's lease (`tracking.live`) tells a waiting process that someone is at work, and
an expired lease (a dead holder) lets it take over the run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffgame import tracking
from diffgame.tracking import locations

POLL_S = 5.0


def lock_dir() -> Path:
    """Where the locks of the current tracking URI live: beside a SQLite database, else in the user cache."""
    uri = tracking.resolve_uri()
    db = locations.sqlite_file(uri)
    if db is not None:
        return db.parent / ".diffgame-locks"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "diffgame" / "locks" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"[diffgame] {msg}", file=sys.stderr, flush=True)


@contextmanager
def claim(stage: str, fp: str, what: str) -> Iterator[None]:
    """Hold the right to execute `stage` with fingerprint `fp` (`what` names it in messages) for the block.

    Callers look for a FINISHED run inside the block: a process that waited finds its peer's and reuses it."""
    from filelock import FileLock, Timeout

    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{stage}-{fp}.lock", is_singleton=True)  # re-entrant within this process
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"another process on this machine is running the same {what}; waiting for it to reuse its result")
        lock.acquire()
    try:
        wait_for_live(stage, fp, what)
        yield
    finally:
        lock.release()


def wait_for_live(stage: str, fp: str, what: str, poll: float = POLL_S) -> None:
    """Wait while a process elsewhere holds a live RUNNING run of (`stage`, `fp`); returns when it finished, failed
    or its lease expired."""
    said = None
    while (run := tracking.find_live(stage, fp)) is not None:
        if said != run.info.run_id:
            holder = run.data.tags.get(tracking.TAG_LEASE, "?").rsplit(":", 1)[0]
            _say(f"run {run.info.run_id} ({holder}) is running the same {what}; waiting for it (its lease lapses "
                 f"{tracking.LEASE_S:.0f} s after its process stops)")
            said = run.info.run_id
        time.sleep(poll)
