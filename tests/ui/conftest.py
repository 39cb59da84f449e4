"""The app tests browse their own copy of the micro zoo as built, so runs that other packages' tests made in the
shared session store (other organisms, other configs) do not show up in the app's tables and pickers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo_uri(zoo_uri, tmp_path_factory) -> str:
    """A store of its own holding the micro zoo (every zoo run, none of the diff runs other tests made): a copy of
    `pristine.db`, which the session's `zoo_uri` fixture writes beside its store right after building the zoo."""
    from diffgame import tracking

    db = tmp_path_factory.mktemp("app_zoo") / "mlflow.db"
    shutil.copy(Path(zoo_uri.removeprefix("sqlite:///")).with_name("pristine.db"), db)
    uri = f"sqlite:///{db}"
    tracking.set_uri(uri)
    return uri
