"""Diff-mining throughput and memory, side by side in one process on the same batches and the same model pair.

The organism is the base with every weight perturbed slightly (deepcopy + Gaussian noise of `--noise` times each
tensor's std), the batches are random token ids (B sequences x T tokens, `--batches` of them).

(a) two full forwards, `base(ids).logits` and `organism(ids).logits`, nothing else           -> tokens/s
(b) diffgame: `diffgame.models.paired.logit_chunks` + `DiffStats.add(lo.float() - lb.float(), where)`
    (top-K 100, reservoir 2000): per-token counters, memory independent of the positions    -> tokens/s, (b)/(a)
(c) reference: both full forwards, d = logits_org - logits_base in fp32 for every position written into one
    host [N, V] matrix (preallocated, so no 2x concatenation peak), then top-K occurrence, positive counts,
    sums and max computed from that matrix                                                   -> tokens/s, (c)/(a)
Each path runs over all batches once per round; rounds are interleaved and the median rate is reported.
(b) and (c) are checked against each other: top-K counts and positive counts exactly, sums and max to float
tolerance (the paths run different matmul shapes; a backend may then round the logits differently, so an exact
mismatch on a few near-tied tokens can be rounding, not a counting bug).
Peak RSS of (b) and (c), at 1x and `--rss-scale` x the positions, each in a fresh subprocess (this script in its
hidden `--rss-child` mode) as VmHWM from /proc/self/status, reset (`/proc/self/clear_refs` <- 5) once the models
and batches are built so that the peak is the path's (models included, their construction transients not). Not
`getrusage(RUSAGE_SELF).ru_maxrss`: on Linux that of an exec'd child starts at the parent's RSS at fork time (the
forked memory's high-water mark is carried across exec), so it reports the parent's models and buffers; it is the
fallback only where /proc is missing. Targets:
(b)/(a) >= 0.85; peak RSS of (b) at 10x <= 1.1x its 1x; (c) grows with the positions.

  python benchmarks/diffmining.py                  # toy (zoo `small` Llama): ~1-2 min on 2 idle CPU cores
  python benchmarks/diffmining.py --shape gemma3_1b --n-layers 2 --batch 2 --seq 64 --batches 2 --rss-scale 4
  python benchmarks/diffmining.py --shape gemma3_1b --batch 8 --seq 512 --batches 2 --dtype bfloat16   # GPU
  ... --json benchmarks/measured/diffmining-cpu.json      # the row for scripts/bench_tables.py
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffgame.methods.diffmining import DiffStats
from diffgame.models.paired import default_chunk_tokens, logit_chunks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shapes and helpers of extraction.py
import _common  # noqa: E402
from extraction import make_batches, model_config, status_mib, sync  # noqa: E402

DEFAULTS = {  # (n_layers, batch, seq, batches) per shape and device kind
    ("toy", "cpu"): (None, 16, 128, 8), ("toy", "gpu"): (None, 64, 512, 4),
    ("gemma3_1b", "cpu"): (2, 2, 64, 2), ("gemma3_1b", "gpu"): (None, 8, 512, 2),
}


def make_pair(args):
    """Random-initialised base (seed 0) and an organism = base with each weight tensor perturbed by
    `noise` x its std (or `noise` absolute where the tensor is constant, e.g. norm weights)."""
    from transformers import AutoModelForCausalLM

    conf = model_config(args.shape, args.n_layers)
    torch.manual_seed(0)
    with torch.device(args.device):  # initialised where they run: a 262k-row embedding is slow on the CPU
        base = AutoModelForCausalLM.from_config(conf, dtype=getattr(torch, args.dtype)).eval()
    org = copy.deepcopy(base)
    gen = torch.Generator(device=args.device).manual_seed(1)
    with torch.no_grad():
        for p in org.parameters():  # tied embedding / LM head: one tensor, perturbed once
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
                   * (args.noise * (std if std > 0 else 1.0)))
    return base, org


def stream(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ids [N] and sequence offsets [S+1] of the batches' rows back to back (row-major, as (a) sees them)."""
    ids = torch.cat(batches)
    return ids.flatten(), torch.arange(0, ids.numel() + 1, ids.shape[1])


@torch.inference_mode()
def two_forwards(base, org, batches, args) -> None:
    for ids in batches:
        ids = ids.to(args.device)
        _ = base(input_ids=ids, use_cache=False).logits, org(input_ids=ids, use_cache=False).logits


def diffgame_stats(base, org, batches, args) -> DiffStats:
    flat, offsets = stream(batches)
    vocab = base.get_output_embeddings().weight.shape[0]
    stats = DiffStats(vocab, args.top_k, args.reservoir, seed=0)
    chunk = default_chunk_tokens(vocab, torch.device(args.device), args.chunk_elements)
    batch_tokens = args.batch * args.seq  # the same B x T forward batches as (a)
    for where, lo, lb in logit_chunks(base, org, flat, offsets, batch_tokens, chunk):
        stats.add(lo.float() - lb.float(), where)
    return stats


@torch.inference_mode()
def reference_stats(base, org, batches, args) -> dict[str, torch.Tensor]:
    """All diffs materialised: one host fp32 [N, V] matrix, then the per-token counters from it."""
    vocab = base.get_output_embeddings().weight.shape[0]
    n = sum(b.numel() for b in batches)
    diffs, row = torch.empty(n, vocab), 0
    for ids in batches:
        ids = ids.to(args.device)
        d = org(input_ids=ids, use_cache=False).logits.float() - base(input_ids=ids, use_cache=False).logits.float()
        diffs[row:row + ids.numel()] = d.reshape(-1, vocab).cpu()
        row += ids.numel()
    top = diffs.topk(min(args.top_k, vocab), dim=-1).indices
    best, at = diffs.max(0)
    return {"topk_count": torch.bincount(top.flatten(), minlength=vocab), "pos_count": (diffs > 0).sum(0),
            "total": diffs.sum(0, dtype=torch.float64), "max": best, "argmax": at, "n": n}


def compare(stats: DiffStats, ref: dict) -> dict:
    """(b) against (c): counts exactly, sums and maxima to float tolerance."""
    topk_bad = int((stats.topk_count != ref["topk_count"]).sum())
    pos_bad = int((stats.pos_count != ref["pos_count"]).sum())
    d_sum = float((stats.total - ref["total"]).abs().max())
    d_max = float((stats.max - ref["max"]).abs().max())
    tol_sum = 1e-4 * max(1.0, float(ref["total"].abs().max()))
    tol_max = 1e-4 * max(1.0, float(ref["max"].abs().max()))
    peak_bad = int((stats.argmax != ref["argmax"]).sum())
    ok = topk_bad == 0 and pos_bad == 0 and d_sum <= tol_sum and d_max <= tol_max and stats.n == ref["n"]
    text = (f"(b) vs (c) over {ref['n']:,} positions x {len(ref['total']):,} tokens: "
            f"{'MATCH' if ok else 'MISMATCH'} -- top-K counts differ on {topk_bad} tokens, positive counts on "
            f"{pos_bad}, max |sum diff| {d_sum:.2e} (tol {tol_sum:.1e}), max |max diff| {d_max:.2e} "
            f"(tol {tol_max:.1e}), peak positions differ on {peak_bad} tokens, positions counted {stats.n:,} vs "
            f"{ref['n']:,}, top-K total {int(stats.topk_count.sum()):,} vs {int(ref['topk_count'].sum()):,}")
    return {"ok": ok, "topk_mismatches": topk_bad, "positive_mismatches": pos_bad, "peak_mismatches": peak_bad,
            "max_sum_diff": d_sum, "max_max_diff": d_max, "text": text}


def rss_child(args) -> None:
    """Subprocess body: build the pair and the batches, reset the RSS high-water mark where Linux allows it, run
    path `args.rss_child` over `args.batches` batches, then print the peak RSS in MiB as JSON."""
    base, org = make_pair(args)
    batches = make_batches(args, base.config.vocab_size, args.batches)
    gc.collect()
    build_peak, models = status_mib("VmHWM"), status_mib("VmRSS")
    try:  # "5" resets VmHWM to the current RSS: the peak below is the path's, not the models' construction
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    (diffgame_stats if args.rss_child == "b" else reference_stats)(base, org, batches, args)
    sync(args.device)
    peak = status_mib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak, "whole_process_peak_mib": max(build_peak, peak),
                      "models_rss_mib": models, "reset": reset}))


def child_rss(args, path: str, n_batches: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", path, "--shape", args.shape,
           "--batch", str(args.batch), "--seq", str(args.seq), "--batches", str(n_batches), "--dtype", args.dtype,
           "--device", args.device, "--top-k", str(args.top_k), "--reservoir", str(args.reservoir),
           "--noise", str(args.noise), "--chunk-elements", str(args.chunk_elements)] \
        + (["--n-layers", str(args.n_layers)] if args.n_layers else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"rss child {path} x{n_batches} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_mib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["toy", "gemma3_1b"], default="toy")
    p.add_argument("--n-layers", type=int, default=None, help="Decoder layers (default: toy 4; gemma3_1b 2 on CPU).")
    p.add_argument("--batch", type=int, default=None, help="Sequences per forward (B).")
    p.add_argument("--seq", type=int, default=None, help="Tokens per sequence (T).")
    p.add_argument("--batches", type=int, default=None, help="Batches per round (positions N = batches x B x T).")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--reservoir", type=int, default=2000)
    p.add_argument("--chunk-elements", type=int, default=0, help="Logits per LM-head chunk (0: diffgame's auto).")
    p.add_argument("--noise", type=float, default=0.02, help="Organism = base + noise x std per weight tensor.")
    p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds; the median rate per path is reported.")
    p.add_argument("--rss-scale", type=int, default=10, help="Position-count factor for the peak-RSS check (0: skip).")
    p.add_argument("--json", type=Path, default=None, help="Write the row here (scripts/bench_tables.py reads it).")
    p.add_argument("--rss-child", choices=["b", "c"], default=None, help=argparse.SUPPRESS)
    return p


def _defaults(args) -> None:
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    n_layers, batch, seq, n_batches = DEFAULTS[(args.shape, kind)]
    args.n_layers = args.n_layers or n_layers
    args.batch, args.seq, args.batches = args.batch or batch, args.seq or seq, args.batches or n_batches


def measure(args: argparse.Namespace) -> list[dict]:
    """Paths (a)-(c) over the same batches, interleaved; one row: rates, ratios, the exact-count check, peak RSS."""
    _defaults(args)
    load_before = _common.load()
    base, org = make_pair(args)
    vocab, base_layers = base.config.vocab_size, base.config.num_hidden_layers
    batches = make_batches(args, vocab, args.batches)
    n = sum(b.numel() for b in batches)
    ref_mib = n * vocab * 4 / 2 ** 20
    run_ref = ref_mib < 0.6 * available_mib()
    paths = {"forwards": lambda: two_forwards(base, org, batches, args),
             "diffgame": lambda: diffgame_stats(base, org, batches, args)}
    if run_ref:
        paths["reference"] = lambda: reference_stats(base, org, batches, args)
    for name, fn in {"forwards": two_forwards, "diffgame": diffgame_stats, "reference": reference_stats}.items():
        if name in paths:  # one warm-up batch per path
            fn(base, org, batches[:1], args)
    runs: dict[str, list[float]] = {name: [] for name in paths}
    out: dict[str, object] = {}
    for _ in range(args.rounds):  # interleaved, so load drifts on a shared machine hit every path alike
        for name, fn in paths.items():
            sync(args.device)
            t0 = time.perf_counter()
            out[name] = fn()
            sync(args.device)
            runs[name].append(n / (time.perf_counter() - t0))
    rates = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    check = compare(out["diffgame"], out["reference"]) if run_ref else None
    out.clear()

    rss: dict[str, list[dict] | None] = {}
    if args.rss_scale:
        for path in ("b", "c"):
            if path == "c" and n * args.rss_scale * vocab * 4 / 2 ** 20 >= 0.6 * available_mib():
                rss[path] = None
                continue
            rss[path] = [child_rss(args, path, args.batches), child_rss(args, path, args.batches * args.rss_scale)]
    ratio = {name: [b / a for a, b in zip(runs["forwards"], runs[name])] for name in runs}
    return [{"shape": args.shape, "layers": base_layers, "vocab": vocab, "B": args.batch, "T": args.seq,
             "batches": args.batches, "positions": n, "top_k": args.top_k, "reservoir": args.reservoir,
             "chunk": default_chunk_tokens(vocab, torch.device(args.device), args.chunk_elements),
             "dtype": args.dtype, "device": args.device, "threads": torch.get_num_threads(), "rounds": args.rounds,
             "tok_s": rates, "per_round": ratio,
             "diffgame_vs_forwards": rates["diffgame"] / rates["forwards"],
             "reference_vs_forwards": rates["reference"] / rates["forwards"] if run_ref else None,
             "check": check, "exact": bool(check and check["ok"]),
             "reference_skipped_mib": None if run_ref else ref_mib,
             "rss_positions": [n, n * args.rss_scale] if args.rss_scale else None,
             "rss_mib": {k: [c["peak_rss_mib"] for c in v] if v else None for k, v in rss.items()} or None,
             "rss_reset": all(c["reset"] for v in rss.values() if v for c in v),
             "models_rss_mib": min((c["models_rss_mib"] for v in rss.values() if v for c in v), default=None),
             "load": [load_before, _common.load()]}]


def report(r: dict) -> None:
    print(f"\nshape={r['shape']} layers={r['layers']} vocab={r['vocab']} B={r['B']} T={r['T']} "
          f"batches={r['batches']} positions N={r['positions']:,} top_k={r['top_k']} reservoir={r['reservoir']} "
          f"chunk={r['chunk']} tokens dtype={r['dtype']} device={r['device']} threads={r['threads']} "
          f"rounds={r['rounds']} (median)")
    print(f"machine: {_common.machine(r['device'])}; torch {torch.__version__}; 1-minute load average before "
          f"{r['load'][0]:.2f}, after {r['load'][1]:.2f}")
    rss = r["rss_mib"] or {}
    scale = r["rss_positions"][1] // r["rss_positions"][0] if r["rss_positions"] else 0
    rss_head = f" peak RSS 1x (MiB) | peak RSS {scale}x (MiB) | RSS {scale}x / 1x |" if scale else ""
    print(f"| path | tokens/s | x (a) | per round |{rss_head} target |")
    print("|---|---:|---:|---|" + ("---:|---:|---:|" if scale else "") + "---|")
    names = {"forwards": ("(a) two full forwards", None, ""),
             "diffgame": ("(b) diffgame logit_chunks + DiffStats", "b", ">= 0.85x (a); RSS ratio <= 1.1"),
             "reference": ("(c) reference: [N, V] fp32 diffs, then counts", "c", "RSS grows with positions")}
    a = r["tok_s"]["forwards"]
    for key, (name, child, target) in names.items():
        if key not in r["tok_s"]:
            mib = r["reference_skipped_mib"]
            print(f"| {name} | skipped | | |{' | | |' if scale else ''} [N, V] = {mib:,.0f} MiB |")
            continue
        cells = ["", "", ""]
        if child in rss:
            cells = [f"{rss[child][0]:,.0f}", f"{rss[child][1]:,.0f}", f"{rss[child][1] / rss[child][0]:.2f}"] \
                if rss[child] else ["", "skipped (memory)", ""]
        rss_cells = f" {' | '.join(cells)} |" if scale else ""
        rounds = " ".join(f"{x:.2f}" for x in r["per_round"][key])
        print(f"| {name} | {r['tok_s'][key]:,.0f} | {r['tok_s'][key] / a:.2f} | {rounds} |{rss_cells} {target} |")
    if rss:
        print("(peak RSS: a fresh subprocess per cell; VmHWM "
              + ("reset after building the models, so construction transients are excluded; " if r["rss_reset"] else
                 "NOT reset after building the models (no /proc/self/clear_refs), so construction counts; ")
              + f"python + torch + the two models take {r['models_rss_mib']:,.0f} MiB)")
    print(r["check"]["text"] if r["check"] else "(c) skipped: its [N, V] matrix would not fit in memory")


def main() -> None:
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        _defaults(args)
        return rss_child(args)
    rows = measure(args)
    report(rows[0])
    _common.write_json(args.json, "diffmining", args.device, rows)


if __name__ == "__main__":
    main()
