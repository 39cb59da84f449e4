"""Overview: which models x organisms x methods have runs, the grade matrix against the control, run links."""

import streamlit as st

import cache
import widgets
from diffgame.ui import runs as backend
from diffgame.errors import DiffgameError

settings = cache.settings()
st.title("diffgame overview")
runs = widgets.require_runs(settings)

st.subheader("Runs by model, organism and method")
st.dataframe(backend.coverage(runs), width="stretch")

st.subheader("Grade matrix")
grade_keys = backend.metric_keys(runs, "grade/")
if not grade_keys:
    st.info("No `grade/...` metrics yet: graded methods (e.g. `adl`) log them; run "
            "`diffgame run method=adl organism=control` and the organisms you want graded.")
else:
    c1, c2, c3 = st.columns([3, 2, 1])
    metric = c1.selectbox("Grade metric", grade_keys, key="grade_metric")
    model = c2.selectbox("Model", sorted(runs["model"].unique()), key="grade_model")
    relative = c3.toggle("minus control", key="grade_relative",
                         help="Subtract the control organism's score: the headline comparison.")
    try:
        st.dataframe(backend.grade_matrix(runs, metric, model, relative).style.format("{:.3f}"), width="stretch")
    except DiffgameError as e:
        st.error(str(e))

st.subheader("Models")
for model in sorted(runs["model"].unique()):
    url = cache.hub_url(model)
    st.markdown(f"- **{model}**" + (f" · [Hugging Face]({url})" if url else " · (no hub page)"))

st.subheader("Diff runs")
table = runs[["organism", "method", "model", "start_time", "run_id"]].copy()
table["mlflow"] = [backend.mlflow_run_url(e, r) for e, r in zip(runs["experiment_id"], runs["run_id"])]
st.dataframe(table, width="stretch", hide_index=True,
             column_config={"mlflow": st.column_config.LinkColumn("MLflow UI", display_text="open run")})
