"""A new diffing method added without touching any diffgame module: a toy method registered from this test (class,
config dataclass and a `method/toy_mean.yaml` in a user config folder) runs through the real pipeline on the micro
zoo, is logged to MLflow, read back equal to a direct recomputation from the store, reused by fingerprint, and shown
by the app's generic method page."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffgame import tracking
from diffgame.config import registry
from diffgame.methods.base import Method, MethodContext, MethodResult
from diffgame.pipeline.chain import run_one
from diffgame.pipeline.runner import open_run_store
from diffgame.records.evidence import RankedTokens
from diffgame.tracking import artifacts
from diffgame.ui import heat

from _app_store import APP_OVERRIDES

NAME = "toy_mean"
OVERRIDES = ("organism=caps", f"method={NAME}", f"method.{NAME}.top_k=3",
             *(f"dataset.sources.{s}.max_samples=8" for s in ("generic_text", "generic_chat", "organism")))
HOME = str(Path(__file__).resolve().parents[2] / "app" / "Home.py")


@dataclass
class ToyMeanConfig:
    top_k: int = 5
    """Token ids kept in the ranked list (largest mean difference norm first)."""


class ToyMeanMethod(Method):
    """Mean per-token ||h_org - h_base|| of every dataset at the middle stored layer."""

    needs_store = True
    needs_models = False
    headline = (f"{NAME}/*/mean_norm",)

    def run(self, ctx: MethodContext) -> MethodResult:
        store = ctx.store
        layer = store.layers[len(store.layers) // 2]
        result, rows, ids, norms = MethodResult(), [], [], []
        for dataset in store.datasets:
            norm = torch.cat([(o.float() - b.float()).norm(dim=-1) for _, b, o in store.iter_batches(dataset, layer)])
            ids.append(store.tokens(dataset).input_ids)
            norms.append(norm)
            result.metrics[f"{NAME}/{dataset}/mean_norm"] = float(norm.mean())
            rows.append({"dataset": dataset, "layer": layer, "n_tokens": len(norm), "mean_norm": float(norm.mean()),
                         "max_norm": float(norm.max())})
        result.tables["per_dataset"] = pd.DataFrame(rows)
        ids, norms = torch.cat(ids), torch.cat(norms).double()
        uniq, inverse = torch.unique(ids, return_inverse=True)
        means = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, norms) / torch.bincount(inverse)
        top = means.topk(min(self.config.top_k, len(uniq)))
        top_ids = uniq[top.indices].tolist()
        result.ranked_tokens["top_tokens"] = RankedTokens(
            top_ids, list(ctx.tokenizer.convert_ids_to_tokens(top_ids)), top.values.tolist())
        return result


@pytest.fixture
def toy_method(monkeypatch, tmp_path):
    """`toy_mean` registered and its YAML on the user config path, for this test only."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / f"{NAME}.yaml").write_text(f"{NAME}: {{}}\n")
    monkeypatch.setenv("DIFFGAME_CONFIG_PATH", str(tmp_path))
    registry.register(NAME, ToyMeanMethod, ToyMeanConfig)
    yield
    registry.unregister(NAME)


def _expected(pre_run_id: str, top_k: int):
    """Metrics, table and ranked tokens recomputed directly from the preprocess run's store (pandas groupby)."""
    store = open_run_store(pre_run_id)
    layer = store.layers[len(store.layers) // 2]
    metrics, rows, frames = {}, [], []
    for d in store.datasets:
        diff = store.activations(d, "organism", layer).double() - store.activations(d, "base", layer).double()
        norm = torch.linalg.vector_norm(diff, dim=1)
        metrics[f"{NAME}/{d}/mean_norm"] = norm.mean().item()
        rows.append({"dataset": d, "layer": layer, "n_tokens": len(norm), "mean_norm": norm.mean().item(),
                     "max_norm": norm.max().item()})
        frames.append(pd.DataFrame({"id": store.tokens(d).input_ids.numpy(), "norm": norm.numpy()}))
    per_token = pd.concat(frames).groupby("id")["norm"].mean().sort_values(ascending=False).head(top_k)
    return store, metrics, pd.DataFrame(rows), per_token


def _tokens(cfg, ids: list[int]) -> list[str]:
    """Token strings of `ids` under the plan's (base) tokenizer."""
    from diffgame.pipeline.planner import make_plan

    return list(make_plan(cfg).tokenizer.convert_ids_to_tokens(ids))


@pytest.mark.slow
def test_new_method_runs_logs_and_reads_back(toy_method, micro_cfg):
    assert NAME in registry.known_methods()
    cfg = micro_cfg(*OVERRIDES)
    rows = run_one(cfg)
    assert [(r.stage, r.method, r.organism, r.reused) for r in rows] == [("diff", NAME, "caps", False)]
    run = tracking.client().get_run(rows[0].run_id)
    tags = run.data.tags
    assert (tags[tracking.TAG_METHOD], tags[tracking.TAG_STAGE], run.info.status) == (NAME, "diff", "FINISHED")
    pre = tracking.client().get_run(tags[tracking.TAG_PREPROCESS])
    assert pre.data.tags[tracking.TAG_STAGE] == "preprocess" and pre.info.status == "FINISHED"
    assert run.data.params["method.top_k"] == "3"  # the runner logs a method's fields as method.<field>

    store, metrics, table, per_token = _expected(pre.info.run_id, 3)
    assert set(store.datasets) == {"generic_text", "generic_chat", "organism"}
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith(f"{NAME}/")}
    assert logged == pytest.approx(metrics, rel=1e-5)
    assert {"tables/per_dataset.parquet", artifacts.RANKED} <= set(artifacts.list_artifacts(run.info.run_id))
    pd.testing.assert_frame_equal(artifacts.load_table(run.info.run_id, "per_dataset"), table,
                                  check_dtype=False, rtol=1e-5)
    ranked = artifacts.load_ranked_tokens(run.info.run_id)
    assert list(ranked) == ["top_tokens"]
    top = ranked["top_tokens"]
    assert top.token_ids == [int(i) for i in per_token.index]
    assert top.scores == pytest.approx(per_token.tolist(), rel=1e-5)
    assert top.tokens == _tokens(cfg, top.token_ids)

    again = run_one(micro_cfg(*OVERRIDES))
    assert [(r.run_id, r.method, r.reused) for r in again] == [(run.info.run_id, NAME, True)]


@pytest.mark.slow
def test_generic_method_page_shows_new_method(toy_method, micro_cfg, zoo_uri, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from diffgame.ui import runs as backend

    (row,) = run_one(micro_cfg(*OVERRIDES))  # made here or reused from the test above
    run = tracking.client().get_run(row.run_id)
    st.cache_data.clear()  # run lists cached by an earlier AppTest in this process would miss the new run
    monkeypatch.setattr(sys, "argv", ["Home.py", "--tracking-uri", zoo_uri, *APP_OVERRIDES])
    at = AppTest.from_file(HOME, default_timeout=600)
    at.run()
    at.switch_page("views/methods.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert NAME in at.selectbox(key="methods_method").options
    at.selectbox(key="methods_method").set_value(NAME).run()
    picker = at.selectbox(key=f"{NAME}_run")
    label = next(o for o in picker.options if o.endswith(row.run_id[:8]))  # the control's toy_mean run is there too
    picker.set_value(label).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"{NAME} runs" in t.value for t in at.title)
    assert row.run_id[:8] in at.selectbox(key=f"{NAME}_run").value
    assert at.selectbox(key=f"{NAME}_ranked").value == "top_tokens"
    assert at.selectbox(key=f"{NAME}_table").value == "per_dataset"

    frames = [d.value for d in at.dataframe]
    metrics = next(f for f in frames if f"{NAME}/organism/mean_norm" in f.index)
    assert list(metrics.columns) == [backend.run_label({"organism": "caps", "method": NAME, "model": "toy",
                                                        "run_id": row.run_id})]
    assert metrics.iloc[:, 0].dropna().to_dict() == pytest.approx(dict(run.data.metrics))
    ranked = artifacts.load_ranked_tokens(row.run_id)["top_tokens"]
    shown = next(f for f in frames if "token_id" in f.columns)
    assert shown["token_id"].tolist() == ranked.token_ids and shown["token"].tolist() == [heat.display_token(t) for t in ranked.tokens]
    table = next(f for f in frames if "mean_norm" in f.columns)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), artifacts.load_table(row.run_id, "per_dataset"))
