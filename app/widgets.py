"""Page parts shared by several pages: the no-runs message, run pickers, evidence viewers and live steering."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diffgame.errors import ArtifactError, DiffgameError
from diffgame.ui import artifacts
from diffgame.ui import game as guessing
from diffgame.ui import heat, live
from diffgame.ui import runs as backend

import cache

PAGE_RUN = "page_run"
"""Session-state key of the run the page on screen shows (named by `page_error`); cleared before every page."""
BLIND_KEY = "blind_round"
"""Session-state key of the blind round in progress (a `diffgame.ui.game.Round`)."""


def blind_round():
    """The unrevealed blind round of this session, or None."""
    rnd = st.session_state.get(BLIND_KEY)
    return rnd if rnd is not None and not rnd.revealed else None


def true_organism(name: str) -> str:
    """The organism behind a name a page shows (the round's slug maps back to the drawn organism)."""
    rnd = st.session_state.get(BLIND_KEY)
    return rnd.organism if rnd is not None and name == rnd.slug else name


def hide(text: str) -> str:
    """`text` with the blind round's organism named by its slug (unchanged outside a round)."""
    rnd = blind_round()
    return rnd.hide(text) if rnd is not None else text


def all_runs(settings, stage: str = "diff") -> pd.DataFrame:
    """Finished runs of `stage` as the tracking store has them (no blind masking), or a message and stop."""
    try:
        return cache.runs(settings.tracking_uri, stage)
    except DiffgameError as e:
        st.error(f"Tracking store unreachable: {e}. Check `--tracking-uri`; then {backend.NO_RUNS_HINT}.")
        st.stop()


def require_runs(settings, stage: str = "diff") -> pd.DataFrame:
    """Finished runs of `stage`, or a message naming the command that makes them (and stop the page). During a
    blind round, diff runs are what the round may show, under its slug (`game.blind_frame`)."""
    runs = all_runs(settings, stage)
    if runs.empty:
        st.warning(f"No finished {stage} runs in `{settings.tracking_uri}` yet; {backend.NO_RUNS_HINT}.")
        st.stop()
    rnd = blind_round()
    if rnd is not None and stage == "diff":
        runs = guessing.blind_frame(runs, rnd)
        st.caption(f":material/visibility_off: Blind round `{rnd.slug}` in progress: pages show only its evidence "
                   f"(and the control's); reveal it on the Game page.")
    return runs


def pick_run(runs: pd.DataFrame, key: str, label: str = "Run") -> pd.Series:
    """A selectbox over runs (newest first, the control's after every organism's); returns the chosen row."""
    runs = backend.latest(runs, ("model", "organism", "method", "run_id"))
    runs = runs.sort_values("organism", key=lambda o: o == backend.CONTROL, kind="stable")  # the control's runs last
    labels = [backend.run_label(r) for _, r in runs.iterrows()]
    choice = st.selectbox(label, labels, key=key)
    row = runs.iloc[labels.index(choice)]
    st.session_state[PAGE_RUN] = row
    return row


def pick_pair(runs: pd.DataFrame, settings, key: str):
    """A selectbox over the runs' (organism, variant, base) pairs, an organism first; both models loaded (or a
    message and stop). Returns `(pair row, base handle, organism handle)`; a blind round's pair shows its slug."""
    pairs = backend.latest(runs, ("model", "organism", "variant"))
    pairs = pairs.sort_values("organism", key=lambda o: o == backend.CONTROL, kind="stable")  # opens on an organism
    labels = [f"{backend.with_variant(r['organism'], r['variant'])} on {r['model']}" for _, r in pairs.iterrows()]
    pair = pairs.iloc[labels.index(st.selectbox("Organism (variant) and base model", labels, key=key))]
    try:
        base, org = cache.model_pair(settings.tracking_uri, pair["model"], true_organism(pair["organism"]),
                                     settings.overrides, pair["params"].get("zoo.size"), pair["variant"])
    except DiffgameError as e:
        st.error(hide(f"cannot load the models: {e}"))
        st.stop()
    return pair, base, org


def page_error(error: Exception) -> None:
    """What a page shows instead of a Streamlit exception when it fails (a run's artifact truncated, a table without
    a column it reads, a weights file deleted): what failed, for which run, and what to do. Other pages still work.
    During a blind round the run is not named (its id leads to the organism)."""
    row = st.session_state.get(PAGE_RUN)
    what = str(error) if isinstance(error, DiffgameError) else f"{type(error).__name__}: {error}"
    if row is None:
        text = f"This page failed: {what}. Other pages still work; **Refresh runs** re-reads the tracking store."
    elif bool(row.get("blind", False)):
        text = (f"This page cannot show the round's evidence: {what.replace(row['run_id'], '…')}. Its artifacts are "
                f"missing or malformed; reveal the round on the Game page to see which run it is.")
    else:
        text = f"This page cannot show run `{row['run_id']}` ({row['method']} on {row['organism']}): {what}"
        if not isinstance(error, ArtifactError):  # an artifact error already says what to do
            text += (f". Its artifacts are missing or malformed: delete the run (mlflow runs delete --run-id "
                     f"{row['run_id']}) and make it again with `diffgame run model={row['model']} "
                     f"organism={row['organism']} method={row['method']}`")
    st.error(hide(text), icon=":material/error:")


def show_metrics(row: pd.Series, key: str) -> None:
    contains = st.text_input("Filter metrics", key=f"{key}_filter", placeholder="e.g. role/assistant")
    table = backend.metrics_table(pd.DataFrame([row]), contains)
    st.dataframe(table, width="stretch")


def show_plots(uri: str, run_id: str, paths: list[str]) -> None:
    names = artifacts.names(paths, "plots")
    if not names:
        st.info("This run logged no plots.")
    for name in names:
        st.image(cache.plot_bytes(uri, run_id, name), caption=name)


def _pick_artifact(paths: list[str], folder: str, label: str, key: str) -> str | None:
    """A selectbox over the run's `<folder>` artifacts (tables, examples, samples), or a note that it logged none."""
    names = artifacts.names(paths, folder)
    if not names:
        st.info(f"This run logged no {folder}.")
        return None
    return st.selectbox(label, names, key=key)


def show_tables(uri: str, run_id: str, paths: list[str], key: str) -> None:
    name = _pick_artifact(paths, "tables", "Table", f"{key}_table")
    if name is None:
        return
    st.dataframe(heat.readable_tokens(cache.table(uri, run_id, name)), width="stretch", hide_index=True)


def show_examples(uri: str, run_id: str, paths: list[str], key: str) -> None:
    """A picked `examples` artifact of the run (max-activating examples) as filterable token heat."""
    name = _pick_artifact(paths, "examples", "Examples", f"{key}_examples")
    if name is None:
        return
    example_heat(cache.examples(uri, run_id, name), key)


def example_heat(examples: list, key: str) -> None:
    """A list of examples as token heat on one colour scale, with text search and dataset / peak-role filters."""
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    query = c1.text_input("Search text", key=f"{key}_query")
    datasets = c2.multiselect("Datasets", sorted({e.dataset for e in examples}), key=f"{key}_datasets")
    roles = c3.multiselect("Peak token role", sorted({heat.example_role(e) for e in examples} - {""}),
                           key=f"{key}_roles", help="Role of each example's highest-scoring token.")
    limit = c4.number_input("Show", 1, 200, 10, key=f"{key}_limit")
    shown = heat.filter_examples(examples, query, datasets, roles)
    vmax = max((abs(s) for e in examples for s in e.token_scores), default=0.0)  # one scale for the whole list
    st.caption(f"{len(shown)} of {len(examples)} examples")
    for ex in shown[:limit]:
        st.markdown(f"**{ex.score:.4g}** · {ex.dataset} · sequence {ex.sequence_id}")
        st.html(heat.heat_html(ex.tokens, ex.token_scores, vmax))


def show_ranked(uri: str, run_id: str, key: str) -> None:
    ranked = cache.ranked_tokens(uri, run_id)
    if not ranked:
        st.info("This run logged no ranked tokens.")
        return
    name = st.selectbox("Token list", sorted(ranked), key=f"{key}_ranked")
    ranked_side_by_side(uri, run_id, name, ranked)


def ranked_side_by_side(uri: str, run_id: str, name: str, ranked: dict, rows: int | None = None) -> None:
    """Readout `name` as words (each token completed by the organism, pieces pooled) beside its raw tokens."""
    words = cache.ranked_words(uri, run_id).get(name)
    left, right = st.columns(2) if words is not None else (None, st.container())
    if words is not None:
        left.caption("words")
        left.dataframe(heat.ranked_frame(words, "word").head(rows), width="stretch", hide_index=True)
    right.caption("tokens")
    right.dataframe(heat.ranked_frame(ranked[name]).head(rows), width="stretch", hide_index=True)


def show_samples(uri: str, run_id: str, paths: list[str], key: str) -> None:
    """Generated samples; steered and unsteered texts of one prompt side by side."""
    name = _pick_artifact(paths, "samples", "Samples", f"{key}_samples")
    if name is None:
        return
    rows = cache.samples(uri, run_id, name)
    frame = pd.DataFrame(rows)
    st.dataframe(frame, width="stretch", hide_index=True)


def method_run(method: str, settings) -> pd.Series:
    """A method page's title and run picker with its links; the picked run (or a message naming the command)."""
    st.title(f"{method} runs")
    runs = require_runs(settings)
    runs = runs[runs["method"] == method]
    if runs.empty:
        if blind_round() is not None:
            st.info(f"`{method}` is not part of this blind round (or its evidence read the organism's own training "
                    f"data); its runs show again after the reveal.")
        else:
            st.warning(f"No finished `{method}` runs yet; make one with `diffgame run method={method}`.")
        st.stop()
    row = pick_run(runs, key=f"{method}_run")
    run_id = row["run_id"]
    if not bool(row.get("blind", False)):  # a blind round hides run ids and links (they lead to the name)
        st.caption(f"run `{run_id}` · [open in MLflow]({backend.mlflow_run_url(row['experiment_id'], run_id)})"
                   + (f" · preprocess run `{row['preprocess_run_id']}`" if row["preprocess_run_id"] else ""))
    return row


def method_page(method: str, settings) -> None:
    """A method's runs: statistics beside the method's main plot, then examples, ranked tokens, tables, samples and
    every plot of the picked run."""
    row = method_run(method, settings)
    uri, run_id = settings.tracking_uri, row["run_id"]
    paths = cache.artifact_paths(uri, run_id)
    tabs = st.tabs(["Statistics", "Examples", "Tokens", "Tables", "Samples", "Plots"])
    with tabs[0]:
        left, right = st.columns(2)
        with left:
            show_metrics(row, method)
        plot = backend.main_plot(method, artifacts.names(paths, "plots"))
        if plot is None:
            right.info("This run logged no plots.")
        else:
            right.image(cache.plot_bytes(uri, run_id, plot), caption=plot)
    with tabs[1]:
        show_examples(uri, run_id, paths, method)
    with tabs[2]:
        show_ranked(uri, run_id, method)
    with tabs[3]:
        show_tables(uri, run_id, paths, method)
    with tabs[4]:
        show_samples(uri, run_id, paths, method)
    with tabs[5]:
        show_plots(uri, run_id, paths)


def prompt_ids(handle, prompt: str, as_chat: bool) -> list[int]:
    """A prompt's token ids: as a user turn under the chat template, or as plain text."""
    if as_chat:
        return live.encode(handle, messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)[0]
    return live.encode(handle, text=prompt)[0]


def steer_panel(base, org, name: str, vector, key: str) -> None:
    """Live steering of both models with scale × `vector` (named `name`) added after a chosen layer: steered and
    unsteered continuations of one chat prompt, side by side; the last result stays in session state `<key>_out`."""
    n_layers = base.n_layers
    if st.session_state.get(f"{key}_for") != name or f"{key}_layer" not in st.session_state:
        st.session_state[f"{key}_layer"] = live.vector_layer(name, n_layers)  # a new vector starts at its own layer
        st.session_state[f"{key}_for"] = name
    c1, c2, c3 = st.columns(3)
    layer = c1.slider("Layer", 0, n_layers - 1, key=f"{key}_layer")
    scale = c2.number_input("Scale", value=1.0, step=0.5, key=f"{key}_scale")
    mode = c3.radio("Positions", ["all", "prompt"], horizontal=True, key=f"{key}_mode")
    st.caption(f"‖vector‖ = {float(vector.norm()):.4g}; added as scale × vector after layer {layer}")
    prompt = st.text_area("Prompt", "Tell me about your day.", key=f"{key}_prompt")
    tokens = st.slider("New tokens", 4, 128, 32, key=f"{key}_tokens")
    if st.button("Generate steered and unsteered", key=f"{key}_go"):
        ids = prompt_ids(base, prompt, True)
        st.session_state[f"{key}_out"] = {
            (h.role, steered): live.generate(h, ids, tokens, vector=vector if steered else None, layer=layer,
                                             scale=scale, mode=mode)
            for h in (base, org) for steered in (False, True)}
        st.session_state[f"{key}_out_label"] = f"`{name}` × {scale:g} after layer {layer} ({mode} positions)"
    if f"{key}_out" in st.session_state:
        out = st.session_state[f"{key}_out"]
        st.caption(f"steered with {st.session_state.get(f'{key}_out_label', '')}")
        for role in ("base", "organism"):
            left, right = st.columns(2)
            left.markdown(f"**{role} · unsteered**")
            left.text(out[(role, False)])
            right.markdown(f"**{role} · steered**")
            right.text(out[(role, True)])
