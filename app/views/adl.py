"""ADL runs: logit-lens token tables per layer and position, the patchscope sweep, steered vs unsteered samples."""

import streamlit as st

from diffgame.ui import artifacts
from diffgame.ui import heat
from diffgame.ui import runs as backend

import cache
import widgets

settings = cache.settings()
uri = settings.tracking_uri
row = widgets.method_run("adl", settings)
run_id = row["run_id"]
paths = cache.artifact_paths(uri, run_id)
lens_tab, ranked_tab, ps_tab, steer_tab, causal_tab, stats_tab, plots_tab = st.tabs(
    ["Token tables", "Evidence lists", "Patchscope", "Steering", "Causal effect", "Statistics", "Plots"])

with lens_tab:
    lens = cache.lens_table(uri, run_id)
    if lens is not None:
        c1, c2, c3, c4 = st.columns(4)
        layer = c1.selectbox("Layer", sorted(lens["layer"].unique()), key="adl_layer")
        slot = c2.selectbox("Position", sorted(lens["slot"].unique()), key="adl_slot",
                            help="posN: N-th token of a document; assistant*: around the assistant turn.")
        vector = c3.selectbox("Vector", sorted(lens["vector"].unique()), key="adl_vector")
        lens_of = c4.selectbox("Lens", sorted(lens["lens"].unique()), key="adl_lens")
        st.dataframe(heat.readable_tokens(backend.select_rows(lens, layer=layer, slot=slot, vector=vector,
                                                              lens=lens_of)), hide_index=True, width="stretch")
    else:
        st.info("This run logged no logit-lens table.")

with ranked_tab:
    widgets.show_ranked(uri, run_id, "adl")

with ps_tab:
    if artifacts.has_table(paths, "patchscope"):
        ps = cache.table(uri, run_id, "patchscope")
        c1, c2 = st.columns(2)
        ps_layer = c1.selectbox("Layer", sorted(ps["layer"].unique()), key="adl_ps_layer")
        ps_slot = c2.selectbox("Position", sorted(ps["slot"].unique()), key="adl_ps_slot")
        st.dataframe(heat.readable_tokens(backend.select_rows(ps, layer=ps_layer, slot=ps_slot)), hide_index=True,
                     width="stretch")
    else:
        st.info("This run logged no patchscope sweep.")

with steer_tab:
    samples = cache.steering_samples(uri, run_id)
    if samples:
        model = st.radio("Model", ["organism", "base"], horizontal=True, key="adl_steer_model")
        for s in backend.side_by_side(samples, model):
            st.markdown(f"**{s['prompt']}** · α = {s['alpha']}")
            left, right = st.columns(2)
            left.text(f"unsteered: {s['unsteered']}")
            right.text(f"steered: {s['steered']}")
    widgets.show_samples(uri, run_id, paths, "adl")
    widgets.show_tables(uri, run_id, paths, "adl")

with causal_tab:
    causal = backend.causal_summary(row["metrics"])
    if causal.empty:
        st.info("This run has no causal effect (method.adl.causal_samples=0).")
    else:
        st.caption("Change of the organism's next-token loss (nats/token) with the difference direction projected "
                   "out at the steering layer, against random directions; and the base with δ added.")
        st.dataframe(causal, hide_index=True, width="stretch")
        if "causal" in artifacts.names(paths, "plots"):
            st.image(cache.plot_bytes(uri, run_id, "causal"))

with stats_tab:
    widgets.show_metrics(row, "adl")

with plots_tab:
    widgets.show_plots(uri, run_id, paths)
