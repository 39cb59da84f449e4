"""Game: a blind round draws an organism and shows it only under a slug, with evidence from generic data within a
budget; type a description, then reveal: the truth, the grade, which evidence carried the signal; each round is a
`game` run on the Leaderboard."""

import streamlit as st

from diffgame.errors import DiffgameError
from diffgame.ui import artifacts
from diffgame.ui import game as guessing
from diffgame.ui import heat
from diffgame.ui import runs as backend

import cache
import widgets

settings = cache.settings()
uri = settings.tracking_uri
st.title("Guess the finetuning")
everything = widgets.require_runs(settings) if widgets.blind_round() is None else widgets.all_runs(settings)
rnd = st.session_state.get(widgets.BLIND_KEY)


def setup() -> None:
    """Choose a base model, the evidence budget and a player name; start a round."""
    st.write("A round draws an organism with runs on the base model you choose (never the control) and hides its "
             "name on every page until you reveal it. The evidence comes only from generic data, never from the "
             "organism's own training data.")
    c1, c2 = st.columns(2)
    model = c1.selectbox("Base model", sorted(everything["model"].unique()), key="game_model")
    player = c2.text_input("Player", "anonymous", key="game_player")
    choices = guessing.game_methods(everything, model)
    if not choices:
        st.warning(f"No run on `{model}` has evidence from generic data only; `diffgame run model={model} "
                   f"method=[adl,blackbox] organism=<name>` makes some.")
        st.stop()
    methods = st.multiselect("Evidence from", choices, default=guessing.default_methods(everything, model),
                             key="game_methods",
                             help="Methods whose evidence the round shows (runs that read the organism's own "
                                  "training data are never offered).")
    c3, c4 = st.columns(2)
    lists = c3.slider("Ranked lists per method", 1, 10, 3, key="game_lists")
    examples = c4.slider("Examples per method", 0, 10, 3, key="game_examples")
    if st.button("Start a blind round", key="game_start", type="primary"):
        try:
            st.session_state[widgets.BLIND_KEY] = guessing.new_round(everything, model, methods, lists, examples,
                                                                     player or "anonymous")
        except DiffgameError as e:
            st.error(str(e))
            st.stop()
        st.session_state.pop("game_shown", None)
        st.rerun()


def evidence(rnd: guessing.Round) -> dict:
    """The round's evidence per method, within its budget; returns {(method, list): shown words}."""
    shown = {}
    runs = backend.latest(widgets.require_runs(settings))
    for method in rnd.methods:
        row = runs[(runs["organism"] == rnd.slug) & (runs["method"] == method)].iloc[0]
        with st.expander(f"Evidence from `{method}`", expanded=True):
            ranked = cache.ranked_tokens(uri, row["run_id"])
            words = cache.ranked_words(uri, row["run_id"])
            names = sorted(ranked, key=backend.natural_key)
            picked = st.multiselect(f"Ranked lists (at most {rnd.lists})", names, default=names[:rnd.lists],
                                    max_selections=rnd.lists, key=f"game_lists_{method}")
            for name in picked:
                st.caption(name)
                widgets.ranked_side_by_side(uri, row["run_id"], name, ranked, rows=20)
                shown[(method, name)] = list((words.get(name) or ranked[name]).tokens[:20])
            paths = cache.artifact_paths(uri, row["run_id"])
            for ex_name in artifacts.names(paths, "examples")[:1] if rnd.examples else []:
                st.caption(f"top examples ({ex_name})")
                for ex in cache.examples(uri, row["run_id"], ex_name)[:rnd.examples]:
                    st.html(heat.heat_html(ex.tokens, ex.token_scores))
    return shown


def reveal(rnd: guessing.Round, guess: str, shown: dict) -> None:
    """Grade the guess (keywords; the rubric too when an endpoint is configured), log the round, unmask."""
    names = tuple(backend.organism_order(everything[everything["model"] == rnd.model]["organism"]))
    candidates = cache.organism_nodes(rnd.model, names)
    grade = guessing.grade_guess(guess, rnd.organism, candidates)
    rubric = guessing.rubric_grade(guess, candidates[rnd.organism], settings.overrides)
    rnd.run_id = guessing.log_round(rnd, guess, grade, rubric.score if rubric else None)
    rnd.revealed = True
    st.session_state["game_result"] = {"guess": guess, "grade": grade, "rubric": rubric,
                                       "carriers": guessing.carriers(shown, candidates[rnd.organism])}
    cache.runs.clear()


if rnd is None:
    setup()
    st.stop()
if not rnd.revealed:
    st.info(f"An organism finetuned from **{rnd.model}** has been drawn: it is `{rnd.slug}` on every page until "
            f"you reveal it. Study the evidence (Interactive lets you talk to both models), then describe what the "
            f"finetuning changed.")
    shown = evidence(rnd)
    guess = st.text_area("Your description", key="game_guess", placeholder="e.g. it talks about volcanic ash")
    if st.button("Reveal and grade", key="game_reveal", type="primary"):
        try:
            reveal(rnd, guess, shown)
        except DiffgameError as e:
            st.warning(str(e))
            st.stop()
        st.rerun()
    st.stop()

result = st.session_state["game_result"]
grade = result["grade"]
truth = cache.organism_nodes(rnd.model, (rnd.organism,))[rnd.organism]
st.subheader(f"`{rnd.slug}` was `{rnd.organism}`")
st.write(truth.description)
c1, c2, c3 = st.columns(3)
c1.metric("Verdict", "✅ correct" if grade.correct else "❌ not quite", f"{len(grade.hits)} matching words")
if result["rubric"] is not None:
    c2.metric("Rubric (1–5)", result["rubric"].score if result["rubric"].score is not None else "—",
              result["rubric"].outcome)
c3.metric("Time", f"{rnd.seconds:.0f} s")
st.write("Your description: " + result["guess"])
st.write("Matching words: " + (", ".join(f"`{h}`" for h in grade.hits) or "none"))
st.dataframe([{"organism": o, "matching words": n} for o, n in grade.ranking], hide_index=True)
st.markdown("**Which evidence carried the signal**: the shown words that hit the organism's ground truth")
st.dataframe(result["carriers"], hide_index=True, width="stretch")
st.caption(f"logged as game run `{rnd.run_id}`; see the Leaderboard")
if st.button("New round", key="game_new"):
    st.session_state.pop(widgets.BLIND_KEY, None)
    st.rerun()
