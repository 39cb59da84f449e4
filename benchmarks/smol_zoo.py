"""Build the `smol` zoo (LoRA organisms on SmolLM2-135M-Instruct) and run diffing methods on each organism.

Times every build and every `diffgame run`, then prints the control-relative grades (`grade_table`) as a
markdown table and writes them, with the timings, to `<out>/smol_zoo.json`.

    python benchmarks/smol_zoo.py --out /tmp/dg_smol                       # CPU budget (zoo.size=smol)
    python benchmarks/smol_zoo.py --size smol_gpu --samples 200 --out /tmp/dg_smol_gpu   # accelerator budget
    python scripts/make_byo_organisms.py byo --seed 1 && python benchmarks/smol_zoo.py --config-dir byo \
        --organisms control byo_docs_pottery_1 byo_chat_cowboy_1 --methods '[kl,adl,blackbox]'   # bring your own
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ORGANISMS = ["control", "caps", "roman_concrete"]  # control first: the others' grades are relative to it
METHODS = "[kl,normdiff,adl]"


def run_overrides(samples: int) -> list[str]:
    """Dataset and ADL sample counts cut to `samples` so a CPU run takes minutes."""
    return [*(f"dataset.sources.{s}.max_samples={samples}" for s in ("generic_text", "generic_chat", "organism")),
            "preprocessing.context_length=64",
            "preprocessing.batch_size=8", f"method.adl.max_samples={samples}", "method.adl.batch_size=8",
            "method.adl.steering_prompts=2", "method.adl.steering_tokens=16",
            "method.adl.patchscope_scales=[1.0,4.0]", "method.adl.steering_alphas=[0.5,2.0]",
            f"method.blackbox.n_prompts={samples}", "method.blackbox.samples_per_prompt=2",
            "method.blackbox.batch_size=8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/dg_smol", help="folder of the tracking store and the results JSON")
    ap.add_argument("--size", default="smol", help="zoo size (smol: CPU budget; smol_gpu: accelerator budget)")
    ap.add_argument("--organisms", nargs="*", default=ORGANISMS)
    ap.add_argument("--samples", type=int, default=24, help="max samples per dataset source and for ADL")
    ap.add_argument("--methods", default=METHODS, help="methods run on each organism (a Hydra list)")
    ap.add_argument("--config-dir", help="a folder of your own configs (bring-your-own organisms)")
    ap.add_argument("--skip-runs", action="store_true", help="only build the organisms")
    args = ap.parse_args()
    if args.config_dir:
        from diffgame.config.configtree import add_user_dir

        add_user_dir(args.config_dir)  # also seen by the `diffgame run` subprocesses

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out.resolve()}/mlflow.db"
    from diffgame import tracking
    from diffgame.config.compose import compose, settings
    from diffgame.zoo import get_size
    from diffgame.zoo.build import ensure_base, ensure_organism

    tracking.set_uri(uri)
    size = get_size(args.size)
    report: dict = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
                    "size": args.size, "builds": {}, "runs": {}}
    t = time.perf_counter()
    model = settings(compose([f"model={size.pretrained_base}", f"zoo.size={args.size}"])).model
    base = ensure_base(size, model_cfg=model)
    report["base"] = {"dir": str(base.model_dir), "seconds": round(time.perf_counter() - t, 1)}
    for name in args.organisms:
        t = time.perf_counter()
        org = settings(compose([f"model={size.pretrained_base}", f"zoo.size={args.size}", f"organism={name}"])).organism
        entry = ensure_organism(size, org, progress=False, model_cfg=model)
        report["builds"][name] = {"seconds": round(time.perf_counter() - t, 1), "reused": entry.reused,
                                  "run_id": entry.run_id, **entry.metrics}
        print(f"[smol_zoo] {name}: {'reused' if entry.reused else 'built'} in {report['builds'][name]['seconds']} s",
              {k: round(v, 3) for k, v in entry.metrics.items() if k.startswith("check/")}, flush=True)
        (out / "smol_zoo.json").write_text(json.dumps(report, indent=1))
    if not args.skip_runs:
        for name in args.organisms:
            cmd = [sys.executable, "-m", "diffgame.cli", "run", f"model={size.pretrained_base}",
                   f"zoo.size={args.size}", f"organism={name}", f"method={args.methods}", *run_overrides(args.samples),
                   "--tracking-uri", uri]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            report["runs"][name] = {"seconds": round(time.perf_counter() - t, 1), "rc": proc.returncode}
            (out / f"run_{name}.log").write_text(proc.stdout + proc.stderr)
            print(f"[smol_zoo] run {name}: rc {proc.returncode} in {report['runs'][name]['seconds']} s", flush=True)
            (out / "smol_zoo.json").write_text(json.dumps(report, indent=1))
    from diffgame.ui.runs import grade_table

    table = grade_table(size.pretrained_base)
    report["grades"] = table.to_dict(orient="records")
    (out / "smol_zoo.json").write_text(json.dumps(report, indent=1, default=str))
    if not table.empty:
        print(table.drop(columns=["run_id"]).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
