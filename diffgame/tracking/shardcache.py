"""A remote activation store read shard by shard: each file is downloaded from the run's artifacts when a method first
reads it, into a cache on this machine bounded by bytes (least recently used files go first). Workers on one machine
share the cache; a worker elsewhere (another cache) downloads the same bytes. The store checks each file against its
manifest on arrival (`diffgame.store.ActivationStore.open(..., fetch=)`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from diffgame import tracking

CACHE_ENV = "DIFFGAME_STORE_CACHE_GB"
"""Bytes (in GB) the store cache may hold; default `DEFAULT_GB`."""
DEFAULT_GB = 50.0
KEEP = ("manifest.json", "plan.json")
"""Small files never evicted: a store is opened from them."""
BUILT_HERE = "built-here"
"""Beside a run's cached store that this machine built (adopted, not downloaded)."""


def cache_root() -> Path:
    """`$DIFFGAME_CACHE/stores` (default `~/.cache/diffgame/stores`): one folder per preprocess run id."""
    return Path(os.environ.get("DIFFGAME_CACHE", Path.home() / ".cache" / "diffgame")) / "stores"


def budget_bytes() -> int:
    return int(float(os.environ.get(CACHE_ENV, DEFAULT_GB)) * 1e9)


class ShardCache:
    """`cache(rel) -> local path` of file `rel` of run `run_id`'s store, downloaded on first use."""

    def __init__(self, run_id: str, store: str, root: Path | None = None, budget: int | None = None):
        self.run_id, self.store = run_id, store
        self.root = root or cache_root()
        self.folder = self.root / run_id / store
        self.budget = budget_bytes() if budget is None else budget
        self.downloaded: list[str] = []
        """Files this cache downloaded (not found there already), in order."""

    def __call__(self, rel: str) -> Path:
        from filelock import FileLock

        path = self.folder / rel
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):  # one downloader per machine; the others find the file
            if not path.is_file():
                self._download(rel, path)
                self.downloaded.append(rel)
                self._evict(keep=path)
            os.utime(path)  # most recently used
        return path

    def adopt(self, written: Path) -> Path | None:
        """Move the complete store `written` on this machine (a finished run's upload staging) in as this run's
        cached copy, so a reader here never downloads it; None (nothing moved) when the cache already has a copy."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            if self.folder.exists():
                return None
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(written), str(self.folder))
            (self.folder.parent / BUILT_HERE).touch()
        return self.folder

    def _download(self, rel: str, path: Path) -> None:
        """Into a folder of its own, moved into place whole: a reader never sees half a file."""
        import mlflow

        part = Path(tempfile.mkdtemp(prefix=".download-", dir=self.root))
        try:
            got = mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=f"{self.store}/{rel}",
                                                      dst_path=str(part), tracking_uri=tracking.resolve_uri())
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, path)
        finally:
            shutil.rmtree(part, ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used shard files of every cached store until the cache fits its budget. A file
        a reader has mapped stays readable (the mapping holds it) until the reader lets go."""
        files = [(p.stat().st_mtime_ns, p.stat().st_size, p) for p in self.root.glob("*/*/**/*")
                 if p.is_file() and p.name not in KEEP and p != keep and not p.name.endswith(".lock")]
        total = sum(size for _, size, _ in files) + keep.stat().st_size
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.budget:
                break
            p.unlink(missing_ok=True)
            total -= size
