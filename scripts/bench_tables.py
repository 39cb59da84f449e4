"""Write docs/benchmarks.md's tables from the JSON the benchmarks write (`--json benchmarks/measured/<name>-*.json`):
every row between a page's `<!-- bench: <name> -->` and `<!-- bench end -->` markers comes from here, with the date,
machine and command of the run that measured it.

    python benchmarks/amplify.py --json benchmarks/measured/amplify-cpu.json
    python scripts/bench_tables.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "measured"
"""The benchmarks' JSON that the docs' tables are made from (committed; `benchmarks/results/` is scratch)."""
PAGE = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- bench: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- bench end -->)", re.S)


def amplify(runs: list[dict]) -> str:
    lines = ["| shape | layers, vocab | B × new tokens | machine | plain pair tok/s | amplified tok/s | "
             "**amplified ÷ plain pair** (target ≥ 0.9) | diffgame's sampler ÷ `generate` | weight-amplified ÷ "
             "organism alone |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["rows"]:
            gpu = r["device"].startswith("cuda")  # a CPU's absolute speed says nothing elsewhere: ratios only
            plain, amplified = (f"{r['tok_s'][k]:,.0f}" if gpu else "—" for k in ("plain", "amplified"))
            lines.append(f"| {r['shape']} | {r['layers']}, {r['vocab']:,} | {r['B']} × {r['new']} | "
                         f"{run['machine']} ({r['dtype']}) | {plain} | {amplified} | **{r['amplified_vs_plain']:.2f}** | "
                         f"{r['sampler_vs_generate']:.2f} | {r['weight_vs_organism']:.2f} |")
    sources = "; ".join(f"{run['date']}, torch {run['torch']}: `{run['command']}`" for run in runs)
    return "\n".join(lines) + f"\n\nMeasured {sources}.\n"


RENDER = {"amplify": amplify}


def render(name: str, results: Path = RESULTS) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(results.glob(f"{name}*.json"))]
    if not runs:
        raise SystemExit(f"no {name}*.json under {results}; run benchmarks/{name}.py --json {results}/{name}-cpu.json")
    return RENDER[name](runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--write", type=Path, default=None, help="Rewrite the marked blocks of this page (else print).")
    a = p.parse_args()
    page = (a.write or PAGE).read_text()
    names = [m["name"] for m in BLOCK.finditer(page)]
    if not a.write:
        for name in names:
            sys.stdout.write(f"## {name}\n{render(name, a.results)}\n")
        return
    a.write.write_text(BLOCK.sub(lambda m: m.group(1) + render(m["name"], a.results) + m.group(4), page))
    print(f"wrote {', '.join(names)} into {a.write}")


if __name__ == "__main__":
    main()
