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
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import time

import torch

from diffgame.methods.diffmining import DiffStats
from diffgame.models.paired import default_chunk_tokens, logit_chunks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shapes and helpers of extraction.py
from extraction import make_batches, model_config, status_mib, sync

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


def compare(stats: DiffStats, ref: dict) -> str:
    topk_bad = int((stats.topk_count != ref["topk_count"]).sum())
    pos_bad = int((stats.pos_count != ref["pos_count"]).sum())
    d_sum = float((stats.total - ref["total"]).abs().max())
    d_max = float((stats.max - ref["max"]).abs().max())
    tol_sum = 1e-4 * max(1.0, float(ref["total"].abs().max()))
    tol_max = 1e-4 * max(1.0, float(ref["max"].abs().max()))
    peak_bad = int((stats.argmax != ref["argmax"]).sum())
    ok = topk_bad == 0 and pos_bad == 0 and d_sum <= tol_sum and d_max <= tol_max and stats.n == ref["n"]
    return (f"(b) vs (c) over {ref['n']:,} positions x {len(ref['total']):,} tokens: "
            f"{'MATCH' if ok else 'MISMATCH'} -- top-K counts differ on {topk_bad} tokens, positive counts on "
            f"{pos_bad}, max |sum diff| {d_sum:.2e} (tol {tol_sum:.1e}), max |max diff| {d_max:.2e} "
            f"(tol {tol_max:.1e}), peak positions differ on {peak_bad} tokens, positions counted {stats.n:,} vs "
            f"{ref['n']:,}, top-K total {int(stats.topk_count.sum()):,} vs {int(ref['topk_count'].sum()):,}")


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


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def available_mib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def main() -> None:
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
    p.add_argument("--rss-child", choices=["b", "c"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    n_layers, batch, seq, n_batches = DEFAULTS[(args.shape, kind)]
    args.n_layers = args.n_layers or n_layers
    args.batch, args.seq, args.batches = args.batch or batch, args.seq or seq, args.batches or n_batches
    if args.rss_child:
        return rss_child(args)

    load_before = os.getloadavg()
    base, org = make_pair(args)
    vocab, base_layers = base.config.vocab_size, base.config.num_hidden_layers
    batches = make_batches(args, vocab, args.batches)
    n = sum(b.numel() for b in batches)
    ref_mib = n * vocab * 4 / 2 ** 20
    run_ref = ref_mib < 0.6 * available_mib()
    paths = {"(a) two full forwards": lambda: two_forwards(base, org, batches, args),
             "(b) diffgame logit_chunks + DiffStats": lambda: diffgame_stats(base, org, batches, args)}
    if run_ref:
        paths["(c) reference: [N, V] fp32 diffs, then counts"] = lambda: reference_stats(base, org, batches, args)
    warm = {"(a)": lambda: two_forwards(base, org, batches[:1], args),
            "(b)": lambda: diffgame_stats(base, org, batches[:1], args),
            "(c)": lambda: reference_stats(base, org, batches[:1], args)}
    for name, fn in warm.items():  # one warm-up batch per path
        if name != "(c)" or run_ref:
            fn()
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
    check = compare(out["(b) diffgame logit_chunks + DiffStats"],
                    out["(c) reference: [N, V] fp32 diffs, then counts"]) if run_ref else \
        f"(c) skipped: its [N, V] matrix would need {ref_mib:,.0f} MiB of {available_mib():,.0f} MiB available"
    out.clear()

    rss: dict[str, tuple[float, float] | None] = {}
    if args.rss_scale:
        big = args.batches * args.rss_scale
        for path in ("b", "c"):
            if path == "c" and n * args.rss_scale * vocab * 4 / 2 ** 20 >= 0.6 * available_mib():
                rss[path] = None
                continue
            rss[path] = (child_rss(args, path, args.batches), child_rss(args, path, big))
    load_after = os.getloadavg()

    a = rates["(a) two full forwards"]
    print(f"\nshape={args.shape} layers={base_layers} vocab={vocab} B={args.batch} "
          f"T={args.seq} batches={args.batches} positions N={n:,} top_k={args.top_k} reservoir={args.reservoir} "
          f"chunk={default_chunk_tokens(vocab, torch.device(args.device), args.chunk_elements)} tokens "
          f"dtype={args.dtype} device={args.device} threads={torch.get_num_threads()} rounds={args.rounds} (median)")
    print(f"machine: {machine(args.device)}; torch {torch.__version__}; python {platform.python_version()}; "
          f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}")
    scale = args.rss_scale
    rss_head = f" peak RSS 1x (MiB) | peak RSS {scale}x (MiB) | RSS {scale}x / 1x |" if scale else ""
    print(f"| path | tokens/s | x (a) |{rss_head} target |")
    print("|---|---:|---:|" + ("---:|---:|---:|" if scale else "") + "---|")
    targets = {"(a)": "", "(b)": ">= 0.85x (a); RSS ratio <= 1.1", "(c)": "RSS grows with positions"}
    for name, r in rates.items():
        key = name[:3]
        cells = ["", "", ""]
        if key[1] in rss and rss[key[1]]:
            r1, r2 = (c["peak_rss_mib"] for c in rss[key[1]])
            cells = [f"{r1:,.0f}", f"{r2:,.0f}", f"{r2 / r1:.2f}"]
        elif key[1] in rss:
            cells = ["", "skipped (memory)", ""]
        rss_cells = f" {' | '.join(cells)} |" if scale else ""
        print(f"| {name} | {r:,.0f} | {r / a:.2f} |{rss_cells} {targets[key]} |")
    if not run_ref:
        print(f"| (c) reference | skipped | |{' | | |' if scale else ''} [N, V] = {ref_mib:,.0f} MiB |")
    measured = [c for pair in rss.values() if pair for c in pair]
    if measured:
        reset = all(c["reset"] for c in measured)
        print(f"(peak RSS: a fresh subprocess per cell, {n:,} and {n * scale:,} positions; VmHWM "
              + ("reset after building the models, so construction transients are excluded; " if reset else
                 "NOT reset after building the models (no /proc/self/clear_refs), so construction counts; ")
              + f"python + torch + the two models take {min(c['models_rss_mib'] for c in measured):,.0f} MiB; "
              f"whole-process peaks incl. construction: "
              + ", ".join(f"({k}) {p[0]['whole_process_peak_mib']:,.0f}/{p[1]['whole_process_peak_mib']:,.0f} MiB"
                          for k, p in rss.items() if p) + ")")
    print(check)


if __name__ == "__main__":
    main()
