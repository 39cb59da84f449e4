"""A store behind a tracking server (artifacts proxied, so remote to its readers) is read shard by shard: only the files
a method reads are downloaded, into a cache bounded by bytes, checked against the manifest on arrival; two caches
(two machines) read the same bytes."""

from __future__ import annotations

import tempfile

import pytest
import torch

from diffgame import tracking
from diffgame.errors import StoreError
from diffgame.pipeline.planner import make_plan
from diffgame.pipeline.runner import open_run_store
from diffgame.preprocess import preprocess
from diffgame.store import ActivationStore
from diffgame.store.layout import act_file
from diffgame.tracking.shardcache import ShardCache

from _tiny_models import tiny_cfg
from helpers_mlflow import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote_store(pair, tmp_path_factory):
    """(server url, run id, a full local copy of the store) of a tiny store built through a server."""
    import mlflow

    root = tmp_path_factory.mktemp("shardcache")
    with mlflow_server(root / "server") as url, pytest.MonkeyPatch.context() as env:
        env.setenv("DIFFGAME_CACHE", str(root / "builder"))
        (root / "tmp").mkdir()
        env.setattr(tempfile, "tempdir", str(root / "tmp"))  # where the upload stages the store
        cfg = tiny_cfg(*pair, root / "unused.db", dtype="float32")
        tracking.set_uri(url)
        result = preprocess(make_plan(cfg), shard_tokens=200)
        full = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="store",
                                                   dst_path=str(root / "full"), tracking_uri=url)
        assert not list((root / "tmp").glob("diffgame-store-*"))
        yield url, result.run_id, ActivationStore.open(full), root / "builder"


def test_the_machine_that_built_a_store_keeps_it_as_its_cached_copy(remote_store, monkeypatch):
    """The upload's staging folder becomes the builder's cached copy: nothing is left in the temp dir and a reader
    on that machine downloads nothing."""
    url, run_id, full, builder = remote_store
    tracking.set_uri(url)
    monkeypatch.setenv("DIFFGAME_CACHE", str(builder))
    store = open_run_store(run_id)
    ds, layer = full.datasets[0], full.layers[0]
    assert torch.equal(store.activations(ds, "organism", layer), full.activations(ds, "organism", layer))
    assert store.root == builder / "stores" / run_id / "store" and store._fetch.downloaded == []


def test_only_what_is_read_is_downloaded_and_equals_the_store(remote_store, tmp_path, monkeypatch):
    url, run_id, full, _ = remote_store
    tracking.set_uri(url)
    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "machine_a"))
    store = open_run_store(run_id)
    ds, layer = full.datasets[0], full.layers[0]
    assert torch.equal(store.activations(ds, "base", layer), full.activations(ds, "base", layer))
    cached = {str(p.relative_to(store.root)) for p in store.root.rglob("*.safetensors")}
    shards = [sh["name"] for sh in full.manifest["datasets"][ds]["shards"]]
    assert len(shards) > 1 and cached == {act_file(ds, "base", layer, s) for s in shards}  # nothing else came

    # another machine (its own cache) reads the same bytes
    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "machine_b"))
    other = open_run_store(run_id)
    for role in ("base", "organism"):
        assert torch.equal(other.activations(ds, role, layer), full.activations(ds, role, layer))
    assert torch.equal(other.tokens(ds).input_ids, full.tokens(ds).input_ids)


def test_the_cache_stays_within_its_budget_and_refetches_what_it_evicted(remote_store, tmp_path):
    url, run_id, full, _ = remote_store
    tracking.set_uri(url)
    ds, layer = full.datasets[0], full.layers[-1]
    files = [act_file(ds, role, layer, sh["name"]) for role in ("base", "organism")
             for sh in full.manifest["datasets"][ds]["shards"]]
    sizes = {rel: (full.root / rel).stat().st_size for rel in files}
    budget = 2 * max(sizes.values())
    cache = ShardCache(run_id, "store", root=tmp_path / "cache", budget=budget)
    store = ActivationStore.open(cache.folder, fetch=cache)
    for i, sh in enumerate(full.manifest["datasets"][ds]["shards"]):
        for role in ("base", "organism"):
            block = store.read_block(ds, role, layer, i, 0, 10**9)
            assert torch.equal(block, full.read_block(ds, role, layer, i, 0, 10**9))
            held = sum(p.stat().st_size for p in cache.folder.rglob("*.safetensors"))
            assert held <= budget
    fetched = len(cache.downloaded)
    assert torch.equal(store.read_block(ds, "base", layer, 0, 0, 5), full.read_block(ds, "base", layer, 0, 0, 5))
    assert len(cache.downloaded) == fetched + 1  # the first shard was evicted, so it came again


def test_a_file_that_arrives_corrupt_is_refused(remote_store, tmp_path):
    url, run_id, full, _ = remote_store
    tracking.set_uri(url)
    ds, layer = full.datasets[0], full.layers[0]
    cache = ShardCache(run_id, "store", root=tmp_path / "cache")
    rel = act_file(ds, "base", layer, full.manifest["datasets"][ds]["shards"][0]["name"])
    path = cache(rel)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(raw))
    store = ActivationStore.open(cache.folder, fetch=cache)
    with pytest.raises(StoreError, match=r"corrupt store: shard file .* fails its xxh3_128 checksum"):
        store.shard_activations(ds, "base", layer)
