"""Amplified sampling vs plain sampling of both models on the same prompts (issue #32; target: ratio >= 0.9).

(a) plain: `diffgame.models.generation.sample` of the base alone, then of the organism alone (each with its own KV
    cache): the floor of logit-diff amplification, two forwards per token.
(b) logit-diff amplified: the same sampler stepping both models together, tokens drawn from l_org + 2 (l_org - l_base).
(c) transformers' `generate` of both models (do_sample, no top-k/top-p), for the sampler's own overhead.
(d) weight amplified (w = 2, weights computed module by module as they run) vs (e) the organism alone.
Every reply runs the full `--new` tokens (no stop token). Medians of `--repeats` interleaved rounds after a warm-up.
Ratios: (a)/(b) amplified ÷ plain pair, target >= 0.9; (c)/(a) diffgame's sampler ÷ generate; (e)/(d) weight
amplified ÷ the organism alone.

    python benchmarks/amplify.py                          # toy and SmolLM2-135M shapes (8 layers on the CPU)
    python benchmarks/amplify.py --device cuda --layers 30 --batch 32 --json benchmarks/measured/amplify-gpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffgame.models.amplified import amplified_weights
from diffgame.models.generation import sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import kl  # noqa: E402  (its model shapes and its interleaved timer)


class NoStop:
    """A tokenizer as `sample` reads one, with no stop token: every reply runs the full length."""

    pad_token_id, eos_token_id, all_special_ids = 0, None, []

    def decode(self, ids, skip_special_tokens=True):
        return ""


def make_models(shape: str, layers: int | None, dtype: torch.dtype, device: str):
    """The base and the organism (two seeds): `kl.py`'s toy zoo shape, or SmolLM2-135M's shape."""
    if shape == "toy":
        return kl.make_models("toy", layers, dtype, device)
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers or 30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       tie_word_embeddings=True)
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(LlamaForCausalLM(conf).to(device=device, dtype=dtype).eval())
    return out


@torch.inference_mode()
def bench(shape: str, layers: int | None, batch: int, prompt: int, new: int, dtype: str, device: str,
          repeats: int) -> dict:
    base, org = make_models(shape, layers, getattr(torch, dtype), device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, base.config.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(prompt // 2, prompt + 1, (batch,), generator=g)]
    tok = NoStop()
    run = dict(samples_per_prompt=1, max_new_tokens=new, temperature=1.0, seed=0, batch_size=batch)
    ids = torch.full((batch, prompt), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, prompt - len(p):], mask[row, prompt - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(device), mask.to(device)

    def generate(model):
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=None,
                       top_p=None, temperature=1.0, pad_token_id=0)

    def weighted():
        with amplified_weights(base, org, 2.0) as model:
            sample(None, model, tok, prompts, **run)

    fns = {"plain": lambda: (sample(None, base, tok, prompts, **run), sample(None, org, tok, prompts, **run)),
           "amplified": lambda: sample(base, org, tok, prompts, 2.0, **run),
           "generate": lambda: (generate(base), generate(org)),
           "weight": weighted,
           "organism": lambda: sample(None, org, tok, prompts, **run)}
    t = kl.timed(fns, device, repeats)
    n = batch * new
    return {"shape": shape, "layers": base.config.num_hidden_layers, "vocab": base.config.vocab_size, "B": batch,
            "prompt": prompt, "new": new, "dtype": dtype, "device": device, "repeats": repeats,
            "threads": torch.get_num_threads(),
            "tok_s": {k: n / v for k, v in t.items()},
            "amplified_vs_plain": t["plain"] / t["amplified"], "sampler_vs_generate": t["generate"] / t["plain"],
            "weight_vs_organism": t["organism"] / t["weight"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["toy", "smol", "all"], default="all")
    p.add_argument("--layers", type=int, default=None, help="Decoder layers (default: toy 4, smol 8 on CPU, 30 on GPU).")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32, help="Longest prompt (prompts are 1/2 to 1 of it, left-padded).")
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--json", type=Path, default=None, help="Write the rows here (scripts/bench_tables.py reads it).")
    return p


def measure(a: argparse.Namespace) -> list[dict]:
    """One row per shape."""
    cpu = a.device == "cpu"
    return [bench(shape, a.layers or (8 if shape == "smol" and cpu else None), a.batch, a.prompt, a.new, a.dtype,
                  a.device, a.repeats) for shape in (["toy", "smol"] if a.shape == "all" else [a.shape])]


def report(rows: list[dict]) -> None:
    print("| shape | layers | B × new | device | plain pair tok/s | amplified tok/s | amplified ÷ plain | "
          "sampler ÷ generate | weight-amplified ÷ organism |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['layers']} | {r['B']} × {r['new']} | {r['device']} | {r['tok_s']['plain']:,.0f} | "
              f"{r['tok_s']['amplified']:,.0f} | {r['amplified_vs_plain']:.2f} | {r['sampler_vs_generate']:.2f} | "
              f"{r['weight_vs_organism']:.2f} |")


def main() -> None:
    _common.cli("amplify", parser, measure, report)


if __name__ == "__main__":
    main()
