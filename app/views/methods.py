"""Any method's runs, picked by name: statistics, examples, tokens, tables, samples and plots (the generic page)."""

import streamlit as st

import cache
import widgets

settings = cache.settings()
runs = widgets.require_runs(settings)
method = st.selectbox("Method", sorted(runs["method"].unique()), key="methods_method")
widgets.method_page(method, settings)
