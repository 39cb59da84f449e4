"""Extraction throughput, side by side in one process on the same batches and the same random-init model pair.

(a) bare full forward (LM head included)      (b) bare forward truncated after the deepest requested layer
(c) naive: output_hidden_states, then .cpu()   (d) diffgame: paired base+organism extraction writing a store
Targets (issue 4): (d) >= 0.9x the rate of two truncated forwards, i.e. d / (b/2) >= 0.9; (d) well above (c)/2;
peak RSS of (d) flat when the token count grows 10x (each measured in a fresh subprocess).

  python benchmarks/extraction.py --shape toy
  python benchmarks/extraction.py --shape gemma3_1b --n-layers 6 --batch 2 --seq 64 --batches 4   # CPU
  python benchmarks/extraction.py --shape gemma3_1b --batch 16 --seq 1024 --dtype bfloat16        # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn


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
    from diffgame.models import _core

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

    from diffgame.data import TokenizedSequence
    from diffgame.plan import Plan
    from diffgame.preprocess.plan import plan_shards
    from diffgame.preprocess.stage import SHARD_BYTES, _extract
    from diffgame.store import PARTS, StoreWriter

    seqs = {"bench": [TokenizedSequence("bench", i, row.tolist(), [0] * row.numel())
                      for i, row in enumerate(torch.cat(batches))]}
    d_model = base.config.hidden_size
    plan = {"layers": layers, "d_model": d_model, "dtype": "bfloat16", "command": "benchmark",
            "shards": plan_shards(seqs, args.batch, shard_tokens or SHARD_BYTES // (d_model * 2))}
    StoreWriter(root).write_plan(plan)
    cfg = OmegaConf.create({"model": {"device_map": None}, "preprocessing": {
        "dtype": "bfloat16", "accelerator": "gpu" if args.device.startswith("cuda") else "cpu", "devices": 1,
        "strategy": "auto", "num_nodes": 1}, "organism": {"name": "bench"}, "dataset": {"name": "bench"}})
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


def layers_of(model, fractions: list[float]) -> list[int]:
    from diffgame.models import decoder_layers, resolve_layers

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



def main() -> None:
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
    p.add_argument("--shard-tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args)

    base, org = make_models(args)
    layers = layers_of(base, args.layers)
    batches = make_batches(args, base.config.vocab_size, args.batches)
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paired_store(base, org, batches[:1], layers, args, Path(tmp) / "warmup")
        for r in range(args.rounds):  # interleaved, so load drifts on a shared machine hit every path alike
            for name, fn in (("(a) full forward", full_forward(base)),
                             ("(b) truncated forward", truncated_forward(base, max(layers))),
                             ("(c) output_hidden_states + .cpu()", naive(base, layers))):
                runs.setdefault(name, []).append(rate(fn, batches, args.device))
            runs.setdefault("(d) diffgame paired -> store", []).append(
                paired_store(base, org, batches, layers, args, Path(tmp) / f"store{r}"))
    rates = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    a, b = rates["(a) full forward"], rates["(b) truncated forward"]
    print(f"\nshape={args.shape} layers={len(__import__('diffgame.models', fromlist=['x']).decoder_layers(base))} "
          f"d_model={base.config.hidden_size} vocab={base.config.vocab_size} B={args.batch} T={args.seq} "
          f"batches={args.batches} captured={layers} dtype={args.dtype} device={args.device} "
          f"threads={torch.get_num_threads()} rounds={args.rounds} (median)")
    print("| path | tokens/s | x (a) | note |\n|---|---:|---:|---|")
    for name, r in rates.items():
        note = ""
        if name.startswith("(d)"):
            note = f"paired tokens/s; vs two truncated forwards (b/2): {r / (b / 2):.2f}x"
        elif name.startswith("(c)"):
            note = f"one model; (d) per model-forward is {2 * rates['(d) diffgame paired -> store'] / r:.2f}x (c)"
        print(f"| {name} | {r:,.0f} | {r / a:.2f} | {note} |" if r >= 100 else f"| {name} | {r:.2f} | {r / a:.2f} | {note} |")
    if args.rss_scale:
        rss = {}
        shard_tokens = args.batches * args.batch * args.seq // 2  # both runs span several shards
        for n in (args.batches, args.batches * args.rss_scale):
            cmd = [sys.executable, __file__, "--rss-child", "--shape", args.shape, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--batches", str(n), "--dtype", args.dtype, "--device", args.device,
                   "--layers", *map(str, args.layers), "--shard-tokens", str(shard_tokens)] + (["--n-layers", str(args.n_layers)] if args.n_layers else []) \
                + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rss[n] = json.loads(out)["peak_rss_mib"]
        (n1, r1), (n2, r2) = rss.items()
        print(f"peak RSS of (d): {r1:,.0f} MiB at {n1 * args.batch * args.seq:,} tokens, "
              f"{r2:,.0f} MiB at {n2 * args.batch * args.seq:,} tokens ({r2 / r1:.2f}x)")


if __name__ == "__main__":
    main()
