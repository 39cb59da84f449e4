"""Shared fixtures: the micro zoo, built once per test session into a temporary SQLite tracking store."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def zoo_uri(tmp_path_factory) -> str:
    """Tracking URI of a store holding the full micro zoo (base + every zoo organism); set for the session."""
    from diffgame import tracking
    from diffgame.pipeline.building import build_zoo

    db = tmp_path_factory.mktemp("zoo") / "mlflow.db"
    uri = f"sqlite:///{db}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    tracking.set_uri(uri)
    build_zoo(size="micro", progress=False)
    shutil.copy(db, db.with_name("pristine.db"))  # the zoo as built, before any test adds runs (tests/ui/conftest.py)
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _keep_tracking_uri():
    """Whatever points tracking elsewhere inside (`tracking.set_uri` writes MLFLOW_TRACKING_URI) is undone after."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != old:
        import mlflow

        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        mlflow.set_tracking_uri(old)


# a test, or a module's fixtures, leave tracking where they found it: the next starts on the URI its own fixtures chose
_tracking_uri_per_test = pytest.fixture(autouse=True)(_keep_tracking_uri)
_tracking_uri_per_module = pytest.fixture(autouse=True, scope="module")(_keep_tracking_uri)


@pytest.fixture(autouse=True)
def _hub_reachable_again(monkeypatch):
    """Each test starts as a fresh process would: no hub failure of an earlier test short-circuits its hub reads."""
    from diffgame.data import sequences as data

    monkeypatch.setitem(data._HUB, "unreachable", False)


@pytest.fixture(autouse=True)
def _on_the_zoo_store(request):
    """A test that uses the micro zoo reads its store, even when an earlier test pointed tracking elsewhere."""
    if "zoo_uri" in request.fixturenames:
        from diffgame import tracking

        tracking.set_uri(request.getfixturevalue("zoo_uri"))


@pytest.fixture
def micro_cfg(zoo_uri):
    """`(*overrides) -> DictConfig`: a composed config on the micro zoo (tracking points at `zoo_uri`)."""
    from diffgame import tracking
    from diffgame.config.compose import compose

    def make(*overrides: str):
        tracking.set_uri(zoo_uri)
        return compose([*overrides, "zoo.size=micro"])

    return make


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """`(base dir, organism dir, data files)`: the tiny random pair saved hub-style, with small local datasets."""
    from _tiny_models import make_pair, write_data

    root = tmp_path_factory.mktemp("pair")
    base, org = make_pair(root)
    return base, org, write_data(root / "data", n_text=16, n_chat=10)


@pytest.fixture
def cfg(pair, tmp_path):
    """A composed config on `pair` with a fresh SQLite tracking store in `tmp_path`."""
    from _tiny_models import tiny_cfg

    return tiny_cfg(*pair, tmp_path / "mlflow.db")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest leaves the last app script installed as `__main__`; put pytest's back, or a later multiprocessing
    spawn (the DDP extraction test) re-runs that page in its children."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
