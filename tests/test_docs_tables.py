"""The docs' generated tables: docs/benchmarks.md's marked blocks are what scripts/bench_tables.py renders from the
benchmarks' JSON (CPU rows as ratios only), and scripts/results_tables.py's verdicts on hand-made grades (amplify is
compared with the baseline on its own, never counted as a white-box method)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_page_blocks_are_the_scripts_output():
    bench = _script("bench_tables")
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    blocks = {m["name"]: m["body"] for m in bench.BLOCK.finditer(page)}
    assert "amplify" in blocks
    for name, body in blocks.items():
        assert body == bench.render(name), f"docs/benchmarks.md's {name} block is stale: python scripts/bench_tables.py --write docs/benchmarks.md"


def test_cpu_rows_show_ratios_only(tmp_path):
    bench = _script("bench_tables")
    row = {"shape": "toy", "layers": 4, "vocab": 2560, "B": 16, "new": 48, "dtype": "float32",
           "tok_s": {"plain": 1234.0, "amplified": 1500.0}, "amplified_vs_plain": 1.2155,
           "sampler_vs_generate": 1.0, "weight_vs_organism": 0.5}
    for device, machine in (("cpu", "AMD EPYC, 2 cores"), ("cuda", "NVIDIA H100")):
        (tmp_path / f"amplify-{device}.json").write_text(json.dumps(
            {"benchmark": "amplify", "date": "2026-12-06", "machine": machine, "torch": "2.13", "command": "x",
             "rows": [{**row, "device": device}]}))
    cpu, gpu = [line for line in bench.render("amplify", tmp_path).splitlines() if line.startswith("| toy")]
    assert "AMD EPYC" in cpu and "1,234" not in cpu and "| — | — | **1.22** |" in cpu
    assert "NVIDIA H100" in gpu and "| 1,234 | 1,500 | **1.22** |" in gpu
    with pytest.raises(SystemExit, match="no rows of nothing"):
        bench.render("nothing", tmp_path)


def _grades(**by_method: dict[str, float]) -> list[dict]:
    return [{"method": m, "organism": o, "relative/precision_at_20": v} for m, per in by_method.items()
            for o, v in per.items()]


def test_verdicts_keep_amplify_apart_from_the_white_box_methods():
    results = _script("results_tables")
    rows = _grades(kl={"caps": 0.10, "roman_concrete": 0.60}, amplify={"caps": 0.90, "roman_concrete": 0.32},
                   blackbox={"caps": 0.70, "roman_concrete": 0.30})
    white = "\n".join(results.baseline_lines(rows))
    assert "| caps | kl | +0.10 | +0.70 | white-box loses to the baseline |" in white  # amplify's 0.90 not counted
    assert "| roman_concrete | kl | +0.60 | +0.30 | white-box beats the baseline |" in white
    amplified = "\n".join(results.amplify_lines(rows))
    assert "| caps | +0.90 | +0.70 | amplification reads more than sampling the organism |" in amplified
    assert "| roman_concrete | +0.32 | +0.30 | amplification ties sampling the organism |" in amplified
    assert "reads more than sampling the organism on 1 of 2 organisms (caps), ties on 1 (roman_concrete)" in amplified
