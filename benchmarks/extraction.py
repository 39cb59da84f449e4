"""Extraction throughput, side by side in one process on the same batches and the same random-init model pair.

(a) bare full forward (LM head included)      (b) bare forward truncated after the deepest requested layer
(c) naive: output_hidden_states, then .cpu()   (d) diffgame: paired base+organism extraction writing a store
(e) the disk's sequential write rate: fresh files of the shard size, 8 MiB writes, each fsynced
Targets (issues 4, 18): d / (b/2) >= 0.9 and d / min(b/2, e / bytes per paired token) >= 0.9; (d) well above
(c)/2; peak RSS of (d) flat when the token count grows 10x (each measured in a fresh subprocess).
`--synthetic-gbps X` instead feeds bf16 batches of the shape at X GB/s (0: as fast as it can) through the same
ShardWriter, without models, and reports the input rate the writer sustains (issue 18: >= min(1.6 GB/s, e)).
`--json PATH` also writes the model mode's row (rates, ratios, peak RSS, load) in `_common`'s envelope;
`measure(parser().parse_args([...]))` returns that row in-process (as `benchmarks/suite.py` does).

  python benchmarks/extraction.py --shape toy
  python benchmarks/extraction.py --shape gemma3_1b --n-layers 6 --batch 2 --seq 64 --batches 4   # CPU
  python benchmarks/extraction.py --shape gemma3_1b --batch 16 --seq 1024 --dtype bfloat16        # GPU
  python benchmarks/extraction.py --shape gemma3_1b --batch 16 --seq 1024 --synthetic-gbps 1.6    # writer alone
  python benchmarks/extraction.py --shape toy --json benchmarks/measured/extraction-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SCRIPT = os.path.abspath(__file__)  # what the RSS children run, whatever the caller's working directory


def model_config(shape: str, n_layers: int | None):
    from transformers import Gemma3TextConfig, LlamaConfig

    if shape == "toy":  # the zoo's `small` size
        return LlamaConfig(vocab_size=2560, hidden_size=128, intermediate_size=384, num_hidden_layers=n_layers or 4,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    return Gemma3TextConfig(vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                            num_hidden_layers=n_layers or 26, num_attention_heads=4, num_key_value_heads=1,
                            head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                            max_position_embeddings=32768, attn_implementation="sdpa")


def make_models(args) -> tuple[nn.Module, nn.Module]:
    from transformers import AutoModelForCausalLM

    conf = model_config(args.shape, args.n_layers)
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.device(args.device):  # initialised where they run: a 262k-row embedding is slow on the CPU
            out.append(AutoModelForCausalLM.from_config(conf, dtype=getattr(torch, args.dtype)).eval())
    return out[0], out[1]


def make_batches(args, vocab: int, n_batches: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (args.batch, args.seq), generator=g) for _ in range(n_batches)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def rate(fn, batches, device: str) -> float:
    """Tokens per second of `fn(ids)` over `batches` after one warm-up batch."""
    fn(batches[0].to(device))
    sync(device)
    t0 = time.perf_counter()
    for ids in batches:
        fn(ids.to(device, non_blocking=True))
    sync(device)
    return sum(b.numel() for b in batches) / (time.perf_counter() - t0)


def full_forward(model):
    return lambda ids: model(input_ids=ids, use_cache=False)


def truncated_forward(model, deepest: int):
    from diffgame.models.loading import _core

    body = _core(model)

    def run(ids):
        kept = body.layers
        body.layers = kept[:deepest + 1]
        try:
            body(input_ids=ids, use_cache=False)
        finally:
            body.layers = kept

    return run


def naive(model, layers: list[int]):
    def run(ids):
        hs = model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
        return [hs[i + 1].cpu() for i in layers]

    return run


def paired_store(base, organism, batches, layers, args, root: Path, shard_tokens: int | None = None) -> float:
    """diffgame's extraction (Lightning predict loop + background shard writer) into a store at `root`."""
    from omegaconf import OmegaConf

    from diffgame.data.sequences import TokenizedSequence
    from diffgame.preprocess.shards import plan_shards
    from diffgame.preprocess.stage import SHARD_BYTES, _extract
    from diffgame.records.plan import Plan
    from diffgame.store import PARTS, StoreWriter

    seqs = {"bench": [TokenizedSequence("bench", i, row.tolist(), [0] * row.numel())
                      for i, row in enumerate(torch.cat(batches))]}
    d_model = base.config.hidden_size
    plan = {"layers": layers, "d_model": d_model, "dtype": "bfloat16", "command": "benchmark",
            "shards": plan_shards(seqs, args.batch, shard_tokens or SHARD_BYTES // (d_model * 2))}
    StoreWriter(root).write_plan(plan)
    cfg = OmegaConf.create({"model": {"device_map": None}, "preprocessing": {
        "dtype": "bfloat16", "accelerator": "gpu" if args.device.startswith("cuda") else "cpu", "devices": 1,
        "strategy": "auto", "num_nodes": 1}, "organism": {"name": "bench"}, "dataset": {"name": "bench"},
        "overrides": []})  # Plan.command() lists the user's overrides: none here
    cfg.model.name, cfg.preprocessing.layers = "bench", layers
    resolved = Plan(cfg, pair=None, tokenizer=SimpleNamespace(pad_token_id=0), n_layers=max(layers) + 1,
                    d_model=d_model, layers=layers, store_fingerprint="bench", methods={}, diff_fingerprints={})
    sync(args.device)
    t0 = time.perf_counter()
    _extract(resolved, plan, seqs, root, {"base": base, "organism": organism}, list(PARTS), None)
    sync(args.device)
    seconds = time.perf_counter() - t0
    StoreWriter(root).finalize(plan, {})
    return sum(b.numel() for b in batches) / seconds


def store_bytes(root: Path) -> int:
    """Bytes of all files a finished store lists (shards of both models and the token stream)."""
    manifest = json.loads((root / "manifest.json").read_text())
    return sum(f["bytes"] for d in manifest["datasets"].values() for s in d["shards"] for f in s["files"].values())


def disk_rate(folder: Path, file_bytes: int, n_files: int) -> float:
    """(e) bytes/s writing `n_files` fresh files of `file_bytes` each in 8 MiB sequential writes, each file fsynced:
    the device's rate, not the page cache's (which here swings 0.4-5 GB/s with the VM's first touch of its memory).
    One untimed file goes first; the files are deleted afterwards."""
    block = memoryview(os.urandom(8 << 20))
    folder.mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        with open(folder / f"f{i}", "wb", buffering=0) as f:
            left = file_bytes
            while left:
                left -= f.write(block[:min(left, len(block))])
            os.fsync(f.fileno())

    write(n_files)
    t0 = time.perf_counter()
    for i in range(n_files):
        write(i)
    seconds = time.perf_counter() - t0
    for i in range(n_files + 1):
        (folder / f"f{i}").unlink()
    return n_files * file_bytes / seconds


def synthetic(args, d_model: int, n_layers: int, gbps: float, total_bytes: int, root: Path
              ) -> tuple[float, float, float]:
    """Feed bf16 batches (B x T tokens, both roles, `n_layers` layers) at `gbps` GB/s (0: unthrottled) through the
    ShardWriter into a store at `root`, as the predict loop would; returns (input bytes/s sustained until every
    file is written, user and system CPU seconds per input GB). A few pre-made tensors are reused, so the producer
    costs little."""
    from diffgame.data.sequences import TokenizedSequence
    from diffgame.preprocess.module import PlannedBatches
    from diffgame.preprocess.shards import plan_shards
    from diffgame.preprocess.stage import SHARD_BYTES
    from diffgame.preprocess.writer import PendingParts, ShardWriter
    from diffgame.store import PARTS, StoreWriter

    n = args.batch * args.seq
    batch_bytes = 2 * n_layers * n * d_model * 2
    n_batches = max(1, round(total_bytes / batch_bytes))
    g = torch.Generator().manual_seed(0)
    seqs = {"synthetic": [TokenizedSequence("synthetic", i, torch.randint(3, 1000, (args.seq,), generator=g).tolist(),
                                            [0] * args.seq) for i in range(n_batches * args.batch)]}
    plan = {"layers": list(range(n_layers)), "d_model": d_model, "dtype": "bfloat16", "command": "benchmark",
            "shards": plan_shards(seqs, args.batch, SHARD_BYTES // (d_model * 2))}
    StoreWriter(root).write_plan(plan)
    pool = [torch.randn(n, d_model, generator=g).to(torch.bfloat16) for _ in range(4)]
    pending = PendingParts(root, list(PARTS))
    writer = ShardWriter(root, pending, command="benchmark")
    writer.on_predict_start(None, None)
    t0, sent, cpu0 = time.perf_counter(), 0, resource.getrusage(resource.RUSAGE_SELF)
    for i, batch in enumerate(PlannedBatches(plan, seqs, 0, pending)):
        if gbps:  # batch i is ready at (i + 1) intervals, as if a model took that long to make it
            time.sleep(max(0.0, t0 + (sent + batch_bytes) / (gbps * 1e9) - time.perf_counter()))
        acts = {(role, layer): pool[(i + k) % len(pool)]
                for k, (role, layer) in enumerate((r, la) for r in ("base", "organism") for la in range(n_layers))}
        writer.write_on_batch_end(None, None, {"meta": batch["meta"].meta, "acts": acts, "event": None, "held": [],
                                               "pool": None}, None, None, i)
        sent += batch_bytes
    writer.close()
    seconds, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    StoreWriter(root).finalize(plan, {})
    gb = sent / 1e9
    return sent / seconds, (cpu1.ru_utime - cpu0.ru_utime) / gb, (cpu1.ru_stime - cpu0.ru_stime) / gb


def layers_of(model, fractions: list[float]) -> list[int]:
    from diffgame.models.loading import decoder_layers, resolve_layers

    return resolve_layers(fractions, len(decoder_layers(model)))


def rss_child(args) -> None:
    """Subprocess body: paired extraction of `args.batches` batches, then print this process's own peak RSS in MiB
    (VmHWM: `ru_maxrss` of a child starts at its parent's RSS at spawn on Linux, which floored earlier figures)."""
    base, org = make_models(args)
    layers = layers_of(base, args.layers)
    batches = make_batches(args, base.config.vocab_size, args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        paired_store(base, org, batches, layers, args, Path(tmp) / "store", shard_tokens=args.shard_tokens)
    print(json.dumps({"peak_rss_mib": status_mib("VmHWM")}))


def status_mib(field: str) -> float:
    """`VmHWM` (RSS high-water mark) or `VmRSS` of this process from /proc/self/status, in MiB; without /proc,
    ru_maxrss (which in an exec'd child also counts the parent's RSS at fork time)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["toy", "gemma3_1b"], default="toy")
    p.add_argument("--n-layers", type=int, default=None, help="Decoder layers (fewer than the real model on CPU).")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--layers", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rss-scale", type=int, default=10, help="Token-count factor for the peak-RSS check (0: skip).")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the median rate per path is reported.")
    p.add_argument("--disk-files", type=int, default=8, help="Shard-size files (64 MiB) written per round of (e).")
    p.add_argument("--synthetic-gbps", type=float, default=None,
                   help="Writer alone: feed bf16 batches at this many GB/s (0: unthrottled) instead of the models.")
    p.add_argument("--synthetic-gb", type=float, default=2.0, help="GB of activations fed per synthetic round.")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="Also write the model mode's rows here (JSON).")
    p.add_argument("--shard-tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    return p


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def peak_rss(args, n_batches: int, shard_tokens: int) -> float:
    """Peak RSS in MiB of (d) over `n_batches` batches, in a fresh subprocess running this file."""
    cmd = [sys.executable, SCRIPT, "--rss-child", "--shape", args.shape, "--batch", str(args.batch),
           "--seq", str(args.seq), "--batches", str(n_batches), "--dtype", args.dtype, "--device", args.device,
           "--layers", *map(str, args.layers), "--shard-tokens", str(shard_tokens)] \
        + (["--n-layers", str(args.n_layers)] if args.n_layers else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["peak_rss_mib"])


def measure(args: argparse.Namespace) -> list[dict]:
    """The model mode, (a)-(e) and the peak-RSS check: one JSON-serialisable row (see `report` for its reading).
    `--threads` applies for the call only; the temporary stores and files are deleted."""
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return [_measure(args)]
    finally:
        torch.set_num_threads(threads_before)


def _measure(args) -> dict:
    from diffgame.models.loading import decoder_layers
    from diffgame.preprocess.stage import SHARD_BYTES

    base, org = make_models(args)
    layers = layers_of(base, args.layers)
    batches = make_batches(args, base.config.vocab_size, args.batches)
    runs: dict[str, list[float]] = {"full": [], "truncated": [], "naive": [], "paired": []}
    load_before, per_token = _common.load(), []
    n_tokens = sum(b.numel() for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        paired_store(base, org, batches[:1], layers, args, Path(tmp) / "warmup")
        for r in range(args.rounds):  # interleaved, so load drifts on a shared machine hit every path alike
            for name, fn in (("full", full_forward(base)),
                             ("truncated", truncated_forward(base, max(layers))),
                             ("naive", naive(base, layers))):
                runs[name].append(rate(fn, batches, args.device))
            runs["paired"].append(paired_store(base, org, batches, layers, args, Path(tmp) / f"store{r}"))
            per_token.append(store_bytes(Path(tmp) / f"store{r}") / n_tokens)
        # (e) last: the pages its deleted files free are slow to touch again on a VM, which would slow (d)'s writes
        disk = [disk_rate(Path(tmp) / "disk", SHARD_BYTES, args.disk_files) for _ in range(args.rounds)]
    load_after = _common.load()
    tok_s = {k: median(v) for k, v in runs.items()}
    a, b, c, d = tok_s["full"], tok_s["truncated"], tok_s["naive"], tok_s["paired"]
    e, bpt = median(disk), per_token[0]
    tok_s["disk"] = e / bpt
    row = {"shape": args.shape, "layers": len(decoder_layers(base)), "d_model": base.config.hidden_size,
           "vocab": base.config.vocab_size, "B": args.batch, "T": args.seq, "batches": args.batches,
           "captured": [int(x) for x in layers], "dtype": args.dtype, "device": str(args.device),
           "threads": torch.get_num_threads(), "rounds": args.rounds, "tok_s": tok_s,
           "disk_gbps": e / 1e9, "disk_gbps_runs": [x / 1e9 for x in disk], "disk_file_mib": SHARD_BYTES >> 20,
           "bytes_per_token": bpt, "truncated_vs_full": b / a, "paired_vs_half_truncated": d / (b / 2),
           "paired_vs_bound": d / min(b / 2, e / bpt), "paired_per_model_vs_naive": 2 * d / c,
           "rss_mib": None, "rss_tokens": None, "load": [load_before, load_after]}
    del base, org, batches
    if args.rss_scale:
        shard_tokens = args.batches * args.batch * args.seq // 2  # both runs span several shards
        sizes = (args.batches, args.batches * args.rss_scale)
        row["rss_mib"] = [peak_rss(args, n, shard_tokens) for n in sizes]
        row["rss_tokens"] = [n * args.batch * args.seq for n in sizes]
    return row


def report(row: dict) -> None:
    """The model mode's tables, as printed on the command line."""
    t = row["tok_s"]
    a, bpt = t["full"], row["bytes_per_token"]
    print(f"\nshape={row['shape']} layers={row['layers']} d_model={row['d_model']} vocab={row['vocab']} "
          f"B={row['B']} T={row['T']} batches={row['batches']} captured={row['captured']} dtype={row['dtype']} "
          f"device={row['device']} threads={row['threads']} rounds={row['rounds']} (median)")
    print(f"1-minute load average: {row['load'][0]:.2f} before, {row['load'][1]:.2f} after")
    print("| path | tokens/s | x (a) | note |\n|---|---:|---:|---|")
    for key, name in (("full", "(a) full forward"), ("truncated", "(b) truncated forward"),
                      ("naive", "(c) output_hidden_states + .cpu()"), ("paired", "(d) diffgame paired -> store")):
        r, note = t[key], ""
        if key == "paired":
            note = f"paired tokens/s; vs two truncated forwards (b/2): {row['paired_vs_half_truncated']:.2f}x"
        elif key == "naive":
            note = f"one model; (d) per model-forward is {row['paired_per_model_vs_naive']:.2f}x (c)"
        print(f"| {name} | {r:,.0f} | {r / a:.2f} | {note} |" if r >= 100
              else f"| {name} | {r:.2f} | {r / a:.2f} | {note} |")
    print(f"| (e) disk, {row['disk_file_mib']} MiB files | {t['disk']:,.0f} | {t['disk'] / a:.2f} | "
          f"{row['disk_gbps']:.2f} GB/s at {bpt:,.0f} bytes per paired token "
          f"(all runs: {', '.join(f'{x:.2f}' for x in row['disk_gbps_runs'])} GB/s) |")
    print(f"(d) / (b/2) = {row['paired_vs_half_truncated']:.2f}; "
          f"(d) / min(b/2, e/bytes per token) = {row['paired_vs_bound']:.2f}")
    if row["rss_mib"]:
        (r1, r2), (n1, n2) = row["rss_mib"], row["rss_tokens"]
        print(f"peak RSS of (d): {r1:,.0f} MiB at {n1:,} tokens, {r2:,.0f} MiB at {n2:,} tokens ({r2 / r1:.2f}x)")


def main() -> None:
    args = parser().parse_args()
    if args.threads:  # for the whole process, so that the JSON envelope's machine names them too
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args)
    if args.synthetic_gbps is not None:
        return main_synthetic(args)
    rows = measure(args)
    for row in rows:
        report(row)
    _common.write_json(args.json, "extraction", args.device, rows)


def main_synthetic(args) -> None:
    """The writer alone: per round, the sustained input rate unthrottled and at `--synthetic-gbps`; then (e).

    An untimed run goes first: the first writes after large deletes pay the VM's first touch of the freed memory
    (as (e)'s first round shows), which is the machine's, not the writer's, cost."""
    from diffgame.preprocess.stage import SHARD_BYTES

    d_model, n_layers = model_config(args.shape, args.n_layers).hidden_size, len(args.layers)
    total = int(args.synthetic_gb * 1e9)
    runs: dict[str, list[float]] = {"unthrottled": [], "target": []}
    cpu: list[tuple[float, float]] = []
    load_before = _common.load()
    with tempfile.TemporaryDirectory() as tmp:
        synthetic(args, d_model, n_layers, 0.0, total // 2, Path(tmp) / "warmup")
        shutil.rmtree(Path(tmp) / "warmup")
        for r in range(args.rounds):
            for key, gbps in (("unthrottled", 0.0), ("target", args.synthetic_gbps)):
                if key == "target" and not gbps:
                    continue
                sustained, user, system = synthetic(args, d_model, n_layers, gbps, total, Path(tmp) / f"{key}{r}")
                runs[key].append(sustained)
                cpu.append((user, system))
                shutil.rmtree(Path(tmp) / f"{key}{r}")
        runs["disk"] = [disk_rate(Path(tmp) / "disk", SHARD_BYTES, args.disk_files) for _ in range(args.rounds)]
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items() if v}
    e = med["disk"] / 1e9
    print(f"\nsynthetic producer: shape={args.shape} d_model={d_model} layers captured={n_layers} "
          f"B={args.batch} T={args.seq} ({2 * n_layers * args.batch * args.seq * d_model * 2 / 1e6:.1f} MB a batch), "
          f"{total / 1e9:.1f} GB a round, rounds={args.rounds} (median), cpus={os.cpu_count()}")
    print(f"1-minute load average: {load_before:.2f} before, {_common.load():.2f} after")
    user, system = (sorted(x)[len(x) // 2] for x in zip(*cpu))
    print(f"(e) disk: {e:.2f} GB/s ({', '.join(f'{x / 1e9:.2f}' for x in runs['disk'])}); the writer's process "
          f"spends {user:.2f} user + {system:.2f} system CPU s per input GB (medians)")
    for key, limit, of in (("target", min(args.synthetic_gbps, e), "fed rate"),
                           ("unthrottled", min(1.6, e), "1.6 GB/s")):
        if key in med:
            what = f"fed at {args.synthetic_gbps:.2f} GB/s" if key == "target" else "fed unthrottled"
            print(f"writer sustains {med[key] / 1e9:.2f} GB/s of input {what} "
                  f"({', '.join(f'{x / 1e9:.2f}' for x in runs[key])}); ÷ min({of}, e) = {med[key] / 1e9 / limit:.2f}")


if __name__ == "__main__":
    main()
