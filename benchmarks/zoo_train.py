"""Time one zoo organism's build steps (LoRA training with the zoo's Lightning loop, then its behaviour checks).

The same `train_organism` and `run_checks` that `diffgame zoo build` runs, without the tracking store, so it runs
where MLflow is not installed (an accelerator box). The base is a model directory (`--base-dir`, e.g. the
converted SmolLM2) or, with `--random-init DIR`, a random-initialised model of DIR's config and tokenizer: step
time does not depend on the weights, so this times a GPU build where the 93 MB weights cannot travel.

    python benchmarks/zoo_train.py --size smol --base-dir ~/.cache/diffgame/gguf/SmolLM2-135M-Instruct.Q4_1-*/
    python benchmarks/zoo_train.py --size smol_gpu --random-init benchmarks/smollm2_shape --json /tmp/out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def random_base(shape_dir: Path, out: Path, dtype: torch.dtype) -> Path:
    """Save a random-initialised model of `shape_dir`'s config, with its tokenizer, under `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape_dir), dtype=dtype)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape_dir).save_pretrained(out)
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="smol", help="zoo size whose budget to time (smol, smol_gpu, micro, small)")
    ap.add_argument("--organism", default="caps", help="organism config under experiments/organism/")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--base-dir", type=Path, help="base model directory (HF format)")
    src.add_argument("--random-init", type=Path, help="directory with config.json and tokenizer files")
    ap.add_argument("--json", type=Path, help="also write the timings here")
    args = ap.parse_args()

    from diffgame.grading.ground_truth import organism_node
    from diffgame.zoo.build import _load, train_organism
    from diffgame.zoo.checks import run_checks
    from diffgame.zoo.recipes import recipe_rows
    from diffgame.zoo.sizes import get_size

    size = get_size(args.size)
    organism = organism_node(args.organism)  # the YAML with schema defaults filled in
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = args.base_dir or random_base(args.random_init, Path(tmp) / "base", torch.float32)
        t0 = time.perf_counter()
        model, tokenizer, losses = train_organism(size, organism, base_dir, progress=False)
        train_s = time.perf_counter() - t0
        print(f"trained {size.organism_steps} steps in {train_s:.1f} s", flush=True)
        base, _ = _load(base_dir)
        check_len = size.seq_len * (1 if size.pretrained_base is None else 4)
        t1 = time.perf_counter()
        try:
            checks = run_checks(organism, base.eval(), model, tokenizer, recipe_rows(organism.zoo, "test"),
                                check_len, size.check_samples, size.check_new_tokens, size.check_rows)
            error = None
        except RuntimeError as exc:  # e.g. sampling from a LoRA-trained random-init model can overflow
            checks, error = {}, str(exc).splitlines()[0]
        checks_s = time.perf_counter() - t1
    out = {"size": size.name, "organism": args.organism, "device": device_name(),
           "weights": "random-init" if args.random_init else str(base_dir),
           "steps": size.organism_steps, "batch_size": size.batch_size, "seq_len": size.seq_len,
           "train_s": round(train_s, 1), "steps_per_s": round(size.organism_steps / train_s, 2),
           "train_tokens_per_s": round(size.organism_steps * size.batch_size * size.seq_len / train_s),
           "checks_s": round(checks_s, 1), "checks_error": error,
           "first_loss": round(losses[0], 3), "last_loss": round(losses[-1], 3),
           "checks": {k: round(v, 4) for k, v in checks.items()}}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
