"""Compare: the same method across organisms, or all methods on one organism, side by side."""

import streamlit as st

import cache
import widgets
from diffgame.ui import runs as backend

settings = cache.settings()
st.title("Compare runs")
runs = backend.latest(widgets.require_runs(settings))

mode = st.radio("Compare", ["one method across organisms", "methods on one organism", "pick runs"],
                horizontal=True, key="compare_mode")
if mode == "one method across organisms":
    method = st.selectbox("Method", sorted(runs["method"].unique()), key="compare_method")
    sel = runs[runs["method"] == method].sort_values("organism")
elif mode == "methods on one organism":
    organism = st.selectbox("Organism", backend.organism_order(runs["organism"]), key="compare_organism")
    sel = runs[runs["organism"] == organism].sort_values("method")
else:
    labels = [backend.run_label(r) for _, r in runs.iterrows()]
    picked = st.multiselect("Runs", labels, default=labels[:2], key="compare_runs")
    sel = runs[[lbl in picked for lbl in labels]]
if sel.empty:
    st.info("Pick at least one run.")
    st.stop()

contains = st.text_input("Filter metrics", key="compare_filter", placeholder="e.g. /mean or grade/")
table = backend.metrics_table(sel, contains)
st.dataframe(table, width="stretch")
if not table.empty:
    metric = st.selectbox("Chart metric", list(table.index), key="compare_chart_metric")
    st.bar_chart(table.loc[metric].dropna().rename(metric), horizontal=True)
