"""Leases: a RUNNING run's `diffgame.lease` tag (`host:pid:until`), refreshed while its process works on it, so
another process (here or on another machine) tells a live run from one whose process is gone."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from diffgame.tracking.tags import TAG_LEASE

LEASE_S = 120.0
"""Seconds a lease lasts unless refreshed (every third of it while held)."""


def live(run) -> bool:
    """A RUNNING run whose lease is unexpired and, when held on this host, whose process is still alive."""
    value = run.data.tags.get(TAG_LEASE, "")
    if run.info.status != "RUNNING" or value.count(":") < 2:
        return False
    host, pid, until = value.rsplit(":", 2)
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False  # our own run (an earlier attempt in this process that did not close)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
    try:
        return float(until) > time.time()
    except ValueError:
        return False


@contextmanager
def held(run_id: str) -> Iterator[None]:
    """Hold `run_id`'s lease for the life of the block: a daemon thread refreshes it every third of `LEASE_S`."""
    from diffgame.tracking.runs import client

    stop = threading.Event()

    def beat() -> None:
        client().set_tag(run_id, TAG_LEASE, f"{socket.gethostname()}:{os.getpid()}:{time.time() + LEASE_S:.0f}")

    def refresh() -> None:
        while not stop.wait(LEASE_S / 3):
            try:
                beat()
            except Exception:  # a transient tracking error: the next beat tries again
                pass

    beat()  # held before the body starts, so no other process sees this run unclaimed

    refresh_thread = threading.Thread(target=refresh, name=f"diffgame-lease-{run_id[:8]}", daemon=True)
    refresh_thread.start()
    try:
        yield
    finally:
        stop.set()
        refresh_thread.join(timeout=5)
