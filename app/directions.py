"""The pages of the methods that find directions in the store (`pca`, `sae`, `crosscoder`): a run's components or
latents, and for a chosen one its logit-lens tokens, max-activating examples and live steering of both models; then
the run's steered samples, metrics and plots. Everything shown is read from the run's artifacts."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from diffgame.errors import DiffgameError
from diffgame.ui import artifacts
from diffgame.ui import heat
from diffgame.ui import runs as backend

import cache
import widgets

SIGNS = {"+": "+ direction", "-": "− direction"}
LENS_COLUMNS = ["rank", "token", "token_id", "prob"]


@dataclass(frozen=True)
class Directions:
    """How a method names its directions in its artifacts (see the method's module)."""

    table: str
    """The per-direction table (`components` or `latents`)."""
    unit: str
    """Its id column, also the picker's noun (`component` or `latent`)."""
    names: artifacts.DirectionNames
    """How the method names them in vectors, lens readouts, ranked tokens and examples."""
    vector_note: str
    """What a logged vector's length means, for the steering scale."""

    def name(self, layer: int, j: int) -> str:
        return self.names.name(layer, j)

    def examples(self, layer: int, j: int, sign: str) -> str:
        return self.names.examples(layer, j, negated=sign == "-")


DIRECTIONS = {
    "pca": Directions("components", "component", artifacts.COMPONENTS, "Components are unit vectors: the scale is the length added "
                      "to the residual stream (compare the layer's ‖h‖)."),
    "sae": Directions("latents", "latent", artifacts.LATENTS, "The vector is the decoder direction × the latent's max "
                      "activation (raw units): scale 1 adds the latent at its strongest."),
    "crosscoder": Directions("latents", "latent", artifacts.LATENTS, "The vector is the organism decoder direction × the "
                             "latent's max activation (raw units): scale 1 adds the latent at its strongest."),
}


_COLUMNS = {
    "relative_norm": st.column_config.NumberColumn("Δ", help="Relative decoder norm: 0 base-only, ½ shared, 1 "
                                                   "organism-only."),
    "nu_r": st.column_config.NumberColumn("ν^r", help="β^r_base / β^r_org: how well the base's reconstruction "
                                          "is explained by the latent, relative to the organism's."),
    "nu_error": st.column_config.NumberColumn("ν^ε", help="β^ε_base / β^ε_org on the reconstruction error: "
                                              "near 0 for a latent truly specific to the organism."),
    "norm_share": st.column_config.NumberColumn("share of Σ‖δ‖"),
}


def page(method: str, settings) -> None:
    """A dictionary method's page: pick a run, a layer, one of its components or latents and a sign."""
    d = DIRECTIONS[method]
    row = widgets.method_run(method, settings)
    uri, run_id = settings.tracking_uri, row["run_id"]
    paths = cache.artifact_paths(uri, run_id)
    if not artifacts.has_table(paths, d.table):
        st.warning(f"This run logged no `{d.table}` table; re-run it with `diffgame run method={method}`.")
        st.stop()
    table = cache.table(uri, run_id, d.table)
    c1, c2, c3 = st.columns([2, 4, 3])
    picker = f"{method}_{d.unit}"
    # a keyed selectbox keeps its value while that value stays among the options: a new layer starts at its first
    # direction, not at whichever direction of the old layer happens to be listed again
    layer = c1.selectbox("Layer", [int(x) for x in sorted(table["layer"].unique())], key=f"{method}_layer",
                         on_change=st.session_state.pop, args=(picker, None))
    rows = backend.select_rows(table, layer=layer)
    labels = _labels(rows, d)
    j = c2.selectbox(d.unit.capitalize(), list(labels), format_func=labels.get, key=picker,
                     help="Latents read out as evidence (by evidence rank)." if d.unit == "latent" else None)
    sign = c3.radio("Sign", list(SIGNS), format_func=SIGNS.get, horizontal=True, key=f"{method}_sign",
                    help="A direction's sign is arbitrary for PCA; for latents the − direction is the opposite push.")
    name = d.name(layer, j)
    st.dataframe(backend.select_rows(rows, **{d.unit: j}), hide_index=True, width="stretch")

    tabs = st.tabs([f"{d.unit.capitalize()}s", "Lens", "Examples", "Steer", "Samples", "Statistics", "Plots"])
    with tabs[0]:
        if method == "pca":
            _variance(table)
        elif method == "crosscoder":
            _crosscoder(table, rows)
        st.caption(f"{len(rows)} {d.unit}s of layer {layer}")
        st.dataframe(rows, hide_index=True, width="stretch", column_config=_COLUMNS)
    with tabs[1]:
        _lens(uri, run_id, name, sign)
    with tabs[2]:
        found = d.examples(layer, j, sign)
        if found in artifacts.names(paths, "examples"):
            widgets.example_heat(cache.examples(uri, run_id, found), method)
        else:
            st.info(f"This run logged no max-activating examples for `{name}` ({SIGNS[sign]}).")
        if method == "pca" and artifacts.has_table(paths, "token_projections"):
            st.markdown("**Input tokens projecting most** on this component and sign (mean over their occurrences)")
            projections = cache.table(uri, run_id, "token_projections")
            st.dataframe(backend.select_rows(projections, layer=layer, component=j, sign=sign), hide_index=True,
                         width="stretch", key="pca_token_projections")
    with tabs[3]:
        _steer(row, settings, d, name, sign, f"{method}_steer")
    with tabs[4]:
        if artifacts.has_table(paths, "steering_sweep"):
            st.caption("The run's own steering sweep (strength, perplexity ratio under the base, coherent or not) "
                       "and its samples:")
            st.dataframe(cache.table(uri, run_id, "steering_sweep"), hide_index=True, width="stretch")
        widgets.show_samples(uri, run_id, paths, method)
    with tabs[5]:
        widgets.show_metrics(row, method)
    with tabs[6]:
        widgets.show_plots(uri, run_id, paths)


def _labels(rows: pd.DataFrame, d: Directions) -> dict[int, str]:
    """Picker labels: every component, or the evidence latents in evidence order (with their tag)."""
    if "evidence_rank" not in rows:
        return {int(r[d.unit]): f"{d.names.prefix}{int(r[d.unit])} · {r['ratio']:.1%} of the variance"
                for _, r in rows.iterrows()}
    labels = {}
    for _, r in rows[rows["evidence_rank"].notna()].sort_values("evidence_rank").iterrows():
        parts = [f"{d.unit} {int(r[d.unit])}", f"evidence #{int(r['evidence_rank'])}"]
        labels[int(r[d.unit])] = " · ".join(parts + ([r["tag"]] if "tag" in r else []))
    return labels


def _variance(table: pd.DataFrame) -> None:
    st.markdown("**Explained variance ratio** by component, one line per layer")
    chart = alt.Chart(table).mark_line(point=True).encode(
        x=alt.X("component:O"), y=alt.Y("ratio:Q", title="explained variance ratio"), color="layer:N",
        tooltip=["layer", "component", "ratio", "cumulative"])
    st.altair_chart(chart, width="stretch")


def _crosscoder(table: pd.DataFrame, rows: pd.DataFrame) -> None:
    st.markdown("**Tag counts** per layer (relative decoder norm Δ), with the organism-specific latents "
                "(organism-only and both β ratios small)")
    counts = pd.crosstab(table["layer"], table["tag"])
    counts["organism_specific"] = table.groupby("layer")["organism_specific"].sum()
    st.dataframe(counts, width="stretch")
    live = rows[rows["frequency"] > 0].dropna(subset=["relative_norm", "nu_error"])
    st.markdown("**Δ against ν^ε** of this layer's live latents: the organism-specific ones sit at Δ ≈ 1, "
                "ν^ε ≈ 0")
    chart = alt.Chart(live).mark_circle(size=40).encode(
        x=alt.X("relative_norm:Q", title="relative decoder norm Δ (0 base, 1 organism)"),
        y=alt.Y("nu_error:Q", title="ν^ε = β^ε_base / β^ε_org"), color="tag:N",
        tooltip=["latent", "tag", "relative_norm", "nu_r", "nu_error", "frequency"])
    st.altair_chart(chart, width="stretch")


def _lens(uri: str, run_id: str, name: str, sign: str) -> None:
    """The direction's top tokens through the organism's and the base's logit lens."""
    lens = cache.lens_table(uri, run_id)
    if lens is None:
        st.info("This run logged no logit-lens table.")
        return
    graded = artifacts.DirectionNames.signed(name, negated=sign == "-")
    if graded in cache.ranked_tokens(uri, run_id):
        st.caption(f"The organism lens of `{graded}` is graded evidence.")
    for col, lens_of in zip(st.columns(2), ("organism", "base")):
        col.markdown(f"**{lens_of} lens** · `{name}` {SIGNS[sign]}")
        rows = backend.select_rows(lens, name=name, vector=sign, lens=lens_of)[LENS_COLUMNS]
        col.dataframe(heat.readable_tokens(rows), hide_index=True, width="stretch")


def _steer(row: pd.Series, settings, d: Directions, name: str, sign: str, key: str) -> None:
    """Live steering with the chosen direction (sign applied) on the run's base and organism, loaded on request."""
    vectors = cache.vectors(settings.tracking_uri, row["run_id"])
    if name not in vectors:
        st.info(f"This run logged no vector `{name}`.")
        return
    st.caption(d.vector_note)
    if not st.toggle("Load base and organism", key=f"{key}_load",
                     help="Loads the run's two models (cached across pages) to steer them live."):
        return
    try:
        base, org = cache.model_pair(settings.tracking_uri, row["model"], widgets.true_organism(row["organism"]),
                                     settings.overrides, row["params"].get("zoo.size"), row["variant"])
    except DiffgameError as e:
        st.error(widgets.hide(f"cannot load the models: {e}"))
        return
    vector = vectors[name] if sign == "+" else -vectors[name]
    widgets.steer_panel(base, org, artifacts.DirectionNames.signed(name, negated=sign == "-"), vector, key)
