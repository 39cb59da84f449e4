"""The tracking store the app tests browse: the micro zoo plus diff runs made by the real pipeline.

`execute` reuses finished runs by fingerprint, so the app and browser tests share one set of runs.
"""

import sys
from pathlib import Path

from diffgame import tracking
from diffgame.config.registry import known_methods

ORGANISMS = ("caps", "control")
APP_OVERRIDES = ("zoo.size=micro", "model.device=cpu")
"""What the app needs to load the micro zoo's models (tags name the model and organism, not the zoo size)."""


HOME = str(Path(__file__).resolve().parent.parent / "app" / "Home.py")
TIMEOUT = 600


def open_app(monkeypatch, uri: str, page: str | None = None, session: dict | None = None,
             overrides: tuple[str, ...] = APP_OVERRIDES):
    """The app under AppTest on tracking store `uri`, run once (with `session` state set first), then switched to
    `views/<page>.py`; no page raised."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", ["Home.py", "--tracking-uri", uri, *overrides])
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT)
    for k, v in (session or {}).items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill_store(zoo_uri: str) -> str:
    """Diff runs of every registered store/stream method on the micro zoo for `ORGANISMS`; returns the URI."""
    from diffgame.pipeline.chain import execute

    methods = [m for m in ("kl", "normdiff", "adl", "diffmining") if m in known_methods()]
    execute([*APP_OVERRIDES, f"organism={','.join(ORGANISMS)}", f"method=[{','.join(methods)}]"],
            multirun=True, tracking_uri=zoo_uri)
    tracking.set_uri(zoo_uri)
    return zoo_uri


DICTIONARY_METHODS = ("pca", "sae", "crosscoder")
DICTIONARY_OVERRIDES = (
    "method.sae.steps=40", "method.sae.n_latents=64", "method.crosscoder.steps=40", "method.crosscoder.n_latents=64",
    *(f"method.{m}.{k}" for m in DICTIONARY_METHODS
      for k in ("steering_prompts=2", "steering_tokens=6", "steering_alphas=[1.0]")))
"""Small dictionaries and a short steering sweep, so the dictionary pages have runs to show at little cost."""


def fill_dictionary_store(zoo_uri: str) -> str:
    """Diff runs of the dictionary methods (pca, sae, crosscoder) on the micro zoo's `caps` (graded against the
    control, whose runs the pipeline makes too); returns the URI."""
    from diffgame.pipeline.chain import execute

    execute([*APP_OVERRIDES, "organism=caps", f"method=[{','.join(DICTIONARY_METHODS)}]", *DICTIONARY_OVERRIDES],
            tracking_uri=zoo_uri)
    tracking.set_uri(zoo_uri)
    return zoo_uri


def corrupt_artifact(monkeypatch, tmp_path, run_id: str, relpath: str, how: str) -> None:
    """Make one artifact of one run read as damaged, without touching the shared store: `truncate` (its first half),
    `delete` (gone), or `drop:<column>` (a table without that column). The app's cached reads are cleared, so the
    page reads it again; the caller clears them again afterwards."""
    import pandas as pd
    import streamlit as st

    from diffgame.tracking import artifacts

    real = artifacts.artifact_file

    def damaged(rid: str, rel: str):
        if (rid, rel) != (run_id, relpath):
            return real(rid, rel)
        if how == "delete":
            return real(rid, rel + ".deleted")  # the real lookup of a file that is not there
        path, bad = real(rid, rel), tmp_path / Path(rel).name
        if how == "truncate":
            data = path.read_bytes()
            bad.write_bytes(data[:len(data) // 2])
        else:
            pd.read_parquet(path).drop(columns=[how.removeprefix("drop:")]).to_parquet(bad)
        return bad

    monkeypatch.setattr(artifacts, "artifact_file", damaged)
    st.cache_data.clear()
