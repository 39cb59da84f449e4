"""Organism variants as a dimension (#17): a full-weights variant and a LoRA variant (made with peft) of one organism
on a tiny random pair give two diff runs tagged with their variant, kept apart by `diffgame runs`, `diffgame grades`,
the app's run tables and pickers, and the config the app loads models with."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffgame import tracking
from diffgame.pipeline.chain import run_one
from diffgame.ui import runs as backend

HOME = str(Path(__file__).resolve().parents[2] / "app" / "Home.py")


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    """kl diff runs of the `default` (full weights) and `lora` variants of one organism, in a fresh store."""
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from diffgame.config.compose import validate

    from _tiny_models import make_pair, tiny_cfg, write_data

    root = tmp_path_factory.mktemp("variants")
    base, org = make_pair(root / "models", noise=0.2)
    data = write_data(root / "data", n_text=12, n_chat=8)
    torch.manual_seed(5)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False))
    adapter.save_pretrained(root / "adapter")
    out = {}
    for variant in ("default", "lora"):
        cfg = tiny_cfg(base, org, data, root / "mlflow.db", dtype="float32")
        cfg.organism.finetuned = OmegaConf.create({"tiny": {"default": {"kind": "full", "id": str(org)},
                                                            "lora": {"kind": "lora", "id": str(root / "adapter")}}})
        cfg.organism.variant = variant
        cfg.method = {"kl": {"top_k_examples": 3}}
        validate(cfg)  # fills the variants' schema defaults
        [row] = run_one(cfg)
        out[variant] = row
    return tracking.resolve_uri(), out


def test_variants_are_tagged_and_kept_apart(variant_runs):
    from diffgame.cli import app

    uri, rows = variant_runs
    runs = {v: tracking.client().get_run(r.run_id) for v, r in rows.items()}
    assert {v: r.data.tags[tracking.TAG_VARIANT] for v, r in runs.items()} == {"default": "default", "lora": "lora"}
    assert runs["default"].info.run_id != runs["lora"].info.run_id  # two stores, two diff runs
    pre = {v: tracking.client().get_run(r.data.tags[tracking.TAG_PREPROCESS]) for v, r in runs.items()}
    assert {v: p.data.tags[tracking.TAG_VARIANT] for v, p in pre.items()} == {"default": "default", "lora": "lora"}
    # the variants' KL differs: the LoRA adapter and the full finetune changed the base differently
    assert runs["default"].data.metrics["kl/all/mean"] != pytest.approx(runs["lora"].data.metrics["kl/all/mean"])

    frame = backend.runs_frame("diff")
    assert sorted(frame["variant"]) == ["default", "lora"]
    assert len(backend.latest(frame)) == 2  # the newest run per variant, not one for the organism
    name = frame["organism"].iloc[0]
    assert sorted(backend.run_label(r).split(" · ")[0] for _, r in frame.iterrows()) == [name, f"{name} [lora]"]
    assert sorted(backend.coverage(frame).index.get_level_values("variant")) == ["default", "lora"]
    table = backend.grade_table("tiny")
    assert sorted(zip(table["variant"], table["run_id"])) == sorted((v, r.run_id) for v, r in rows.items())

    cli = CliRunner()
    shown = cli.invoke(app, ["runs", "--stage", "diff", "--variant", "lora", "--tracking-uri", uri],
                       env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and rows["lora"].run_id in shown.output and rows["default"].run_id not in shown.output
    graded = cli.invoke(app, ["grades", "--model", "tiny", "--tracking-uri", uri], env={"COLUMNS": "250"})
    assert graded.exit_code == 0, graded.output
    lines = [ln for ln in graded.output.splitlines() if rows["lora"].run_id in ln or rows["default"].run_id in ln]
    assert len(lines) == 2 and any(" lora " in ln for ln in lines) and any(" default " in ln for ln in lines)


def test_app_picks_and_loads_a_variant(variant_runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    uri, rows = variant_runs
    monkeypatch.setattr(sys, "argv", ["Home.py", "--tracking-uri", uri])
    at = AppTest.from_file(HOME, default_timeout=300)
    at.run()
    at.switch_page("views/kl.py").run()
    assert not at.exception, [e.value for e in at.exception]
    options = at.selectbox(key="kl_run").options
    assert len(options) == 2 and sum("[lora]" in o for o in options) == 1
    at.selectbox(key="kl_run").set_value(next(o for o in options if "[lora]" in o)).run()
    assert rows["lora"].run_id in " ".join(c.value for c in at.caption)  # the picked variant's run
    # the app loads a run's models with its variant (a shipped organism with several variants on a real base)
    cfg = backend.model_config("qwen3_1_7B", "roman_concrete", variant="8k")
    assert cfg.organism.variant == "8k" and "8k" in cfg.organism.finetuned["qwen3_1_7B"]
    assert backend.model_config("qwen3_1_7B", "roman_concrete").organism.variant == "default"
    # the overview links each organism's finetuned weights on the hub next to its base (none for zoo or local ones)
    assert backend.organism_url("qwen3_1_7B", "roman_concrete", "8k") == (
        "https://huggingface.co/stewy33/Qwen3-1.7B-8k_original_augmented_original_subtle_roman_concrete-e330bf42")
    assert backend.organism_url("toy", "caps") is None and backend.organism_url("tiny", "roman_concrete") is None
    at.switch_page("views/overview.py").run()
    assert not at.exception and sum("(zoo or local weights)" in m.value for m in at.markdown) == 2  # both variants

