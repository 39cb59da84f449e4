"""Diff mining runs: the tokens the organism raises, their NMF topics, and each top token's peak document as heat."""

import streamlit as st

from diffgame.ui import artifacts
from diffgame.ui import heat

import cache
import widgets

settings = cache.settings()
uri = settings.tracking_uri
row = widgets.method_run("diffmining", settings)
run_id = row["run_id"]
paths = cache.artifact_paths(uri, run_id)
tokens_tab, topics_tab, peaks_tab, stats_tab = st.tabs(["Raised tokens", "Topics", "Peaks", "Statistics"])

with tokens_tab:
    widgets.show_ranked(uri, run_id, "diffmining")

with topics_tab:
    if artifacts.has_table(paths, "topics"):
        topics = cache.table(uri, run_id, "topics")
        for k, group in topics.groupby("topic"):
            st.markdown(f"**topic {k}**: " + ", ".join(f"`{heat.display_token(t)}`"
                                                        for t in group.sort_values("rank")["token"]))
        st.dataframe(heat.readable_tokens(topics), hide_index=True, width="stretch")
    else:
        st.info("This run logged no topics (method.diffmining.topics=0).")

with peaks_tab:
    widgets.show_examples(uri, run_id, paths, "diffmining")

with stats_tab:
    widgets.show_metrics(row, "diffmining")
