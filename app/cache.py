"""The app's cached loaders: run tables and artifacts (`st.cache_data`), models (`st.cache_resource`).

Every loader takes the tracking URI as its first argument so a cache entry never outlives a change of server.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diffgame import app_backend as backend
from diffgame import tracking


def settings() -> backend.AppSettings:
    """The CLI settings after `--`, with MLflow pointed at their tracking URI."""
    s = backend.parse_app_args()
    tracking.set_uri(s.tracking_uri)
    return s


@st.cache_data(ttl=30, show_spinner=False)
def runs(uri: str, stage: str = "diff") -> pd.DataFrame:
    return backend.runs_frame(stage)


@st.cache_data(show_spinner=False)
def artifact_paths(uri: str, run_id: str) -> list[str]:
    from diffgame import results

    return list(results.list_artifacts(run_id))


@st.cache_data(show_spinner=False)
def examples(uri: str, run_id: str, name: str) -> list:
    from diffgame import results

    return results.load_examples(run_id, name)


@st.cache_data(show_spinner=False)
def table(uri: str, run_id: str, name: str) -> pd.DataFrame:
    from diffgame import results

    return results.load_table(run_id, name)


@st.cache_data(show_spinner=False)
def ranked_tokens(uri: str, run_id: str) -> dict:
    """{name: RankedTokens}, empty when the run logged none."""
    from diffgame import results

    if "evidence/ranked_tokens.json" not in artifact_paths(uri, run_id):
        return {}
    return results.load_ranked_tokens(run_id)


@st.cache_data(show_spinner=False)
def samples(uri: str, run_id: str, name: str) -> list[dict]:
    from diffgame import results

    return results.load_samples(run_id, name)


@st.cache_data(show_spinner=False)
def vectors(uri: str, run_id: str) -> dict:
    from diffgame import results

    return results.load_vectors(run_id)


@st.cache_data(show_spinner=False)
def artifact_bytes(uri: str, run_id: str, path: str) -> bytes:
    from diffgame import results

    return results.artifact_file(run_id, path).read_bytes()


@st.cache_data(show_spinner=False)
def hub_url(model: str) -> str | None:
    return backend.hub_url(model)


@st.cache_data(show_spinner=False)
def organism_info(organism: str) -> dict:
    return backend.organism_info(organism)


@st.cache_resource(max_entries=2, show_spinner="loading base and organism ...")
def model_pair(uri: str, model: str, organism: str, overrides: tuple[str, ...], zoo_size: str | None):
    """Base and organism handles for a run's pair; shared across sessions, used read-only (eval, no_grad)."""
    from diffgame.models import load_pair

    params = {"zoo.size": zoo_size} if zoo_size else None
    return load_pair(backend.model_config(model, organism, overrides, params))


@st.cache_data(show_spinner=False)
def organism_nodes(model: str, organisms: tuple[str, ...]) -> dict:
    """Composed organism configs (the game's candidates and answer key)."""
    return {o: backend.organism_node(model, o) for o in organisms}
