"""The app's cached loaders: run tables and artifacts (`st.cache_data`), models (`st.cache_resource`).

Every loader takes the tracking URI as its first argument so a cache entry never outlives a change of server.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diffgame.ui import artifacts
from diffgame.ui import game, live
from diffgame.ui import runs as backend


def settings() -> backend.AppSettings:
    """The CLI settings after `--`, with MLflow pointed at their tracking URI."""
    s = backend.parse_app_args()
    backend.connect(s.tracking_uri)
    return s


@st.cache_data(ttl=30, show_spinner=False)
def runs(uri: str, stage: str = "diff") -> pd.DataFrame:
    return backend.runs_frame(stage)


@st.cache_data(show_spinner=False)
def artifact_paths(uri: str, run_id: str) -> list[str]:
    return list(artifacts.list_artifacts(run_id))


@st.cache_data(show_spinner=False)
def examples(uri: str, run_id: str, name: str) -> list:
    return artifacts.load_examples(run_id, name)


@st.cache_data(show_spinner=False)
def table(uri: str, run_id: str, name: str) -> pd.DataFrame:
    return artifacts.load_table(run_id, name)


@st.cache_data(show_spinner=False)
def ranked_tokens(uri: str, run_id: str) -> dict:
    """{name: RankedTokens}, empty when the run logged none."""
    return artifacts.ranked_tokens(run_id, artifact_paths(uri, run_id))


@st.cache_data(show_spinner=False)
def ranked_words(uri: str, run_id: str) -> dict:
    """{name: RankedTokens} of whole words (`diffgame.grading.words`), empty for runs made before words."""
    return artifacts.ranked_words(run_id, artifact_paths(uri, run_id))


@st.cache_data(show_spinner=False)
def samples(uri: str, run_id: str, name: str) -> list[dict]:
    return artifacts.load_samples(run_id, name)


@st.cache_data(show_spinner=False)
def vectors(uri: str, run_id: str) -> dict:
    return artifacts.load_vectors(run_id)


@st.cache_data(show_spinner=False)
def lens_table(uri: str, run_id: str) -> pd.DataFrame | None:
    return artifacts.lens_table(run_id)


@st.cache_data(show_spinner=False)
def steering_samples(uri: str, run_id: str) -> list[dict]:
    return artifacts.steering_samples(run_id, artifact_paths(uri, run_id))


@st.cache_data(show_spinner=False)
def runs_with_vectors(uri: str, run_ids: tuple[str, ...]) -> list[str]:
    return artifacts.runs_with_vectors(list(run_ids))


@st.cache_data(show_spinner=False)
def plot_bytes(uri: str, run_id: str, name: str) -> bytes:
    return artifacts.plot_file(run_id, name).read_bytes()


@st.cache_data(show_spinner=False)
def hub_url(model: str) -> str | None:
    return backend.hub_url(model)


@st.cache_data(show_spinner=False)
def organism_url(model: str, organism: str, variant: str) -> str | None:
    return backend.organism_url(model, organism, variant)


@st.cache_resource(max_entries=2, show_spinner="loading base and organism ...")
def model_pair(uri: str, model: str, organism: str, overrides: tuple[str, ...], zoo_size: str | None,
               variant: str = "default"):
    """Base and organism handles for a run's pair and organism variant; shared across sessions, used read-only."""
    params = {"zoo.size": zoo_size} if zoo_size else None
    return live.load_run_pair(backend.model_config(model, organism, overrides, params, variant))


@st.cache_data(show_spinner=False)
def organism_nodes(model: str, organisms: tuple[str, ...]) -> dict:
    """Composed organism configs (the game's candidates and answer key)."""
    return {o: game.organism_node(model, o) for o in organisms}
