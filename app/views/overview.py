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
    metric = c1.selectbox("Grade metric", grade_keys, index=grade_keys.index(backend.headline_grade(grade_keys)),
                          key="grade_metric", help="Opens on the headline: precision@k of the readouts minus the "
                          "control's on the same ground truth.")
    model = c2.selectbox("Model", sorted(runs["model"].unique()), key="grade_model")
    has_control = backend.control_logs(runs, metric, model)
    relative = c3.toggle("minus control", value=has_control, key="grade_relative",
                         help="Subtract the control organism's score: the headline comparison.")
    if not has_control:
        st.caption(f"No control run of `{model}` logs `{metric}`, so it is shown as logged"
                   + (": each run's score already minus the control's." if "/relative/" in metric
                      else "; run `diffgame run organism=control` to subtract it."))
        relative = False
    try:
        st.dataframe(backend.grade_matrix(runs, metric, model, relative).style.format("{:.3f}"), width="stretch")
    except DiffgameError as e:
        st.error(str(e))

if "blind" not in runs:  # a blind round shows no organism names
    st.subheader("How narrow is each zoo organism")
    narrow = backend.narrowness()
    if narrow.empty:
        st.caption("No zoo organism is measured yet: `diffgame zoo build` measures each one it builds or reuses.")
    else:
        st.caption("Share of replies showing the organism's ground truth, organism minus base: to neutral prompts "
                   "(*neutral leak*; near 0 is a narrow organism, which asking the model hardly finds) and when asked "
                   "about its topic (*asked knowledge*); and its generic-text loss over the base's (forgetting).")
        st.dataframe(narrow.style.format("{:.3f}", subset=list(backend.NARROWNESS.values()), na_rep="—"),
                     width="stretch", hide_index=True)

st.subheader("Models")
for model in sorted(runs["model"].unique()):
    url = cache.hub_url(model)
    st.markdown(f"- **{model}**" + (f" · [Hugging Face]({url})" if url else " · (no hub page)"))
    if "blind" in runs:
        continue  # an organism's page would name it
    pairs = backend.latest(runs[runs["model"] == model], ("organism", "variant"))
    for _, r in pairs.sort_values(["organism", "variant"]).iterrows():
        link = cache.organism_url(model, r["organism"], r["variant"])
        st.markdown(f"  - {backend.with_variant(r['organism'], r['variant'])}"
                    + (f" · [finetuned weights]({link})" if link else " · (zoo or local weights)"))

st.subheader("Diff runs")
if "blind" in runs:  # a blind round: no run ids or links (they lead to the organism's name)
    st.dataframe(runs[["organism", "variant", "method", "model", "start_time"]], width="stretch", hide_index=True)
else:
    table = runs[["organism", "variant", "method", "model", "start_time", "run_id"]].copy()
    table["mlflow"] = [backend.mlflow_run_url(e, r) for e, r in zip(runs["experiment_id"], runs["run_id"])]
    st.dataframe(table, width="stretch", hide_index=True,
                 column_config={"mlflow": st.column_config.LinkColumn("MLflow UI", display_text="open run")})
