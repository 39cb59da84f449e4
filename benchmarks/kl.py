"""KL throughput vs two full forwards on the same batches (target: ratio >= 0.8).

(a) `base(ids).logits` and `organism(ids).logits`: two plain full forwards, full [B, T, V] logits, nothing else.
(b) `diffgame.methods.kl.per_token_divergence` on the same sequences: two body forwards, the LM head and
    KL(P_org || P_base) in fp32 over token chunks (bounded memory), scores copied to the host; with the divergence
    eager (`compile: off`) and fused by `torch.compile` (`compile: on`, the default on CUDA), one row each.
Shapes: the zoo's `small` toy Llama, and a random-initialised Gemma-3-1B shape (262k vocabulary; fewer layers on CPU).

    python benchmarks/kl.py                      # both shapes, CPU defaults
    python benchmarks/kl.py --shape gemma3 --layers 26 --batch 16 --seq 1024 --device cuda --dtype bfloat16
    python benchmarks/kl.py --compile off        # eager divergence only (the compiled one needs a C++ compiler)
    python benchmarks/kl.py --json benchmarks/measured/kl-cpu.json    # the rows for scripts/bench_tables.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from diffgame.methods.kl import KLConfig, per_token_divergence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def make_models(shape: str, layers: int | None, dtype: torch.dtype, device: str):
    if shape == "toy":
        from transformers import LlamaConfig, LlamaForCausalLM

        from diffgame.zoo.sizes import SIZES

        s = SIZES["small"]
        conf = LlamaConfig(vocab_size=s.vocab_size, hidden_size=s.d_model, intermediate_size=s.d_ff,
                           num_hidden_layers=layers or s.n_layers, num_attention_heads=s.n_heads,
                           num_key_value_heads=s.n_heads, max_position_embeddings=4096, tie_word_embeddings=True)
        cls = LlamaForCausalLM
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        conf = Gemma3TextConfig(vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                                num_hidden_layers=layers or 26, num_attention_heads=4, num_key_value_heads=1,
                                head_dim=256, max_position_embeddings=32768, sliding_window=512)
        cls = Gemma3ForCausalLM
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(cls(conf).to(device=device, dtype=dtype).eval())
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns: dict, device: str, repeats: int) -> dict:
    """Median seconds per call of each function, after one warm-up call each; the calls are interleaved round by
    round so that drift in the machine's speed hits every function alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench(shape: str, layers: int | None, batch: int, seq: int, dtype: str, device: str, repeats: int,
          modes: list[str]) -> list[dict]:
    base, org = make_models(shape, layers, getattr(torch, dtype), device)
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    flat, offsets = ids.flatten(), torch.arange(0, batch * seq + 1, seq)
    ids_dev, mask = ids.to(device), torch.ones_like(ids).to(device)

    @torch.inference_mode()
    def two_forwards():
        base(input_ids=ids_dev, attention_mask=mask).logits
        org(input_ids=ids_dev, attention_mask=mask).logits

    n, rows = batch * seq, []
    configs = {mode: KLConfig(batch_tokens=n, compile=mode) for mode in modes}  # the same single batch as (a)
    fns = {"fwd": two_forwards} | {mode: (lambda c=cfg: per_token_divergence(base, org, flat, offsets, c))
                                   for mode, cfg in configs.items()}
    t = timed(fns, device, repeats)
    scores = {mode: per_token_divergence(base, org, flat, offsets, cfg) for mode, cfg in configs.items()}
    t_fwd = t["fwd"]
    for mode, cfg in configs.items():
        t_kl = t[mode]
        rows.append({"shape": shape, "layers": base.config.num_hidden_layers, "vocab": vocab, "B": batch, "T": seq,
                     "dtype": dtype, "device": device, "compile": mode, "fwd_tok_s": n / t_fwd, "kl_tok_s": n / t_kl,
                     "ratio": t_fwd / t_kl,
                     "max_diff": float((scores[mode] - scores[modes[0]]).abs().max()),
                     "chunk_tokens": cfg.chunk_tokens(vocab, torch.device(device)), "repeats": repeats,
                     "threads": torch.get_num_threads()})
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["toy", "gemma3", "all"], default="all")
    p.add_argument("--layers", type=int, default=None, help="Decoder layers (default: toy 4, gemma3 2 on CPU, 26 on GPU).")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both",
                   help="Divergence eager (off), fused by torch.compile (on), or one row each (both).")
    p.add_argument("--json", type=Path, default=None, help="Write the rows here (scripts/bench_tables.py reads it).")
    return p


def measure(a: argparse.Namespace) -> list[dict]:
    """One row per shape and divergence mode."""
    cpu = a.device == "cpu"
    defaults = {"toy": (None, 16, 128), "gemma3": (2 if cpu else None, 2 if cpu else 16, 128 if cpu else 1024)}
    rows = []
    for shape in (["toy", "gemma3"] if a.shape == "all" else [a.shape]):
        layers, batch, seq = defaults[shape]
        modes = ["off", "on"] if a.compile == "both" else [a.compile]
        torch._dynamo.reset()  # each vocabulary gets kernels specialised on it, not a shape-generic recompile
        rows += bench(shape, a.layers or layers, a.batch or batch, a.seq or seq, a.dtype, a.device, a.repeats, modes)
    return rows


def report(rows: list[dict]) -> None:
    print("| shape | layers | vocab | B x T | dtype | device | divergence | 2 forwards tok/s | KL tok/s | ratio | "
          "max abs diff vs the first row (nats) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = "compiled" if r["compile"] == "on" else "eager"
        print(f"| {r['shape']} | {r['layers']} | {r['vocab']} | {r['B']}x{r['T']} | {r['dtype']} | {r['device']} | "
              f"{kind} | {r['fwd_tok_s']:,.0f} | {r['kl_tok_s']:,.0f} | {r['ratio']:.2f} | {r['max_diff']:.1e} |")


def main() -> None:
    _common.cli("kl", parser, measure, report)


if __name__ == "__main__":
    main()
