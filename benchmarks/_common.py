"""What every benchmark records beside its rows: the machine, the versions, the date and the load, in one JSON
envelope that `scripts/bench_tables.py` reads (`--json PATH` on each benchmark, or `benchmarks/suite.py` for all)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine(device: str) -> str:
    """The GPU's name on CUDA, else the CPU's model, its cores and torch's threads."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def load() -> float:
    """The 1-minute load average (the benchmark's own process included)."""
    return os.getloadavg()[0]


def versions() -> dict[str, str]:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def envelope(name: str, device: str, rows: list[dict], command: str | None = None) -> dict:
    """One benchmark's result as the docs' tables read it."""
    return {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": machine(device),
            "device": str(device), **versions(), "command": command or " ".join(sys.argv), "rows": rows}


def write_json(path: Path | None, name: str, device: str, rows: list[dict]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(envelope(name, device, rows), indent=1) + "\n")
    print(f"wrote {path}")


def cli(name: str, parser, measure, report) -> None:
    """A benchmark's command line: parse, set torch's threads, measure, print the rows, write `--json`."""
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args)
    report(rows)
    write_json(args.json, name, args.device, rows)
