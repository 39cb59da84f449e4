"""Dictionary training fed from the store vs fed from memory, side by side in one process (issue #15).

(a) One Lightning loop (`DictionaryModule`, the Trainer settings of `train_dictionary`, one BatchTopK init, seed 0)
    run twice per round on the same batches: fed by `ShuffledStream` from a bf16 store on disk, and fed by slices of
    one in-memory tensor holding exactly the raw bf16 rows that stream yields (both converted to inputs in the step,
    as in `train_dictionary`). Steps are timed between batch ends after `--warmup` steps (Trainer setup and warm-up
    excluded from both); rounds are interleaved, medians reported.
    store ÷ memory is the share of the in-memory speed left once batches come from the store: 1.0 means the store
    costs nothing, the target is >= 0.9 ("the store is never the bottleneck"). Both loops end on equal weights
    (checked). An untimed short fit of each path comes first; the order alternates per round. The store's pages
    are in the page cache unless `--cold` evicts them before each store run. The loader runs in the training
    process (`num_workers=0`, as in `train_dictionary`), so batch reads do not overlap the steps: ratio ~ step /
    (step + stream), with "stream alone ms/batch" (a bare pass over the stream, no training) and "memory ms/step"
    both in the table. With CUDA the comparison runs on the CPU and the GPU (`--accelerators`); both paths then
    hand the same pinned host bf16 rows to Lightning (the stream pins them in its prefetch thread, as in
    `train_dictionary`), which copies them over asynchronously; the step converts them on the GPU.
(b) Peak RSS (VmHWM, reset once the store is open) of `train_dictionary` on a store of N tokens and on one of
    `--rss-scale` x N tokens (several shards each), same steps and batch, each in a fresh subprocess; target <= 1.1x.
Stores are random bf16 activations (organism = base + noise) in a temporary folder (`BENCH_TMP` picks its parent).

  python benchmarks/dictionary.py                    # toy: d=128, 512 latents, k=16, batch 1024; ~1-4 min on 2 CPUs
  python benchmarks/dictionary.py --threads 1        # on a busy 2-core box (or OMP_WAIT_POLICY=PASSIVE): spinning
                                                     # OpenMP threads of an oversubscribed CPU make both paths erratic
  python benchmarks/dictionary.py --shape gemma3_1b --accelerators gpu --rss-scale 0   # d=1152, 16k latents, k=32
  python benchmarks/dictionary.py --shape gemma3_1b --accelerators gpu --rss-scale 0 --inputs pair \
      --precision bf16-mixed                         # crosscoder, bf16 autocast
  python benchmarks/dictionary.py --json benchmarks/results/dictionary.json   # rows + machine for the docs' tables

In-process (`benchmarks/suite.py`): `measure(parser().parse_args([...]))` returns one dict per accelerator.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from diffgame.dictionary.data import ShuffledStream, input_scale
from diffgame.dictionary.model import BatchTopK
from diffgame.dictionary.train import DictionaryModule, TrainConfig, train_dictionary
from diffgame.store import ActivationStore, StoreWriter, act_file, shard_name, tokens_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from extraction import status_mib

SHAPES = {"toy": (128, 512, 16), "gemma3_1b": (1152, 16384, 32)}  # d_model, latents, k
GPU = ("gpu", "cuda")  # accelerator names that mean CUDA
LAYER, QUIET = 0, ".*(does not have many workers|infer the batch|LeafSpec|litlogger|GPU available but).*"


def write_bench_store(root: Path, n_tokens: int, d: int, shard_tokens: int, seed: int = 0) -> ActivationStore:
    """A bf16 store of random activations (organism = base + noise), written shard by shard (bounded memory)."""
    writer, g = StoreWriter(root), torch.Generator().manual_seed(seed)
    plan = {"layers": [LAYER], "d_model": d, "dtype": "bfloat16", "command": "benchmarks/dictionary.py",
            "shards": {"text": []}}
    writer.write_plan(plan)
    for s, a in enumerate(range(0, n_tokens, shard_tokens)):
        n, name = min(shard_tokens, n_tokens - a), shard_name(s)
        offsets = torch.cat([torch.arange(0, n, 256), torch.tensor([n])])
        writer.write_part("text", name, "tokens", {tokens_file("text", name): {
            "input_ids": torch.randint(0, 1000, (n,), generator=g), "positions": torch.arange(n) % 256,
            "roles": torch.zeros(n, dtype=torch.long), "seq_offsets": offsets,
            "sequence_ids": torch.arange(len(offsets) - 1)}}, {"rank": 0})
        base = torch.randn(n, d, generator=g)
        for role, x in (("base", base), ("organism", base + 0.3 * torch.randn(n, d, generator=g))):
            writer.write_part("text", name, role, {act_file("text", role, LAYER, name): {"act": x.bfloat16()}},
                              {"rank": 0})
        plan["shards"]["text"].append({"name": name, "n_tokens": n, "n_sequences": len(offsets) - 1})
    writer.write_plan(plan)
    writer.finalize(plan, {})
    return ActivationStore.open(root, verify=False)


class InMemory(torch.utils.data.IterableDataset):
    """Batches as views of one in-memory tensor, in order."""

    def __init__(self, x: torch.Tensor, batch: int):
        super().__init__()
        self.x, self.batch = x, batch

    def __iter__(self):
        return (self.x[i:i + self.batch] for i in range(0, len(self.x), self.batch))


class Clock(pl.Callback):
    def __init__(self):
        self.t: list[float] = []

    def on_train_batch_end(self, trainer, *args):
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())


def fit(data, scale, cfg: TrainConfig, args, accelerator: str, steps: int | None = None) -> tuple[float, BatchTopK]:
    """Tokens/s of the timed steps of one `train_dictionary`-style Lightning fit, and the trained dictionary."""
    model = BatchTopK(scale.numel(), args.d_model, cfg.n_latents, cfg.k, dead_steps=cfg.dead_steps, seed=0)
    model.input_scale.copy_(scale)
    clock, steps = Clock(), steps or args.steps
    trainer = pl.Trainer(max_steps=args.warmup + steps, max_epochs=-1, precision=cfg.precision,
                         accelerator=accelerator, devices=1, logger=False, callbacks=[clock],
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         log_every_n_steps=cfg.log_every, num_sanity_val_steps=0, deterministic=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET)
        trainer.fit(DictionaryModule(model, cfg, "bench", args.inputs),
                    torch.utils.data.DataLoader(data, batch_size=None, num_workers=0))
    assert len(clock.t) == args.warmup + steps, len(clock.t)
    return steps * args.batch / (clock.t[-1] - clock.t[args.warmup - 1]), model.cpu()


def evict(root: Path) -> None:
    """Drop the store's files from the page cache (clean pages; no root needed)."""
    for f in root.rglob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def config(args) -> TrainConfig:
    return TrainConfig(n_latents=args.n_latents, k=args.k, steps=args.warmup + args.steps, batch_size=args.batch,
                       precision=args.precision)


def rss_child(args) -> None:
    """Subprocess body: `train_dictionary` (default accelerator) on the store at `args.store`; print peak RSS."""
    store = ActivationStore.open(args.store, verify=False)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := current RSS (python, torch, lightning loaded)
            f.write("5")
    except OSError:
        pass
    start = status_mib("VmRSS")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET)
        train_dictionary(store, LAYER, ["text"], args.inputs, config(args))
    print(json.dumps({"peak_rss_mib": status_mib("VmHWM"), "start_rss_mib": start}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="toy")
    p.add_argument("--n-latents", type=int, default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--inputs", choices=["delta", "pair"], default="delta", help="delta: SAE on h_org - h_base; "
                   "pair: crosscoder on [h_base; h_org].")
    p.add_argument("--tokens", type=int, default=1 << 17, help="Tokens N of the store (and the 1x RSS store).")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100, help="Timed steps per fit (after --warmup).")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--accelerators", nargs="+", default=["cpu"] + (["gpu"] if torch.cuda.is_available() else []))
    p.add_argument("--cold", action="store_true", help="Evict the store from the page cache before each store fit.")
    p.add_argument("--rss-scale", type=int, default=10, help="Store-size factor of the peak-RSS check (0: skip).")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="Also write the rows, with the machine and versions, "
                   "to this JSON file (the docs' tables read it).")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with the shape's d_model, latents and k filled in; Lightning's per-fit banners silenced."""
    args = argparse.Namespace(**vars(args))
    args.d_model, latents, k = SHAPES[args.shape]
    args.n_latents, args.k = args.n_latents or latents, args.k or k
    for name in ("lightning.pytorch", "lightning.fabric"):  # no "GPU available: ..." banner per fit
        logging.getLogger(name).setLevel(logging.WARNING)
    return args


def measure(args: argparse.Namespace) -> list[dict]:
    """(a) per accelerator and (b) once, as one row per accelerator (`--threads` applies only while it runs)."""
    args, threads = resolve(args), torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> list[dict]:
    cfg, load = config(args), _common.load()
    shard_tokens = min(-(-args.tokens // 2), 2 ** 31 // (2 * args.d_model))  # >= 2 shards, each < 2 GiB
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp) / "x1"
        store = write_bench_store(root, args.tokens, args.d_model, shard_tokens)
        scale = input_scale(store, LAYER, ["text"], args.inputs)

        def stream(prefetch: int = 0, pin: bool = False):  # raw rows, converted in the step, as train_dictionary
            return ShuffledStream(store, LAYER, ["text"], args.inputs, args.batch, args.warmup + args.steps,
                                  block_tokens=cfg.block_tokens, buffer_blocks=cfg.buffer_blocks, prefetch=prefetch,
                                  raw=True, pin=pin)

        memory = torch.cat(list(stream()))  # exactly the raw rows the store path yields, contiguous
        measured = []
        for acc in args.accelerators:
            # as train_dictionary: beside a GPU, two batches made ahead in a thread and pinned there; the in-memory
            # rows are pinned too, so the two paths differ only in where the rows come from
            gpu = acc in GPU and torch.cuda.is_available()
            prefetch, pin = (2, True) if gpu else (0, False)
            held = memory.pin_memory() if pin else memory
            paths = {"store": lambda: stream(prefetch, pin), "memory": lambda: InMemory(held, args.batch)}
            for make in paths.values():  # untimed short fits: the process's first-fit costs hit neither path
                fit(make(), scale, cfg, args, acc, steps=args.warmup)
            runs: dict[str, list[float]] = {"store": [], "memory": [], "stream": []}
            for r in range(args.rounds):  # interleaved, order alternating: load drift hits both paths alike
                if args.cold:
                    evict(root)
                t0 = time.perf_counter()
                n = sum(1 for _ in stream(prefetch, pin))  # the stream alone, no training
                runs["stream"].append((time.perf_counter() - t0) * 1e3 / n)
                models = {}
                for name in (["store", "memory"] if r % 2 == 0 else ["memory", "store"]):
                    if args.cold and name == "store":
                        evict(root)
                    rate, models[name] = fit(paths[name](), scale, cfg, args, acc)
                    runs[name].append(rate)
                if r == 0:
                    pairs = zip(models["store"].state_dict().values(), models["memory"].state_dict().values())
                    diff = max(float((a.double() - b.double()).abs().max()) for a, b in pairs)
            med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
            measured.append((acc, med, [s / m for s, m in zip(runs["store"], runs["memory"])], diff))
        rss = []
        if args.rss_scale:
            (Path(tmp) / "x1").rename(Path(tmp) / "rss1")
            write_bench_store(Path(tmp) / f"rss{args.rss_scale}", args.tokens * args.rss_scale, args.d_model,
                              shard_tokens)
            for factor in (1, args.rss_scale):
                cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", "--store", f"{tmp}/rss{factor}",
                       "--shape", args.shape, "--n-latents", str(args.n_latents), "--k", str(args.k),
                       "--inputs", args.inputs, "--batch", str(args.batch), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--precision", args.precision] \
                    + (["--threads", str(args.threads)] if args.threads else [])
                out = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(f"RSS child x{factor} failed:\n{out.stderr[-3000:]}")
                rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
    common = {"shape": args.shape, "d_model": args.d_model, "n_latents": args.n_latents, "k": args.k,
              "inputs": args.inputs, "method": "sae" if args.inputs == "delta" else "crosscoder", "batch": args.batch,
              "tokens": args.tokens, "shard_tokens": shard_tokens, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "precision": args.precision, "cold": args.cold,
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "rss_scale": args.rss_scale, "rss_mib": [x["peak_rss_mib"] for x in rss] or None,
              "rss_start_mib": rss[0]["start_rss_mib"] if rss else None, "load": [load, _common.load()]}
    return [{**common, "accelerator": acc, "tok_s": {"store": med["store"], "memory": med["memory"]},
             "store_vs_memory": med["store"] / med["memory"], "per_round": ratios,
             "stream_ms_per_batch": med["stream"], "memory_ms_per_step": args.batch / med["memory"] * 1e3,
             "max_weight_diff": diff} for acc, med, ratios, diff in measured]


def report(rows: list[dict]) -> None:
    """The rows of `measure` as the table and lines the docs quote."""
    a = rows[0]
    shards = -(-a["tokens"] // a["shard_tokens"])
    print(f"\nshape={a['shape']} d_model={a['d_model']} latents={a['n_latents']} k={a['k']} inputs={a['inputs']} "
          f"batch={a['batch']} store={a['tokens']:,} tokens bf16 in {shards} shards "
          f"steps={a['steps']} (+{a['warmup']} warm-up) rounds={a['rounds']} (median) precision={a['precision']} "
          f"page cache={'evicted' if a['cold'] else 'warm'}")
    gpu = f"; GPU {_common.machine('cuda')}" if torch.cuda.is_available() else ""
    print(f"machine: {_common.machine('cpu')}, OMP_WAIT_POLICY {a['omp_wait_policy']}{gpu}; torch {torch.__version__}; "
          f"1-min load average before {a['load'][0]:.2f}, after {a['load'][1]:.2f}")
    print("| device | store tokens/s | memory tokens/s | store ÷ memory (target >= 0.9) | per round | stream alone "
          "ms/batch | memory ms/step | max weight diff |\n|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['accelerator']} | {r['tok_s']['store']:,.0f} | {r['tok_s']['memory']:,.0f} | "
              f"**{r['store_vs_memory']:.2f}** | {' '.join(f'{x:.2f}' for x in r['per_round'])} | "
              f"{r['stream_ms_per_batch']:.2f} | {r['memory_ms_per_step']:.2f} | {r['max_weight_diff']:.1e} |")
    if a["rss_mib"]:
        (one, big), n2 = a["rss_mib"], a["rss_scale"]
        print(f"peak RSS of train_dictionary ({a['steps'] + a['warmup']} steps, fresh subprocess each, VmHWM reset "
              f"after opening the store at {a['rss_start_mib']:,.0f} MiB): {one:,.0f} MiB at {a['tokens']:,} tokens, "
              f"{big:,.0f} MiB at {a['tokens'] * n2:,} tokens ({-(-a['tokens'] * n2 // a['shard_tokens'])} shards): "
              f"**{big / one:.2f}x** (target <= 1.1)")


def main() -> None:
    args = parser().parse_args()
    if args.threads:  # for the whole process: the machine line and the JSON envelope name the threads used
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(resolve(args))
    rows = measure(args)
    report(rows)
    _common.write_json(args.json, "dictionary", "cuda" if any(r["accelerator"] in GPU for r in rows) else "cpu",
                       rows)


if __name__ == "__main__":
    main()
