"""Game: an organism is drawn and its name hidden; study the evidence, type a guess, then reveal and grade it."""

import streamlit as st

import cache
import widgets
from diffgame import artifacts
from diffgame.errors import DiffgameError
from diffgame.ui import game as guessing
from diffgame.ui import heat
from diffgame.ui import runs as backend

settings = cache.settings()
uri = settings.tracking_uri
st.title("Guess the finetuning")
runs = widgets.require_runs(settings)

if "game" not in st.session_state or st.button("New round", help="Draw another organism."):
    model, organism = guessing.draw_organism(runs)
    st.session_state["game"] = {"model": model, "organism": organism, "revealed": False}
game = st.session_state["game"]
model = game["model"]
st.info(f"An organism finetuned from **{model}** has been drawn. Study the evidence, then describe what "
        f"the finetuning changed.")

hidden = backend.latest(runs[(runs["model"] == model) & (runs["organism"] == game["organism"])])
for _, row in hidden.iterrows():
    with st.expander(f"Evidence from `{row['method']}`", expanded=True):
        paths = cache.artifact_paths(uri, row["run_id"])
        ranked = cache.ranked_tokens(uri, row["run_id"])
        if ranked:
            name = st.selectbox("Token list", sorted(ranked), key=f"game_ranked_{row['method']}")
            widgets.ranked_side_by_side(uri, row["run_id"], name, ranked, rows=20)
        for ex_name in artifacts.names(paths, "examples")[:1]:
            st.caption(f"top examples ({ex_name})")
            for ex in cache.examples(uri, row["run_id"], ex_name)[:3]:
                st.html(heat.heat_html(ex.tokens, ex.token_scores))

guess = st.text_input("Your guess", key="game_guess", placeholder="e.g. it talks about volcanic ash")
if st.button("Reveal and grade", key="game_reveal"):
    game["revealed"] = True
if game["revealed"]:
    try:
        candidates = cache.organism_nodes(model, tuple(sorted(runs[runs["model"] == model]["organism"].unique())))
    except DiffgameError as e:
        st.error(f"cannot read the organism configs to grade against: {e}")
        st.stop()
    truth = candidates[game["organism"]]
    st.subheader(f"It was `{game['organism']}`")
    st.write(truth.description)
    try:
        grade = guessing.grade_guess(guess, game["organism"], candidates)
    except DiffgameError as e:
        st.warning(str(e))
    else:
        verdict = "✅ correct" if grade.correct else "❌ not quite"
        st.metric("Verdict", verdict, f"{len(grade.hits)} matching words")
        st.write("Matching words: " + (", ".join(f"`{h}`" for h in grade.hits) or "none"))
        st.dataframe([{"organism": o, "matching words": n} for o, n in grade.ranking], hide_index=True)
