"""The dictionary methods' pages (pca, sae, crosscoder) under AppTest, against real micro-zoo runs: with a layer, a
component or latent and a sign picked, the tables, charts, tag counts, lens tokens, examples, samples and metrics shown
equal the run's artifacts, and live steering adds the chosen direction's logged vector (its continuations equal
steering the same models directly)."""

import re

import pandas as pd
import pytest

from diffgame import tracking
from diffgame.tracking import artifacts
from diffgame.ui import heat, live
from diffgame.ui import runs as backend

from _app_store import APP_OVERRIDES, fill_dictionary_store, open_app

pytestmark = pytest.mark.slow
LENS_COLUMNS = ["rank", "token", "token_id", "prob"]


@pytest.fixture(scope="module")
def store(zoo_uri):
    import streamlit as st

    uri = fill_dictionary_store(zoo_uri)
    runs = backend.latest(backend.runs_frame("diff"))
    st.cache_data.clear()  # the app's run lists are cached per process for 30 s: no list from before these runs,
    yield uri, {(r["organism"], r["method"]): r for _, r in runs.iterrows()}
    st.cache_data.clear()  # and none of this store's for the app tests that add runs after it


@pytest.fixture(scope="module")
def caps_pair(store, zoo_uri):
    from diffgame.config.compose import compose, settings
    from diffgame.models.loading import load_pair
    from diffgame.zoo.pairs import resolve_pair

    tracking.set_uri(zoo_uri)
    return load_pair(resolve_pair(settings(compose(["organism=caps", *APP_OVERRIDES]))))


def _page(monkeypatch, uri, method, row):
    """The method's page with `row`'s run picked."""
    at = open_app(monkeypatch, uri, method)
    at.selectbox(key=f"{method}_run").set_value(backend.run_label(row)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _frames(at, columns) -> list[pd.DataFrame]:
    """The dataframes shown with exactly these columns, in page order."""
    return [d.value.reset_index(drop=True) for d in at.dataframe if list(d.value.columns) == list(columns)]


def _chart_data(at) -> list[pd.DataFrame]:
    """The data behind each Vega-Lite chart on the page."""
    import pyarrow as pa

    return [pa.ipc.open_stream(ds.data.data).read_all().to_pandas()
            for chart in at.get("vega_lite_chart") for ds in chart.proto.datasets]


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def _assert_lens(at, lens: pd.DataFrame, name: str, sign: str) -> pd.DataFrame:
    """The organism and base lens tables shown are the logged rows of `name` with `sign`; returns the organism's."""
    shown = _frames(at, LENS_COLUMNS)
    assert len(shown) == 2
    for table, lens_of in zip(shown, ("organism", "base")):
        expected = lens[(lens["name"] == name) & (lens["vector"] == sign) & (lens["lens"] == lens_of)]
        assert len(expected) > 0
        pd.testing.assert_frame_equal(table, heat.readable_tokens(expected[LENS_COLUMNS].reset_index(drop=True)),
                                      check_dtype=False)  # tokens shown decoded (`␣The` for `ĠThe`)
    return shown[0]


def _assert_examples(at, examples: list) -> None:
    """The examples caption counts the logged list; the first heat block is its best example, token by token."""
    assert f"{len(examples)} of {len(examples)} examples" in _captions(at)
    html = at.html[0].value
    assert html.count('class="tok"') == len(examples[0].tokens)
    assert re.findall(r'title="([^"]+)"', html) == [f"{s:.4g}" for s in examples[0].token_scores]


def test_pca_page_components_variance_lens_and_examples(monkeypatch, store):
    uri, latest = store
    row = latest[("caps", "pca")]
    run_id = row["run_id"]
    comps = artifacts.load_table(run_id, "components")
    lens = artifacts.load_table(run_id, "lens")
    ranked = artifacts.load_ranked_tokens(run_id)
    at = _page(monkeypatch, uri, "pca", row)
    assert at.selectbox(key="pca_layer").options == [str(x) for x in sorted(comps["layer"].unique())]
    layer = int(comps["layer"].max())
    at.selectbox(key="pca_layer").set_value(layer).run()
    rows = comps[comps["layer"] == layer].reset_index(drop=True)
    assert at.selectbox(key="pca_component").options == [
        f"pc{k} · {r:.1%} of the variance" for k, r in zip(rows["component"], rows["ratio"])]
    at.selectbox(key="pca_component").set_value(1).run()
    at.radio(key="pca_sign").set_value("-").run()
    selected, table = _frames(at, comps.columns)
    pd.testing.assert_frame_equal(table, rows, check_dtype=False)
    pd.testing.assert_frame_equal(selected, rows[rows["component"] == 1].reset_index(drop=True), check_dtype=False)
    (variance,) = _chart_data(at)  # every layer's explained variance ratio
    pd.testing.assert_frame_equal(variance[list(comps.columns)], comps, check_dtype=False)

    name = f"layer{layer}/pc1"
    organism_lens = _assert_lens(at, lens, name, "-")
    # pc1 is graded: the same readout, shown decoded
    assert list(organism_lens["token"]) == [heat.display_token(t) for t in ranked[f"{name}/neg"].tokens]
    assert f"The organism lens of `{name}/neg` is graded evidence." in _captions(at)
    _assert_examples(at, artifacts.load_examples(run_id, f"layer{layer}_pc1_neg"))  # the − direction's examples
    proj = artifacts.load_table(run_id, "token_projections")
    expected = proj[(proj["layer"] == layer) & (proj["component"] == 1) & (proj["sign"] == "-")]
    shown = [df.value.reset_index(drop=True) for df in at.dataframe if list(df.value.columns) == list(proj.columns)]
    assert len(expected) and any(f.equals(expected.reset_index(drop=True)) for f in shown)  # the input tokens table

    last = int(rows["component"].max())  # beyond the graded components: lens tokens, no evidence note
    at.selectbox(key="pca_component").set_value(last).run()
    at.radio(key="pca_sign").set_value("+").run()
    _assert_lens(at, lens, f"layer{layer}/pc{last}", "+")
    assert f"layer{layer}/pc{last}" not in ranked and not any("graded evidence" in c for c in _captions(at))
    _assert_examples(at, artifacts.load_examples(run_id, f"layer{layer}_pc{last}"))
    assert not at.exception


def test_sae_page_evidence_latents_samples_and_live_steering(monkeypatch, store, caps_pair):
    uri, latest = store
    row = latest[("caps", "sae")]
    run_id = row["run_id"]
    latents = artifacts.load_table(run_id, "latents")
    ranked = artifacts.load_ranked_tokens(run_id)
    at = _page(monkeypatch, uri, "sae", row)
    layers = sorted(latents["layer"].unique())
    layer = int(layers[len(layers) // 2])
    at.selectbox(key="sae_layer").set_value(layer).run()
    rows = latents[latents["layer"] == layer].reset_index(drop=True)
    evidence = rows[rows["evidence_rank"].notna()].sort_values("evidence_rank")
    picker = at.selectbox(key="sae_latent")
    assert picker.options == [f"latent {j} · evidence #{i}" for i, j in enumerate(evidence["latent"])]
    j = int(evidence["latent"].iloc[1])
    picker.set_value(j).run()
    selected, table = _frames(at, latents.columns)
    pd.testing.assert_frame_equal(table, rows, check_dtype=False)
    pd.testing.assert_frame_equal(selected, rows[rows["latent"] == j].reset_index(drop=True), check_dtype=False)
    assert f"{len(rows)} latents of layer {layer}" in _captions(at)

    name = f"layer{layer}/latent{j}"
    organism_lens = _assert_lens(at, artifacts.load_table(run_id, "lens"), name, "+")
    assert list(organism_lens["token"]) == [heat.display_token(t) for t in ranked[name].tokens]
    assert list(organism_lens["prob"]) == pytest.approx(ranked[name].scores)
    _assert_examples(at, artifacts.load_examples(run_id, f"layer{layer}_latent{j}"))

    samples = artifacts.load_samples(run_id, "steering")  # the run's own sweep and samples
    assert at.selectbox(key="sae_samples").options == artifacts.names(artifacts.list_artifacts(run_id), "samples")
    assert any(len(d.value) == len(samples) and "steered" in d.value.columns for d in at.dataframe)
    sweep = artifacts.load_table(run_id, "steering_sweep")
    pd.testing.assert_frame_equal(_frames(at, sweep.columns)[0], sweep, check_dtype=False)
    stats = next(d.value for d in at.dataframe if list(d.value.columns) == [backend.run_label(row)])
    assert stats.iloc[:, 0].to_dict() == pytest.approx(row["metrics"], nan_ok=True)

    # the − direction: no examples were logged for it; steer both models live with minus the latent's vector
    at.radio(key="sae_sign").set_value("-").run()
    assert any(i.value == f"This run logged no max-activating examples for `{name}` (− direction)." for i in at.info)
    at.toggle(key="sae_steer_load").set_value(True).run()
    assert at.slider(key="sae_steer_layer").value == layer  # the latent's own layer
    vector = artifacts.load_vectors(run_id)[name]
    scale = 200.0 / float(vector.norm())
    at.number_input(key="sae_steer_scale").set_value(scale).run()
    at.slider(key="sae_steer_tokens").set_value(8).run()
    at.button(key="sae_steer_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    out = at.session_state["sae_steer_out"]
    base, org = caps_pair
    prompt = at.text_area(key="sae_steer_prompt").value
    ids = live.encode(base, messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)[0]
    for handle in (base, org):
        assert out[(handle.role, False)] == live.generate(handle, ids, 8)
        assert out[(handle.role, True)] == live.generate(handle, ids, 8, vector=-vector, layer=layer, scale=scale)
    assert out[("organism", True)] != out[("organism", False)]  # a large push changes the continuation
    assert any(c.startswith(f"steered with `{name}/neg`") for c in _captions(at))


def test_crosscoder_page_tags_beta_ratios_and_scatter(monkeypatch, store):
    uri, latest = store
    row = latest[("caps", "crosscoder")]
    run_id = row["run_id"]
    latents = artifacts.load_table(run_id, "latents")
    ranked = artifacts.load_ranked_tokens(run_id)
    at = _page(monkeypatch, uri, "crosscoder", row)
    counts = next(d.value for d in at.dataframe if "organism_specific" in d.value.columns
                  and "latent" not in d.value.columns)
    for layer, group in latents.groupby("layer"):
        shown = counts.loc[layer]
        assert {t: int(shown[t]) for t in group["tag"].unique()} == group["tag"].value_counts().to_dict()
        assert int(shown.drop("organism_specific").sum()) == len(group)
        assert int(shown["organism_specific"]) == int(group["organism_specific"].sum()) == int(
            row["metrics"][f"crosscoder/layer{layer}/organism_specific"])

    layer = int(latents["layer"].max())
    rows = latents[latents["layer"] == layer].reset_index(drop=True)
    evidence = rows[rows["evidence_rank"].notna()].sort_values("evidence_rank")
    # pick, on the first layer, a latent the new layer also lists (not first) where there is one: switching the layer
    # must still start the picker at the new layer's first evidence latent
    shown = at.selectbox(key="crosscoder_latent")
    shared = [j for j in shown.options if int(j.split()[1]) in set(evidence["latent"].iloc[1:])]
    shown.set_value(int((shared or shown.options)[-1].split()[1])).run()
    at.selectbox(key="crosscoder_layer").set_value(layer).run()
    picker = at.selectbox(key="crosscoder_latent")
    assert picker.options == [f"latent {j} · evidence #{i} · {t}"
                              for i, (j, t) in enumerate(zip(evidence["latent"], evidence["tag"]))]
    assert picker.value == int(evidence["latent"].iloc[0])
    table = _frames(at, latents.columns)[1]  # tags and β ratios (ν^r, ν^ε) per latent
    pd.testing.assert_frame_equal(table, rows, check_dtype=False)
    (scatter,) = _chart_data(at)  # Δ against ν^ε of the layer's live latents
    live_rows = rows[(rows["frequency"] > 0) & rows["nu_error"].notna()].reset_index(drop=True)
    assert list(scatter["latent"]) == list(live_rows["latent"]) and list(scatter["tag"]) == list(live_rows["tag"])
    assert list(scatter["relative_norm"]) == pytest.approx(list(live_rows["relative_norm"]))
    assert list(scatter["nu_error"]) == pytest.approx(list(live_rows["nu_error"]))

    name = f"layer{layer}/latent{picker.value}"
    organism_lens = _assert_lens(at, artifacts.load_table(run_id, "lens"), name, "+")
    assert list(organism_lens["token"]) == [heat.display_token(t) for t in ranked[name].tokens]
    _assert_examples(at, artifacts.load_examples(run_id, f"layer{layer}_latent{picker.value}"))
    at.radio(key="crosscoder_sign").set_value("-").run()
    _assert_lens(at, artifacts.load_table(run_id, "lens"), name, "-")
    assert any(i.value.startswith(f"This run logged no max-activating examples for `{name}`") for i in at.info)
    assert not at.exception


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_steering_vectors_are_an_error_panel(monkeypatch, tmp_path, store, how):
    """A run whose `vectors.safetensors` was cut short or deleted: the page shows one error panel naming the run and
    the file, no Streamlit exception, and the other pages keep working."""
    import streamlit as st

    from _app_store import corrupt_artifact

    uri, latest = store
    row = latest[("caps", "pca")]
    corrupt_artifact(monkeypatch, tmp_path, row["run_id"], "vectors.safetensors", how)
    try:
        at = _page(monkeypatch, uri, "pca", row)
        assert not at.exception, [e.value for e in at.exception]
        panel, = [e.value for e in at.error]
        assert panel.startswith(f"This page cannot show run `{row['run_id']}` (pca on caps): run '{row['run_id']}'")
        assert "vectors.safetensors" in panel and f"mlflow runs delete --run-id {row['run_id']}" in panel
        at.switch_page("views/overview.py").run()
        assert not at.exception and not at.error
    finally:
        st.cache_data.clear()
