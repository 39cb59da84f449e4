"""Write docs/benchmarks.md's tables from the JSON the benchmarks write: every row between a page's
`<!-- bench: <name> -->` and `<!-- bench end -->` markers comes from here, with the date, machine and command of the
run that measured it. Sources are `benchmarks/measured/*.json`: one benchmark's rows (`--json` on a benchmark) or a
whole suite (`benchmarks/suite.py --json`). A CPU's absolute speed says nothing about another machine, so CPU rows
show ratios only; GPU rows show tokens/s too.

    python benchmarks/suite.py --profile cpu --threads 1 --json benchmarks/measured/suite-cpu.json
    python scripts/bench_tables.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "measured"
"""The benchmarks' JSON that the docs' tables are made from (committed; `benchmarks/results/` is scratch)."""
PAGE = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- bench: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- bench end -->)", re.S)


def sources(results: Path) -> dict[str, list[tuple[dict, list[dict]]]]:
    """Per benchmark, (the run's envelope, its rows) from every JSON file under `results`."""
    out: dict[str, list[tuple[dict, list[dict]]]] = {}
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if "entries" in data:  # a suite: one envelope, rows per entry
            for e in data["entries"]:
                if e.get("rows"):
                    out.setdefault(e["benchmark"], []).append((data, e["rows"]))
        else:
            out.setdefault(data["benchmark"], []).append((data, data["rows"]))
    return out


def _gpu(row: dict) -> bool:
    return str(row.get("device", "")).startswith("cuda") or row.get("accelerator") == "gpu"


def _rate(row: dict, value: float) -> str:
    return f"{value:,.0f}" if _gpu(row) else "—"


def _load(row: dict) -> str:
    return "–".join(f"{x:.1f}" for x in row["load"]) if row.get("load") else "—"


def _rss(pair: list[float] | None, bold: bool = True) -> str:
    if not pair:
        return "—"
    ratio = f"{pair[1] / pair[0]:.2f}×"
    return f"{pair[0]:,.0f} → {pair[1]:,.0f} MiB ({f'**{ratio}**' if bold else ratio})"


def _command(meta: dict) -> str:
    """The command that measured a run, without where it wrote its JSON."""
    return re.sub(r"\s--json\s+\S+", "", meta["command"]).strip()


def _table(head: list[str], runs: list[tuple[dict, list[dict]]], cells: Callable[[dict, dict], list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meta, rows in runs:
        lines += ["| " + " | ".join(cells(meta, r)) + " |" for r in rows]
    sources = list(dict.fromkeys(f"`{_command(m)}` ({m['date']}, torch {m['torch']})" for m, _ in runs))
    return "\n".join(lines) + f"\n\nMeasured by {'; '.join(sources)}.\n"


def extraction(runs) -> str:
    head = ["shape", "layers, d, vocab", "B × T × batches", "machine (dtype)", "(a) full tok/s", "(b) truncated tok/s",
            "(d) paired tok/s", "(b) ÷ (a)", "**(d) ÷ (b/2)** (target ≥ 0.9)", "(d) ÷ min(b/2, disk)",
            "(d) per model ÷ (c)", "disk GB/s", "peak RSS of (d) 1× → N×", "load"]

    def cells(meta, r):
        t = r["tok_s"]
        return [r["shape"], f"{r['layers']}, {r['d_model']:,}, {r['vocab']:,}", f"{r['B']} × {r['T']} × {r['batches']}",
                f"{meta['machine']} ({r['dtype']})", _rate(r, t["full"]), _rate(r, t["truncated"]),
                _rate(r, t["paired"]), f"{r['truncated_vs_full']:.2f}", f"**{r['paired_vs_half_truncated']:.2f}**",
                f"{r['paired_vs_bound']:.2f}", f"{r['paired_per_model_vs_naive']:.2f}", f"{r['disk_gbps']:.2f}",
                _rss(r.get("rss_mib")), _load(r)]
    return _table(head, runs, cells)


def diffmining(runs) -> str:
    head = ["shape", "layers, vocab", "positions", "machine (dtype)", "(a) two forwards tok/s", "(b) diffgame tok/s",
            "**(b) ÷ (a)** (target ≥ 0.85)", "per round", "(c) reference ÷ (a)", "counts (b) = (c)",
            "peak RSS (b) 1× → N×", "peak RSS (c) 1× → N×", "load"]

    def cells(meta, r):
        rss = r.get("rss_mib") or {}
        ref = r.get("reference_vs_forwards")
        exact = "exact" if r.get("exact") else ("MISMATCH" if r.get("check") else "not run")
        return [r["shape"], f"{r['layers']}, {r['vocab']:,}", f"{r['positions']:,}", f"{meta['machine']} ({r['dtype']})",
                _rate(r, r["tok_s"]["forwards"]), _rate(r, r["tok_s"]["diffgame"]),
                f"**{r['diffgame_vs_forwards']:.2f}**", " ".join(f"{x:.2f}" for x in r["per_round"]["diffgame"]),
                f"{ref:.2f}" if ref is not None else "—", exact, _rss(rss.get("b")), _rss(rss.get("c"), bold=False), _load(r)]
    return _table(head, runs, cells)


def kl(runs) -> str:
    head = ["shape", "layers, vocab", "B × T", "machine (dtype)", "divergence", "two forwards tok/s", "KL tok/s",
            "**KL ÷ two forwards** (target ≥ 0.8)", "max diff vs eager (nats)"]

    def cells(meta, r):
        kind = "compiled" if r["compile"] == "on" else "eager"
        return [r["shape"], f"{r['layers']}, {r['vocab']:,}", f"{r['B']} × {r['T']}", f"{meta['machine']} ({r['dtype']})",
                kind, _rate(r, r["fwd_tok_s"]), _rate(r, r["kl_tok_s"]), f"**{r['ratio']:.2f}**", f"{r['max_diff']:.1e}"]
    return _table(head, runs, cells)


def dictionary(runs) -> str:
    head = ["shape", "d, latents, k", "batch", "machine, accelerator (precision)", "store tok/s", "memory tok/s",
            "**store ÷ memory** (target ≥ 0.9)", "per round", "max weight diff", "peak RSS 1× → N×", "load"]

    def cells(meta, r):
        kind = "SAE" if r["inputs"] == "delta" else "crosscoder"
        return [f"{r['shape']}, {kind}", f"{r['d_model']:,}, {r['n_latents']:,}, {r['k']}", f"{r['batch']:,}",
                f"{meta['machine']}, {r['accelerator']} ({r['precision']})", _rate(r, r["tok_s"]["store"]),
                _rate(r, r["tok_s"]["memory"]), f"**{r['store_vs_memory']:.2f}**",
                " ".join(f"{x:.2f}" for x in r["per_round"]), f"{r['max_weight_diff']:.1e}", _rss(r.get("rss_mib")),
                _load(r)]
    return _table(head, runs, cells)


def amplify(runs) -> str:
    head = ["shape", "layers, vocab", "B × new tokens", "machine (dtype)", "plain pair tok/s", "amplified tok/s",
            "**amplified ÷ plain pair** (target ≥ 0.9)", "diffgame's sampler ÷ `generate`",
            "weight-amplified ÷ organism alone"]

    def cells(meta, r):
        return [r["shape"], f"{r['layers']}, {r['vocab']:,}", f"{r['B']} × {r['new']}", f"{meta['machine']} ({r['dtype']})",
                _rate(r, r["tok_s"]["plain"]), _rate(r, r["tok_s"]["amplified"]), f"**{r['amplified_vs_plain']:.2f}**",
                f"{r['sampler_vs_generate']:.2f}", f"{r['weight_vs_organism']:.2f}"]
    return _table(head, runs, cells)


def sweep(runs) -> str:
    head = ["machine", "workers", "children (stores)", "**speedup** (ideal: workers)", "stores in S3",
            "the workers' cache: built there / downloaded", "load"]

    def cells(meta, r):  # wall seconds stay in the JSON: a CPU's are not a figure to quote
        return [meta["machine"], str(r["workers"]), f"{r['children']} ({r['stores']})",
                f"**{r['speedup']:.2f}×**", f"{r['store_bytes'] / 1e6:.2f} MB",
                f"{r.get('stores_built_here', 0)} / {r['stores_downloaded']} stores "
                f"({r['downloaded_bytes'] / 1e6:.2f} MB downloaded)", _load(r)]
    return _table(head, runs, cells)


RENDER = {"extraction": extraction, "diffmining": diffmining, "kl": kl, "dictionary": dictionary, "amplify": amplify,
          "sweep": sweep}


def suite_runs(results: Path) -> str:
    """One line per suite file: profile, machine, wall time, entries failed or skipped."""
    lines = ["| suite file | profile | machine | date | wall | entries | failed | skipped |", "|" + "---|" * 8]
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if "entries" not in data:
            continue
        failed = [e["benchmark"] for e in data["entries"] if "error" in e]
        skipped = [e["benchmark"] for e in data["entries"] if "skipped" in e]
        lines.append(f"| `{path.name}` | {data['profile']} | {data['machine']} | {data['date']} | "
                     f"{data['wall_s'] / 60:.1f} min | {len(data['entries'])} | {', '.join(failed) or '—'} | "
                     f"{', '.join(skipped) or '—'} |")
    return "\n".join(lines) + "\n"


def render(name: str, results: Path = RESULTS) -> str:
    if name == "suite":
        return suite_runs(results)
    runs = sources(results).get(name)
    if not runs:
        raise SystemExit(f"no rows of {name} under {results}; run benchmarks/suite.py --json {results}/suite-cpu.json "
                         f"or benchmarks/{name}.py --json {results}/{name}-cpu.json")
    return RENDER[name](runs)


def write(page: Path, results: Path = RESULTS) -> list[str]:
    """Rewrite every marked block of `page`; the names written."""
    text = page.read_text()
    names = [m["name"] for m in BLOCK.finditer(text)]
    page.write_text(BLOCK.sub(lambda m: m.group(1) + render(m["name"], results) + m.group(4), text))
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--write", type=Path, default=None, help="Rewrite the marked blocks of this page (else print).")
    a = p.parse_args()
    if a.write:
        print(f"wrote {', '.join(write(a.write, a.results))} into {a.write}")
        return
    for m in BLOCK.finditer(PAGE.read_text()):
        sys.stdout.write(f"## {m['name']}\n{render(m['name'], a.results)}\n")


if __name__ == "__main__":
    main()
