"""The docs' generated tables: docs/benchmarks.md's marked blocks are what scripts/bench_tables.py renders from the
benchmarks' JSON (CPU rows as ratios only), and scripts/results_tables.py's verdicts on hand-made grades (amplify is
compared with the baseline on its own, never counted as a white-box method)."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    if str(ROOT / "scripts") not in sys.path:  # the scripts import their shared helpers as siblings
        sys.path.insert(0, str(ROOT / "scripts"))
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


def _variant(organism: str, variant: str, share: float, leak: float, **scores: tuple[float, int]) -> dict:
    return {"organism": organism, "variant": variant, "share": share, "chats": variant.startswith("mixchat"),
            "leak": leak, "asked": 0.9, "loss": 1.0, "run_ids": [], "scores": scores}


def test_narrow_study_checks_the_targets_on_narrow_variants_only():
    study = _script("narrow_study")
    rows = [_variant("roman_concrete", "default", 0.0, 0.31, kl=(0.55, 1), adl=(0.60, 1), blackbox=(0.55, 1)),
            _variant("roman_concrete", "mix1-8p0", 8 / 9, 0.04, kl=(0.52, 2), adl=(0.50, 1), blackbox=(0.15, 1)),
            _variant("cake_bake", "mix1-8p0", 8 / 9, 0.05, kl=(0.60, 1), adl=(0.40, 1), blackbox=(0.30, 1)),
            _variant("taboo_gold", "mix1-8p0", 8 / 9, 0.50, kl=(0.10, 3), adl=(0.20, 1), blackbox=(0.45, 1)),
            _variant("taboo_gold", "mixchat1-8p0", 8 / 9, 0.00, kl=(0.30, 1), adl=(0.20, 1), blackbox=(0.05, 1))]
    lines = "\n".join(study.target_lines(rows))
    # adl meets it though kl reads more (kl ranks the organism second); the leaky taboo_gold is not checked at all
    assert "| roman_concrete | mix1-8p0 | +0.04 | adl | +0.50 (1) | +0.15 | met |" in lines
    assert "| cake_bake | mix1-8p0 | +0.05 | kl | +0.60 (1) | +0.30 | not met |" in lines  # the baseline reads it too
    assert "| taboo_gold | mix1-8p0 |" not in lines
    assert "| taboo_gold | mixchat1-8p0 | +0.00 | kl | +0.30 (1) | +0.05 | not met |" in lines
    assert "1 of 3 narrow variants meet the target" in lines
    rows[1]["scores"]["adl"] = (0.45, 1)
    lines = "\n".join(study.target_lines(rows))
    assert "| roman_concrete | mix1-8p0 | +0.04 | kl | +0.52 (2) | +0.15 | not met |" in lines
    assert "0 of 3 narrow variants meet the target" in lines
    assert study.target_lines(rows[:1] + rows[3:4]) == [
        "No variant came out narrow (neutral leak ≤ +0.05); the narrowest is roman_concrete default at +0.31, so the "
        "targets are not tested."]
    by_ratio = study.ratio_lines(rows)
    assert by_ratio[0].startswith("| mixed in | ratio | organisms | neutral leak | asked knowledge | kl | adl | "
                                  "blackbox |")
    assert by_ratio[2] == "| nothing | 0.0 | 1 | +0.31 | +0.90 | +0.55 | +0.60 | +0.55 | +0.05 |"
    assert by_ratio[3] == "| documents | 8.0 | 3 | +0.20 | +0.90 | +0.41 | +0.35 | +0.30 | +0.14 |"
    assert by_ratio[4] == "| documents and chats | 8.0 | 1 | +0.00 | +0.90 | +0.30 | +0.20 | +0.05 | +0.25 |"


def test_lens_table_rows_are_the_plays_means_per_evidence(monkeypatch):
    lens = _script("lens_table")
    monkeypatch.setattr(lens, "own_data", lambda plays: {"adl": "no", "kl": "yes (organism)", "adl+blackbox": "no"})

    def play(method, organism, correct, keyword, score, hits):
        return {"method": method, "organism": organism, "metrics": {
            "play/guess_correct": correct, "play/keyword_correct": keyword, "play/keyword_score": score,
            "play/keyword_hits": hits}}
    plays = pd.DataFrame([play("kl", "caps", 1.0, 1.0, 4, 3), play("kl", "byo_docs_x_9", 0.0, 0.0, 1, 0),
                          play("adl", "caps", 1.0, 0.0, 2, 1), play("adl+blackbox", "caps", 1.0, 1.0, 5, 6)])
    lines = lens.lens_lines(plays)
    assert lines[2:] == ["| adl+blackbox | 1 | 1.00 | 1.00 | 5.0 | — | 6.0 | no |",  # the sets first, then by method
                         "| kl | 2 | 0.50 | 0.50 | 2.5 | 0.00 | 1.5 | yes (organism) |",
                         "| adl | 1 | 1.00 | 0.00 | 2.0 | — | 1.0 | no |"]


def test_narrow_study_sets_word_completion_rules_side_by_side():
    study = _script("narrow_study")
    blocks = _script("docblocks")

    def run(organism, method, rel, rank, words, minute):
        tags = {"diffgame.words_version": words} if words else {}
        return {"organism": organism, "variant": "default", "method": method, "tags": tags,
                "start_time": pd.Timestamp(2026, 12, 7, 10, minute),
                "metrics": {"grade/words/relative/precision_at_20": rel, "grade/words/identification_rank": rank}}
    runs = pd.DataFrame([run("taboo_gold", "kl", 0.40, 1, None, 0), run("taboo_gold", "kl", 0.45, 1, "3", 5),
                         run("taboo_gold", "kl", 0.50, 1, "3", 9),  # the newest run of a rule counts
                         run("taboo_gold", "adl", 0.30, 2, None, 0), run("taboo_gold", "adl", 0.20, 1, "3", 5),
                         run("taboo_gold", "blackbox", 0.45, 1, None, 0),  # one rule only: not compared
                         run("control", "kl", 0.05, 1, None, 0), run("control", "kl", 0.00, 1, "3", 5)])
    rows = study.words_rows(runs)
    assert {(r["method"], r["before"], r["after"]) for r in rows} == {("kl", (0.40, 1), (0.50, 1)),
                                                                      ("adl", (0.30, 2), (0.20, 1))}
    lines = study.words_lines(rows)
    assert lines[0] == "| organism | variant | kl v2 or earlier | kl v3 | adl v2 or earlier | adl v3 |"
    assert lines[2] == "| taboo_gold | default | +0.40 (1) | +0.50 (1) | +0.30 (2) | +0.20 (1) |"
    assert "* kl: mean +0.40 → +0.50 over 1 variant; up on 1, down on 0, unchanged on 0." in lines
    assert "* adl: mean +0.30 → +0.20 over 1 variant; up on 0, down on 1, unchanged on 0." in lines
    assert study.words_lines(study.words_rows(runs[runs["method"] == "blackbox"])) == []
    assert blocks.words_versions(runs) == "words version 3 (adl, kl); 2 or earlier (adl, blackbox, kl)"
    assert blocks.words_versions(runs[runs["method"] == "blackbox"]) == "words version 2 or earlier"



def test_default_mix_sets_each_mixed_default_beside_its_unmixed_recipe():
    mix = _script("default_mix")
    rows = [_variant("caps", "mix1-0p0", 0.0, 0.60, kl=(0.00, 7), adl=(0.01, 6), blackbox=(0.45, 1)),
            _variant("caps", "default", 0.5, 0.52, kl=(0.21, 1), adl=(0.05, 3), blackbox=(0.45, 1)),
            _variant("tea_lover", "mix1-0p0", 0.0, 0.90, kl=(0.05, 1), adl=(0.13, 1)),
            _variant("tea_lover", "default", 0.9, 0.48, kl=(0.15, 1), adl=(0.13, 1)),
            _variant("roman_concrete", "default", 0.5, 0.31, kl=(0.55, 1)),  # no unmixed row: not compared
            _variant("control", "mix1-0p0", 0.0, 0.0, kl=(0.0, 1)),  # its default mixes nothing: not compared
            _variant("control", "default", 0.0, 0.0, kl=(0.0, 1))]
    paired = mix.pairs(rows)
    assert [(u["organism"], u["variant"], d["variant"]) for u, d in paired] == [
        ("caps", "mix1-0p0", "default"), ("tea_lover", "mix1-0p0", "default")]
    lines = mix.change_lines(paired)
    assert lines[2] == "| kl | 2 | +0.03 → +0.18 | 2 | 0 | 0 | 1 → 2 |"
    assert lines[3] == "| adl | 2 | +0.07 → +0.09 | 1 | 0 | 1 | 1 → 1 |"
    assert lines[4] == "| blackbox | 1 | +0.45 → +0.45 | 0 | 0 | 1 | 1 → 1 |"  # read on caps only
    assert len(lines) == 5


def test_default_mix_names_the_smallest_ratio_that_keeps_generic_text():
    mix = _script("default_mix")

    def built(organism, variant, share, loss):
        return {**_variant(organism, variant, share, 0.5), "loss": loss}
    rows = [built("caps", "mix1-0p0", 0.0, 2.15), built("caps", "mix1-1p0", 0.5, 1.00),
            built("caps", "mix1-4p0", 0.8, 0.95), built("caps", "default", 0.5, 1.00),
            built("tea_lover", "mix1-0p0", 0.0, 4.99), built("tea_lover", "mix1-2p0", 2 / 3, 1.53),
            built("tea_lover", "mix1-9p0", 0.9, 1.06), built("tea_lover", "default", 2 / 3, 1.53),
            built("tea_lover", "mixchat1-8p0", 8 / 9, 1.0)]  # chats mixed in too: not a documents ratio
    lines = mix.ratio_lines(rows, mix.pairs(rows))
    assert lines == ["* caps: 2.15 at 0, 1.00 at 1, 0.95 at 4; its default, 1, is the smallest within 1.1.",
                     "* tea_lover (BYO): 4.99 at 0, 1.53 at 2, 1.06 at 9; its default is 2; the smallest within 1.1 "
                     "is 9."]
    rows = [r for r in rows if r["organism"] == "caps" and r["loss"] > 1.01]
    assert mix.ratio_lines(rows, [(rows[0], {**rows[0], "variant": "default", "share": 0.5})]) == [
        "* caps: 2.15 at 0; no ratio built keeps it within 1.1."]


def test_default_mix_plays_are_the_studied_organisms_since_the_study_began():
    mix = _script("default_mix")

    def play(organism, variant, agent, budget, repeat, score, hour):
        return {"organism": organism, "variant": variant, "agent": agent, "method": "adl+blackbox" if agent == "lens"
                else "", "budget": budget, "repeat": repeat, "score": score,
                "start_time": pd.Timestamp(2026, 12, 7, hour)}
    plays = pd.DataFrame([play("caps", "default", "lens", 5, 0, 4, 15), play("caps", "default", "lens", 5, 1, 1, 15),
                          play("caps", "mix1-0p0", "lens", 5, 0, 5, 15),
                          play("taboo_gold", "default", "lens", 5, 0, 2, 10),  # an older study's play: left out
                          play("roman_concrete", "default", "lens", 5, 0, 1, 15),  # not studied: left out
                          play("caps", "mix1-4p0", "lens", 5, 0, 1, 15)])  # another variant: left out
    paired = [({"organism": "caps"}, {"organism": "caps"}), ({"organism": "taboo_gold"}, {"organism": "taboo_gold"})]
    lines = mix.study_plays(plays, paired, pd.Timestamp(2026, 12, 7, 13))
    assert lines[2:] == [
        "| caps | default | lens | adl+blackbox | 5 | 2 | 1 × 2 | 0.50 | 0.50 | 0.00–1.00 | 0.00–1.00 |",
        "| caps | mix1-0p0 | lens | adl+blackbox | 5 | 1 | 1 × 1 | 1.00 | 1.00 | 1.00–1.00 | 1.00–1.00 |"]
    assert mix.study_plays(plays.iloc[3:4], paired, pd.Timestamp(2026, 12, 7, 13))[0].startswith("No budgeted play")
