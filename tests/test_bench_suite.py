"""The benchmark suite cannot rot between GPU lends: its `tiny` profile runs every benchmark's code path here, each
row carries what the docs' tables read, the checks inside the rows hold (diff mining's counts equal the reference's,
the store-fed dictionary ends on the in-memory one's weights), and every profile's arguments parse."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("measured") / "suite-tiny.json"
    subprocess.run([sys.executable, str(BENCH / "suite.py"), "--profile", "tiny", "--device", "cpu", "--threads", "1",
                    "--json", str(out)], check=True, cwd=ROOT, timeout=600)
    return out


def test_the_tiny_profile_runs_every_benchmark_and_its_checks_hold(tiny):
    data = json.loads(tiny.read_text())
    assert data["profile"] == "tiny" and data["device"] == "cpu" and data["torch"] and data["machine"]
    entries = {e["benchmark"]: e for e in data["entries"]}
    assert set(entries) == {"extraction", "diffmining", "kl", "dictionary", "amplify"}
    assert not [e["error"] for e in data["entries"] if "error" in e]
    ext = entries["extraction"]["rows"][0]
    assert ext["tok_s"]["paired"] > 0 and ext["bytes_per_token"] > 0 and ext["paired_vs_half_truncated"] > 0
    dm = entries["diffmining"]["rows"][0]
    assert dm["exact"] and dm["check"]["topk_mismatches"] == 0 and dm["positions"] == 2 * 2 * 16
    kl = entries["kl"]["rows"][0]
    assert kl["compile"] == "off" and kl["max_diff"] == 0 and kl["ratio"] > 0
    sae = entries["dictionary"]["rows"][0]
    assert sae["max_weight_diff"] == 0 and sae["store_vs_memory"] > 0 and sae["accelerator"] == "cpu"
    amp = entries["amplify"]["rows"][0]
    assert amp["amplified_vs_plain"] > 0 and amp["new"] == 4


def test_the_docs_tables_render_from_the_suite(tiny):
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "scripts" / "bench_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    entries = {e["benchmark"] for e in json.loads(tiny.read_text())["entries"]}
    assert set(tables.RENDER) - entries == {"sweep"}  # a sweep has its benchmark of its own (minutes of servers)
    for name in entries:
        body = tables.render(name, tiny.parent)
        rows = [line for line in body.splitlines() if line.startswith("| toy")]
        assert len(rows) == 1, body
        assert "— | —" in rows[0]  # a CPU row shows no absolute tokens/s
        assert "--profile tiny" in body
    assert "| `suite-tiny.json` | tiny |" in tables.render("suite", tiny.parent)


def test_every_profile_parses_and_a_device_override_reaches_each_entry():
    sys.path.insert(0, str(BENCH))
    try:
        suite = importlib.import_module("suite")
        for profile in suite.PROFILES:
            for name, argv in suite.plan(profile, device="cpu"):
                args = importlib.import_module(name).parser().parse_args(argv)
                assert name == "dictionary" or args.device == "cpu"
        with pytest.raises(SystemExit, match="valid: gpu, cpu, tiny"):
            suite.plan("huge")
    finally:
        sys.path.remove(str(BENCH))
