"""A fanned-out sweep with 1 and with 2 workers against a shared deployment (issue #33; ideal: 2 workers 2x faster).

The micro sweep of the fan-out test: 4 tiny organisms x 3 methods (kl, normdiff, diffmining), `diffgame run
--launcher local --jobs N`, each against its own fresh `mlflow server` on PostgreSQL (pgserver) with S3 artifacts
(moto), all on loopback. Per worker count: the sweep's wall time, and the bytes its workers downloaded from the
artifact store (their cache folder) beside the bytes of the stores in S3: each store read once per worker cache,
not once per method. The two sweeps run one after the other (a sweep cannot be interleaved with itself); the load
is recorded.

    python benchmarks/sweep.py --json benchmarks/measured/sweep-cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test suite's deployment and pair
import _common  # noqa: E402
from _tiny_models import TINY_OVERRIDES, write_config_dir  # noqa: E402
from helpers_mlflow import s3_objects, shared_deployment  # noqa: E402

from diffgame.tracking.shardcache import BUILT_HERE  # noqa: E402

METHODS = "kl,normdiff,diffmining"


def sweep(workers: int, root: Path, conf: Path, names: list[str]) -> dict:
    """One sweep with `workers` at once, on a deployment of its own (nothing to reuse)."""
    root.mkdir(parents=True)
    with shared_deployment(root / "deployment") as (url, endpoint, bucket):
        env = {**os.environ, "DIFFGAME_CACHE": str(root / "cache"), "MLFLOW_TRACKING_URI": url}
        cmd = [sys.executable, "-m", "diffgame.cli", "--config-dir", str(conf), "run", f"organism={','.join(names)}",
               f"method={METHODS}", *TINY_OVERRIDES, "method.diffmining.max_samples=8", "--launcher", "local",
               "--jobs", str(workers)]
        load = [_common.load()]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load.append(_common.load())
        if done.returncode:
            raise SystemExit(f"the {workers}-worker sweep failed:\n{done.stderr[-3000:]}")
        objects = s3_objects(endpoint, bucket)
    store_bytes = sum(n for k, n in objects.items() if "/artifacts/store/" in k)
    cache = root / "cache" / "stores"
    runs = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")] if cache.is_dir() else []
    fetched = [d for d in runs if not (d / BUILT_HERE).exists()]  # the others were built on this machine
    downloaded = sum(f.stat().st_size for d in fetched for f in d.rglob("*") if f.is_file())
    return {"workers": workers, "children": len(names) * len(METHODS.split(",")), "stores": len(names),
            "wall_s": wall, "store_bytes": store_bytes, "downloaded_bytes": downloaded,
            "stores_downloaded": len(fetched), "stores_built_here": len(runs) - len(fetched),
            "load": load, "device": "cpu"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", help="Recorded only: the children run on the CPU.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (of this process; not the children).")
    p.add_argument("--json", type=Path, default=None, help="Write the rows here (scripts/bench_tables.py reads it).")
    return p


def measure(a: argparse.Namespace) -> list[dict]:
    """One row per worker count; each row's `speedup` is the first count's wall time over its own."""
    with tempfile.TemporaryDirectory(prefix="diffgame-sweep-bench-") as tmp:
        conf, names = write_config_dir(Path(tmp) / "tiny")
        rows = [sweep(n, Path(tmp) / f"w{n}", conf, names) for n in a.workers]
    for r in rows:
        r["speedup"] = rows[0]["wall_s"] / r["wall_s"]
    return rows


def report(rows: list[dict]) -> None:
    print("| workers | children | wall s | speedup | stores in S3 | downloaded by workers |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['children']} | {r['wall_s']:.0f} | {r['speedup']:.2f} | "
              f"{r['stores']} ({r['store_bytes'] / 1e6:.2f} MB) | {r['stores_downloaded']} "
              f"({r['downloaded_bytes'] / 1e6:.2f} MB) |")


def main() -> None:
    _common.cli("sweep", parser, measure, report)


if __name__ == "__main__":
    main()
