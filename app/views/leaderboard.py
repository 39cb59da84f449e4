"""Leaderboard: every blind round people played (`game` runs) and every agent play (`play` runs), scored."""

import streamlit as st

import cache
import widgets
from diffgame.ui import game as guessing

settings = cache.settings()
st.title("Leaderboard")
games = widgets.all_runs(settings, guessing.GAME_STAGE)
plays = widgets.all_runs(settings, "play")
if games.empty and plays.empty:
    st.info("No rounds yet: play one on the Game page, or let an agent play with `diffgame play`.")
    st.stop()
model = st.selectbox("Base model", sorted(set(games["model"]) | set(plays["model"])), key="board_model")
board = guessing.leaderboard(games[games["model"] == model], plays[plays["model"] == model])
st.caption("accuracy: share of rounds whose description matched the drawn organism best (keyword grader); keyword "
           "hits: mean matching words; rubric: mean LLM rubric score 1–5 where an endpoint graded.")
st.dataframe(board, hide_index=True, width="stretch",
             column_config={"accuracy": st.column_config.NumberColumn(format="%.2f"),
                            "keyword hits": st.column_config.NumberColumn(format="%.1f"),
                            "rubric": st.column_config.NumberColumn(format="%.1f"),
                            "seconds": st.column_config.NumberColumn(format="%.0f")})

st.subheader("Rounds")
rounds = games[games["model"] == model]
if rounds.empty:
    st.info("No blind rounds on this model yet.")
else:
    table = guessing.rounds_table(rounds)
    if widgets.blind_round() is not None:  # past rounds name their organisms; a round in progress must not see them
        table = table.drop(columns=["organism"])
    st.dataframe(table, hide_index=True, width="stretch")
