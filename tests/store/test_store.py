"""The activation store format: round trip of tokens and activations, readers, and partial/corrupt stores."""

from __future__ import annotations

import hashlib

import pytest
import torch

from diffgame.errors import StoreError
from diffgame.store import ActivationStore, StoreWriter, act_file, shard_name, tokens_file

D, LAYERS = 8, [2, 5]


def _write(root, shards: list[list[list[int]]], dtype=torch.bfloat16, finalize=True):
    """One dataset `ds` whose shards hold the given sequences; activations encode (role, layer, token index)."""
    writer = StoreWriter(root, checksum="sha256")
    plan = {"layers": LAYERS, "d_model": D, "dtype": str(dtype).removeprefix("torch."), "command": "diffgame preprocess x",
            "shards": {"ds": []}}
    start = 0
    for k, seqs in enumerate(shards):
        name = shard_name(k)
        n = sum(len(s) for s in seqs)
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
        writer.write_part("ds", name, "tokens", {tokens_file("ds", name): {
            "input_ids": ids, "positions": torch.cat([torch.arange(len(s), dtype=torch.int32) for s in seqs]),
            "roles": torch.cat([torch.full((len(s),), i % 4, dtype=torch.uint8) for i, s in enumerate(seqs)]),
            "seq_offsets": torch.tensor([0] + [len(s) for s in seqs]).cumsum(0),
            "sequence_ids": torch.arange(len(seqs)) + 10 * k}}, {"rank": 0})
        for r, role in enumerate(("base", "organism")):
            files = {act_file("ds", role, layer, name): {"act": _act(r, layer, start, n).to(dtype)} for layer in LAYERS}
            writer.write_part("ds", name, role, files, {"rank": 0})
        plan["shards"]["ds"].append({"name": name, "index": k, "n_tokens": n, "n_sequences": len(seqs)})
        start += n
    writer.write_plan(plan)
    if finalize:
        writer.finalize(plan, {})


def _act(role: int, layer: int, start: int, n: int) -> torch.Tensor:
    tok = torch.arange(start, start + n, dtype=torch.float32)[:, None]
    return tok + 1000 * role + 100 * layer + torch.arange(D)[None] / 8


SHARDS = [[[5, 6, 7], [8, 9]], [[1, 2, 3, 4]], [[11], [12, 13]]]


@pytest.fixture
def store(tmp_path):
    _write(tmp_path, SHARDS, dtype=torch.float32)
    return ActivationStore.open(tmp_path)


def test_metadata_and_tokens(store):
    assert store.datasets == ["ds"] and store.layers == LAYERS and store.d_model == D and store.dtype == torch.float32
    ts = store.tokens("ds")
    assert ts.input_ids.tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 4, 11, 12, 13]
    assert ts.positions.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0, 1]
    assert ts.seq_offsets.tolist() == [0, 3, 5, 9, 10, 12]
    assert ts.sequence_ids.tolist() == [0, 1, 10, 20, 21]
    assert ts.roles.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert store.n_tokens("ds") == len(ts) == 12


def test_activations_and_batches_are_aligned(store):
    for layer in LAYERS:
        assert torch.equal(store.activations("ds", "base", layer), _act(0, layer, 0, 12))
        assert torch.equal(store.activations("ds", "organism", layer), _act(1, layer, 0, 12))
        seen = []
        for start, b, o in store.iter_batches("ds", layer, batch_tokens=2):
            assert b.shape == o.shape and b.shape[1] == D and b.shape[0] <= 2
            assert torch.equal(b, _act(0, layer, start, b.shape[0])) and torch.equal(o, _act(1, layer, start, o.shape[0]))
            seen.extend(range(start, start + b.shape[0]))
        assert seen == list(range(12))


def test_sequences(store):
    views = list(store.sequences("ds"))
    assert [v.input_ids.tolist() for v in views] == [s for shard in SHARDS for s in shard]
    assert [(v.index, v.sequence_id, v.start, v.end) for v in views] == [
        (0, 0, 0, 3), (1, 1, 3, 5), (2, 10, 5, 9), (3, 20, 9, 10), (4, 21, 10, 12)]
    assert views[1].roles.tolist() == [1, 1] and views[2].positions.tolist() == [0, 1, 2, 3]


def test_shuffled_batches(store):
    idx_all = []
    for idx, b, o in store.shuffled_batches("ds", 5, batch_size=5, seed=3):
        full_b, full_o = _act(0, 5, 0, 12), _act(1, 5, 0, 12)
        assert torch.equal(b, full_b[idx]) and torch.equal(o, full_o[idx])
        idx_all.extend(idx.tolist())
    assert sorted(idx_all) == list(range(12)) and idx_all != list(range(12))
    again = [i.tolist() for i, _, _ in store.shuffled_batches("ds", 5, batch_size=5, seed=3)]
    assert sum(again, []) == idx_all


def test_single_shard_is_memory_mapped_and_bf16(tmp_path):
    _write(tmp_path, [[[1, 2, 3]]], dtype=torch.bfloat16)
    store = ActivationStore.open(tmp_path)
    act = store.activations("ds", "base", 2)
    assert act.dtype == torch.bfloat16 and torch.equal(act, _act(0, 2, 0, 3).to(torch.bfloat16))
    path = tmp_path / act_file("ds", "base", 2, shard_name(0))
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    import numpy as np

    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=header)
    assert act.untyped_storage().nbytes() == raw.nbytes  # a view of the file's data, not a copy


def test_unknown_dataset_role_layer(store):
    with pytest.raises(StoreError, match="dataset 'nope' is not in store.*stored: ds"):
        store.tokens("nope")
    with pytest.raises(StoreError, match=r"layer 3 is not in store.*\[2, 5\]"):
        store.activations("ds", "base", 3)
    with pytest.raises(StoreError, match="unknown role 'chat'"):
        store.activations("ds", "chat", 2)


def test_missing_and_partial_store(tmp_path):
    with pytest.raises(StoreError, match="no activation store.*diffgame preprocess"):
        ActivationStore.open(tmp_path / "none")
    _write(tmp_path, SHARDS, finalize=False)
    with pytest.raises(StoreError, match=r"partial \(no manifest.*rerun `diffgame preprocess x` to resume"):
        ActivationStore.open(tmp_path)


def test_corrupt_shard_names_file_and_command(tmp_path):
    _write(tmp_path, SHARDS)
    path = tmp_path / act_file("ds", "organism", 5, shard_name(1))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"corrupt store: shard file {path} fails its sha256.*diffgame preprocess x"):
        ActivationStore.open(tmp_path)
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(StoreError, match="has .* bytes, manifest says"):
        ActivationStore.open(tmp_path, verify=False)


def test_finalize_refuses_missing_part(tmp_path):
    _write(tmp_path, SHARDS, finalize=False)
    writer = StoreWriter(tmp_path)
    writer.marker("ds", shard_name(2), "organism").unlink()
    with pytest.raises(StoreError, match="part organism of shard s00002 of 'ds' is missing"):
        writer.finalize(writer.read_plan(), {})


def test_write_parts_in_parallel_makes_files_then_one_marker_per_part(tmp_path):
    """All files of a shard (tensors given directly or made by a callable) are written by the executor, and each
    part's marker lists exactly its own files with their checksums."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    writer = StoreWriter(tmp_path, checksum="sha256")
    made = []

    def maker(role, layer):
        def make():
            made.append((role, layer))
            return {"act": _act(role, layer, 0, 4)}
        return make

    parts = {"tokens": {tokens_file("ds", "s0"): {"input_ids": torch.arange(4, dtype=torch.int32)}}}
    for r, role in enumerate(("base", "organism")):
        parts[role] = {act_file("ds", role, layer, "s0"): maker(r, layer) for layer in LAYERS}
    with ThreadPoolExecutor(4) as pool:
        written = writer.write_parts("ds", "s0", parts, {"rank": 0}, executor=pool)
    assert sorted(made) == sorted((r, layer) for r in (0, 1) for layer in LAYERS)
    for part, files in parts.items():
        assert writer.part_done("ds", "s0", part)
        listed = json.loads(writer.marker("ds", "s0", part).read_text())["files"]
        assert set(listed) == set(files) and set(files) <= set(written)
        for rel, info in listed.items():
            assert info["sha256"] == hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()


def test_write_file_is_byte_identical_to_safetensors_save(tmp_path):
    """The writer streams tensors to disk, but the file (so the store format and its checksums) is exactly what
    `safetensors.torch.save` makes, and the recorded sha256 and size are the file's."""
    from safetensors.torch import save

    from diffgame.store import write_file

    g = torch.Generator().manual_seed(0)
    tensors = {"acts": torch.randn(300, 64, generator=g).to(torch.bfloat16), "ids": torch.arange(300, dtype=torch.int32),
               "offsets": torch.tensor([0, 120, 300]), "empty": torch.zeros(0, 64)}
    info = write_file(tmp_path / "a" / "shard.safetensors", tensors, checksum="sha256")
    written = (tmp_path / "a" / "shard.safetensors").read_bytes()
    assert written == save(tensors)
    assert info == {"sha256": hashlib.sha256(written).hexdigest(), "bytes": len(written)}
    assert not (tmp_path / "a" / "shard.safetensors.tmp").exists()
