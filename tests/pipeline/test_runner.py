"""The runner: `method=[kl,normdiff]` on one preprocess run, artifacts read back by `diffgame.tracking.artifacts` equal a direct
two-model computation, a finished diff run is reused, and `diffing` mode without a store is a one-line error."""

import pytest
import torch

from diffgame import tracking
from diffgame.errors import StoreError
from diffgame.pipeline.chain import run_one
from diffgame.pipeline.runner import headline
from diffgame.tracking import artifacts

from _tiny_models import make_pair, tiny_cfg, write_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    base, org = make_pair(root / "models", noise=0.2)
    data = write_data(root / "data", n_text=12, n_chat=8)
    return root, base, org, data


def _cfg(tiny, db="mlflow.db", **pp):
    root, base, org, data = tiny
    cfg = tiny_cfg(base, org, data, root / db, dtype="float32", **pp)
    cfg.method = {"kl": {"top_k_examples": 5}, "normdiff": {"top_k_examples": 5}}
    return cfg


def test_run_log_read_back_and_reuse(tiny):
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny)
    rows = run_one(cfg)
    assert [(r.stage, r.method, r.reused) for r in rows] == [("diff", "kl", False), ("diff", "normdiff", False)]
    kl_id, nd_id = rows[0].run_id, rows[1].run_id
    runs = {r: tracking.client().get_run(r) for r in (kl_id, nd_id)}
    pre_ids = {runs[r].data.tags[tracking.TAG_PREPROCESS] for r in runs}
    assert len(pre_ids) == 1  # both methods on one preprocess run
    assert runs[kl_id].data.tags[tracking.TAG_METHOD] == "kl"
    assert runs[kl_id].data.tags[tracking.TAG_ORGANISM] == cfg.organism.name
    assert 10 <= len(runs[kl_id].data.metrics) <= 60 and 10 <= len(runs[nd_id].data.metrics) <= 60
    assert rows[0].headline and all(runs[kl_id].data.metrics[k] == v for k, v in rows[0].headline.items())

    arts = set(artifacts.list_artifacts(kl_id))
    assert {"tables/stats.parquet", "tables/tokens.parquet", "examples/max_kl.json", "examples/mean_kl.json",
            "plots/distribution.png", "evidence/ranked_tokens.json"} <= arts
    assert "vectors.safetensors" in artifacts.list_artifacts(nd_id)

    # KL: the logged per-token scores of the top examples equal full forwards of both models on those tokens
    base = AutoModelForCausalLM.from_pretrained(cfg.model.id).eval()
    org = AutoModelForCausalLM.from_pretrained(cfg.organism.finetuned.tiny.default.id).eval()
    max_kl = artifacts.load_examples(kl_id, "max_kl")
    assert len(max_kl) == 5 and max_kl[0].score == max(e.score for e in max_kl)
    with torch.no_grad():
        for ex in max_kl[:3]:
            ids = torch.tensor([ex.token_ids])
            lp_o, lp_b = org(ids).logits[0].log_softmax(-1), base(ids).logits[0].log_softmax(-1)
            direct = (lp_o.exp() * (lp_o - lp_b)).sum(-1)
            assert ex.token_scores == pytest.approx(direct.tolist(), abs=1e-4, rel=1e-4)
            assert ex.score == pytest.approx(float(direct.max()), abs=1e-4)
    table = artifacts.load_table(kl_id, "stats")
    overall = table[(table.dataset == "all") & (table.group == "all")]
    assert float(overall["mean"].iloc[0]) == pytest.approx(runs[kl_id].data.metrics["kl/all/mean"])

    # normdiff: per-token ||h_org - h_base|| at layer 1 equals the hidden states of direct forwards
    # (hidden_states[i + 1] is block i's output; the last entry would be after the final norm, so not layer 3)
    top = artifacts.load_examples(nd_id, "layer1_max_norm")
    with torch.no_grad():
        for ex in top[:3]:
            ids = torch.tensor([ex.token_ids])
            hb = base(ids, output_hidden_states=True).hidden_states[2][0]
            ho = org(ids, output_hidden_states=True).hidden_states[2][0]
            assert ex.token_scores == pytest.approx((ho - hb).norm(dim=-1).tolist(), abs=1e-4, rel=1e-4)
    vectors = artifacts.load_vectors(nd_id)
    assert {"normdiff/layer1/mean", "normdiff/layer3/mean", "normdiff/layer3/pos0"} <= set(vectors)
    assert vectors["normdiff/layer3/mean"].shape == (32,)
    assert artifacts.load_ranked_tokens(kl_id)["tokens_by_mean_kl"].scores[0] > 0

    # a second run with the same config reuses both finished runs
    again = run_one(_cfg(tiny))
    assert [(r.run_id, r.reused) for r in again] == [(kl_id, True), (nd_id, True)]
    assert again[0].headline == rows[0].headline


def test_diffing_mode_without_store_names_the_command(tiny):
    """The hint names the store's identity and repeats the user's own overrides (so it rebuilds the same store)."""
    cfg = _cfg(tiny, db="empty.db")
    cfg.pipeline.mode = "diffing"
    cfg.overrides = ["zoo.size=micro", "organism.variant=default", "method=[kl]", "pipeline.mode=diffing"]
    with pytest.raises(StoreError, match=r"run `diffgame preprocess model=tiny organism=\S+ dataset=\S+ "
                                         r"preprocessing.layers=\[\S+\] zoo.size=micro organism.variant=default "
                                         r"method=\[kl\]`"):
        run_one(cfg)


def test_missing_artifact_lists_what_exists(tiny):
    from diffgame.errors import TrackingError

    rows = run_one(_cfg(tiny))
    with pytest.raises(TrackingError, match=r"has no artifact 'examples/nope.json'; it has: .*examples/max_kl.json"):
        artifacts.load_examples(rows[0].run_id, "nope")


def test_headline_picks_patterns_in_order():
    metrics = {"kl/all/mean": 1.0, "kl/chat/role/user/mean": 0.1, "kl/chat/role/assistant/mean": 2.0, "kl/x/max": 3}
    assert list(headline(metrics, ("kl/all/mean", "kl/*/role/assistant/mean", "kl/*/role/user/mean"))) == [
        "kl/all/mean", "kl/chat/role/assistant/mean", "kl/chat/role/user/mean"]
    assert list(headline(metrics, ("nothing",), limit=2)) == ["kl/all/mean", "kl/chat/role/assistant/mean"]


def test_micro_zoo_model_with_itself_is_zero(micro_cfg):
    """The zoo base diffed against itself (as a `full` organism): KL and normdiff are 0 through the whole runner."""
    from diffgame.config.compose import settings
    from diffgame.zoo import locate

    cfg = micro_cfg("organism=caps", "method=[kl,normdiff]", "dataset.sources.generic_text.max_samples=8",
                    "dataset.sources.generic_chat.max_samples=8", "dataset.sources.organism.max_samples=8",
                    "preprocessing.dtype=float32")
    base_dir, _ = locate(settings(cfg))
    cfg.organism.finetuned.toy.default = {"kind": "full", "id": str(base_dir), "subfolder": None, "revision": None}
    rows = run_one(cfg)
    metrics = {r.method: tracking.client().get_run(r.run_id).data.metrics for r in rows}
    assert metrics["kl"]["kl/all/max"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["normdiff"]["normdiff/all/max"] == 0.0
    assert all(float(v.abs().max()) == 0.0 for v in artifacts.load_vectors(rows[1].run_id).values())


def test_reused_run_graded_under_older_rules_is_regraded(micro_cfg):
    """A finished diff run is reused as is under the current grading version, and graded again from its logged
    evidence (ranked tokens, steering samples) when its tag names an older one; the control's run that grading
    makes is the one `organism=control` reuses."""
    from diffgame.grading.score import GRADING_VERSION

    adl = ("method=adl", "method.adl.max_samples=16", "method.adl.steering_prompts=2", "method.adl.steering_tokens=8",
           "method.adl.steering_alphas=[1.0]", "method.adl.patchscope_scales=[]")
    run_one(micro_cfg("organism=control", *adl[:1], *adl[2:], "method.adl.max_samples=8"))  # another config
    cfg = micro_cfg("organism=roman_concrete", *adl)
    (first,) = run_one(cfg)
    # grading did not borrow the control run of another config: it made one with this config, which running the
    # control itself then reuses
    (control,) = run_one(micro_cfg("organism=control", *adl))
    assert control.reused
    run = tracking.client().get_run(first.run_id)
    assert run.data.tags[tracking.TAG_GRADING] == str(GRADING_VERSION)
    graded = {k: v for k, v in run.data.metrics.items() if k.startswith("grade/")}
    assert {"grade/precision_at_20", "grade/relative/precision_at_20", "grade/identification_rank",
            "grade/samples/steered_hit_rate"} <= set(graded)

    def rerun() -> dict[str, float]:
        (again,) = run_one(cfg)
        assert (again.run_id, again.reused) == (first.run_id, True)
        return tracking.client().get_run(first.run_id).data.metrics

    stale = tracking.StageRun(first.run_id)
    stale.log_metrics({k: -1.0 for k in graded})
    assert all(rerun()[k] == -1.0 for k in graded)  # current version: not graded again
    stale.set_tags({tracking.TAG_GRADING: "1"})
    regraded = rerun()
    assert {k: regraded[k] for k in graded} == pytest.approx(graded)
    assert tracking.client().get_run(first.run_id).data.tags[tracking.TAG_GRADING] == str(GRADING_VERSION)


def test_control_store_made_for_grading_is_the_one_organism_control_reuses(micro_cfg):
    """Grading a store method makes the control's store and run beside the organism's; `organism=control` with the
    same settings then reuses both (the control plan composes the control on the same base: same data, same
    fingerprints), instead of extracting the control's activations a second time."""
    small = ("method=kl", *(f"dataset.sources.{s}.max_samples=6" for s in ("generic_text", "generic_chat", "organism")))
    (caps,) = run_one(micro_cfg("organism=caps", *small))
    assert "grade/relative/precision_at_20" in tracking.client().get_run(caps.run_id).data.metrics
    pre, kl = run_one(micro_cfg("organism=control", *small, "pipeline.mode=preprocessing")) + run_one(
        micro_cfg("organism=control", *small))
    assert pre.reused and kl.reused
