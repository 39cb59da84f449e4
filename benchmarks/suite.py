"""Every benchmark row from one command, into one JSON file that `scripts/bench_tables.py` turns into the tables of
docs/benchmarks.md.

A lent GPU comes by chance for 15 minutes, all tries included, so the whole GPU run is one prepared command (the
`gpu` profile, ≤ 8 minutes on one H100/H200). The `tiny` profile runs the same code paths on shapes that take
seconds, inside the test suite, so the suite cannot rot between lends; `cpu` gives the docs' CPU rows.

Each entry calls one benchmark's `measure(parser().parse_args(argv))` in this process. The JSON is rewritten after
every entry, so a run cut short keeps what it measured; an entry that fails is recorded with its error and the
others go on; entries that would start after `--budget-s` are skipped (and listed as skipped).

    python benchmarks/suite.py --profile gpu --budget-s 420 --json benchmarks/measured/suite-gpu.json   # lent GPU
    python benchmarks/suite.py --profile cpu --threads 1 --json benchmarks/measured/suite-cpu.json
    python scripts/bench_tables.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

GEMMA_EXTRACTION = ["--shape", "gemma3_1b", "--dtype", "bfloat16", "--layers", "0.25", "0.5", "0.75"]
PROFILES: dict[str, list[tuple[str, list[str]]]] = {
    "gpu": [  # Gemma-3-1B shapes, bf16, on one H100/H200, the rows never measured first: every GPU row of the docs
        ("extraction", [*GEMMA_EXTRACTION, "--batch", "16", "--seq", "1024", "--batches", "8", "--rounds", "3",
                        "--rss-scale", "0", "--disk-files", "8"]),
        ("diffmining", ["--shape", "gemma3_1b", "--dtype", "bfloat16", "--batch", "8", "--seq", "512",
                        "--batches", "2", "--rounds", "5", "--rss-scale", "0"]),
        ("dictionary", ["--shape", "gemma3_1b", "--accelerators", "gpu", "--steps", "60", "--warmup", "10",
                        "--rounds", "3", "--rss-scale", "0"]),
        ("dictionary", ["--shape", "gemma3_1b", "--inputs", "pair", "--precision", "bf16-mixed",
                        "--accelerators", "gpu", "--steps", "60", "--warmup", "10", "--rounds", "3",
                        "--rss-scale", "0"]),
        ("kl", ["--shape", "gemma3", "--layers", "26", "--batch", "16", "--seq", "1024", "--dtype", "bfloat16",
                "--repeats", "5"]),
        ("amplify", ["--shape", "all", "--layers", "30", "--batch", "32", "--dtype", "bfloat16"]),
        ("diffmining", ["--shape", "toy", "--rounds", "5", "--rss-scale", "0"]),
        ("kl", ["--shape", "toy", "--batch", "16", "--seq", "128", "--dtype", "bfloat16", "--repeats", "5"]),
    ],
    "cpu": [  # the docs' CPU rows: ratios only (~20 minutes on 2 cores)
        ("extraction", ["--shape", "toy", "--rss-scale", "10"]),
        ("extraction", ["--shape", "gemma3_1b", "--n-layers", "6", "--batch", "2", "--seq", "64", "--batches", "4",
                        "--layers", "0.25", "0.5", "0.75", "--rss-scale", "0", "--disk-files", "2"]),
        ("diffmining", ["--shape", "toy", "--rounds", "9", "--rss-scale", "10"]),
        ("diffmining", ["--shape", "gemma3_1b", "--rounds", "3", "--rss-scale", "0"]),
        ("kl", ["--shape", "all"]),
        ("dictionary", ["--shape", "toy", "--accelerators", "cpu", "--rss-scale", "10"]),
        ("amplify", ["--shape", "all"]),
    ],
    "tiny": [  # seconds each: the same code paths, for the test suite
        ("extraction", ["--shape", "toy", "--batch", "2", "--seq", "16", "--batches", "2", "--rounds", "1",
                        "--rss-scale", "0", "--disk-files", "1"]),
        ("diffmining", ["--shape", "toy", "--batch", "2", "--seq", "16", "--batches", "2", "--rounds", "1",
                        "--rss-scale", "0"]),
        ("kl", ["--shape", "toy", "--batch", "2", "--seq", "16", "--repeats", "1", "--compile", "off"]),
        ("dictionary", ["--shape", "toy", "--tokens", "4096", "--batch", "256", "--steps", "3", "--warmup", "1",
                        "--rounds", "1", "--accelerators", "cpu", "--rss-scale", "0"]),
        ("amplify", ["--shape", "toy", "--batch", "2", "--new", "4", "--repeats", "1"]),
    ],
}
"""Per profile, (benchmark module, its command-line arguments) in the order they run."""


def plan(profile: str, device: str | None = None, only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The profile's entries (those of `only` when given), each argv with `--device` where the benchmark takes one."""
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    out = []
    for name, argv in PROFILES[profile]:
        if only and name not in only:
            continue
        if device and name != "dictionary":  # the dictionary benchmark picks its devices by --accelerators
            argv = [*argv, "--device", device]
        out.append((name, argv))
    return out


def measure(name: str, argv: list[str], sync_debug: bool = False) -> tuple[list[dict], dict | None]:
    """One entry's rows; with `sync_debug` on CUDA also where the host waited on the device: the source lines of
    the operations `torch.cuda.set_sync_debug_mode` reports (the tiny shapes walk the same code, so a GPU's short
    tiny run shows every step that would stall, without perturbing the timed profile)."""
    module = importlib.import_module(name)
    args = module.parser().parse_args(argv)
    if not (sync_debug and torch.cuda.is_available()):
        return module.measure(args), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            rows = module.measure(args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = Counter(f"{Path(w.filename).relative_to(ROOT) if Path(w.filename).is_relative_to(ROOT) else w.filename}"
                    f":{w.lineno}" for w in syncs)
    return rows, {"count": len(syncs), "where": where.most_common(20)}


def run(profile: str, out: Path | None, device: str | None = None, only: list[str] | None = None,
        budget_s: float | None = None, sync_debug: bool = False) -> dict:
    """Run the profile's entries in this process; the result (also written to `out` after each entry)."""
    entries = plan(profile, device, only)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = _common.envelope("suite", dev, [])
    result.update(profile=profile, entries=[], wall_s=0.0)
    del result["rows"]
    t_start = time.perf_counter()
    for i, (name, argv) in enumerate(entries):
        spent = time.perf_counter() - t_start
        entry: dict = {"benchmark": name, "argv": argv}
        if budget_s is not None and spent > budget_s:
            entry["skipped"] = f"budget: {spent:.0f} s spent of {budget_s:.0f} s"
        else:
            print(f"[{i + 1}/{len(entries)}] {name} {' '.join(argv)}", flush=True)
            t0 = time.perf_counter()
            try:
                entry["rows"], syncs = measure(name, argv, sync_debug)
                if syncs is not None:
                    entry["device_syncs"] = syncs
            except Exception:  # one failing row must not cost the others (a lend is 15 minutes)
                entry["error"] = traceback.format_exc(limit=8)
                print(entry["error"], file=sys.stderr, flush=True)
            entry["wall_s"] = time.perf_counter() - t0
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result["entries"].append(entry)
        result["wall_s"] = time.perf_counter() - t_start
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=list(PROFILES), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="Write the suite's result here (rewritten per entry).")
    p.add_argument("--device", default=None, help="Override every entry's device (e.g. cpu to rehearse the gpu plan).")
    p.add_argument("--only", nargs="+", default=None, help="Run only these benchmarks.")
    p.add_argument("--budget-s", type=float, default=None, help="Start no entry after this many seconds.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--sync-debug", action="store_true",
                   help="On CUDA, record where the host waits on the device (perturbs timings: use with tiny).")
    p.add_argument("--dry-run", action="store_true", help="Print the plan and stop.")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dry_run:
        for name, argv in plan(a.profile, a.device, a.only):
            print(f"python benchmarks/{name}.py {' '.join(argv)}")
        return
    result = run(a.profile, a.json, a.device, a.only, a.budget_s, a.sync_debug)
    failed = [e["benchmark"] for e in result["entries"] if "error" in e]
    skipped = [e["benchmark"] for e in result["entries"] if "skipped" in e]
    print(f"suite {a.profile}: {len(result['entries'])} entries in {result['wall_s']:.0f} s on {result['machine']}"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + (f"; skipped: {', '.join(skipped)}" if skipped else "")
          + (f"; wrote {a.json}" if a.json else ""))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
