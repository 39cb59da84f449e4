"""Store checksums (issue #18): the writer's own safetensors serialisation and xxh3_128 digests, stores of the
previous version (sha256) still verifying, a flipped byte in any file named at open, and resume through extraction."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import xxhash

import diffgame.store.writer as store_mod
from diffgame.errors import StoreError
from diffgame.pipeline.planner import make_plan
from diffgame.preprocess import preprocess
from diffgame.store import ActivationStore, StoreWriter, act_file, shard_name, tokens_file, write_file

from _tiny_models import make_pair, tiny_cfg, write_data

D, LAYERS = 8, [2, 5]


def _write_store(root: Path, n_shards: int = 2) -> None:
    """A two-shard store written with xxh3_128 checksums; activation rows are given as chunks, as extraction does."""
    writer = StoreWriter(root, checksum="xxh3_128")
    plan = {"layers": LAYERS, "d_model": D, "dtype": "bfloat16", "command": "diffgame preprocess x", "shards": {"ds": []}}
    for k in range(n_shards):
        name, n = shard_name(k), 5 + k
        writer.write_part("ds", name, "tokens", {tokens_file("ds", name): {
            "input_ids": torch.arange(n, dtype=torch.int32) + 10 * k, "positions": torch.arange(n, dtype=torch.int32),
            "roles": torch.zeros(n, dtype=torch.uint8), "seq_offsets": torch.tensor([0, n]),
            "sequence_ids": torch.tensor([k])}}, {"rank": 0})
        for r, role in enumerate(("base", "organism")):
            acts = {layer: _act(r, layer, k, n) for layer in LAYERS}
            writer.write_part("ds", name, role, {act_file("ds", role, layer, name): {"act": [a[:2], a[2:]]}
                                                 for layer, a in acts.items()}, {"rank": 0})
        plan["shards"]["ds"].append({"name": name, "index": k, "n_tokens": n, "n_sequences": 1})
    writer.write_plan(plan)
    writer.finalize(plan, {})


def _act(role: int, layer: int, shard: int, n: int) -> torch.Tensor:
    return (torch.arange(n * D, dtype=torch.float32).reshape(n, D) + 1000 * role + 100 * layer + 10 * shard
            ).to(torch.bfloat16)


def _files(root: Path) -> dict[str, dict]:
    manifest = json.loads((root / "manifest.json").read_text())
    return {rel: info for d in manifest["datasets"].values() for s in d["shards"] for rel, info in s["files"].items()}


def _as_sha256_store(root: Path) -> None:
    """Rewrite every marker and the manifest as the previous version wrote them: `{"sha256", "bytes"}` per file."""
    def convert(files: dict) -> None:
        for rel, info in files.items():
            files[rel] = {"sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest(), "bytes": info["bytes"]}

    for marker in (root / "_parts").glob("*.json"):
        info = json.loads(marker.read_text())
        convert(info["files"])
        marker.write_text(json.dumps(info))
    manifest = json.loads((root / "manifest.json").read_text())
    for d in manifest["datasets"].values():
        for s in d["shards"]:
            convert(s["files"])
    (root / "manifest.json").write_text(json.dumps(manifest))


def _flip(path: Path, at: int) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    return data


def test_write_file_is_what_safetensors_writes_and_reads(tmp_path):
    """Header and bytes written from memory (row chunks included) equal `safetensors.torch.save` of the concatenated
    tensors, `safe_open` reads them back, and the recorded digest is xxh3_128 of the file; no temp file remains."""
    from safetensors import safe_open
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(300, 64, generator=g).to(torch.bfloat16)
    chunked = {"act": [acts[:100], acts[100:101], acts[101:]], "ids": torch.arange(300, dtype=torch.int32),
               "roles": torch.randint(0, 4, (300,), generator=g).to(torch.uint8), "offsets": torch.tensor([0, 120, 300]),
               "f32": torch.randn(3, 5, generator=g), "empty": torch.zeros(0, 64), "scalar": torch.tensor(7.0)}
    whole = {k: torch.cat(v) if isinstance(v, list) else v for k, v in chunked.items()}
    path = tmp_path / "a" / "shard.safetensors"
    info = write_file(path, chunked, checksum="xxh3_128")
    written = path.read_bytes()
    assert written == save(whole)
    assert info == {"xxh3_128": xxhash.xxh3_128(written).hexdigest(), "bytes": len(written)}
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(whole)
        for k, v in whole.items():
            assert torch.equal(f.get_tensor(k), v)
    assert list(path.parent.iterdir()) == [path]
    with pytest.raises(ValueError, match="chunks of tensor 'act' differ"):
        write_file(path, {"act": [acts, acts[:, :3]]})


def test_temp_names_are_unique_per_writer(tmp_path):
    path = tmp_path / "x.safetensors"
    names = {store_mod.tmp_path(path) for _ in range(100)}
    assert len(names) == 100 and all(p.name.startswith(f"x.safetensors.{os.getpid()}.") for p in names)


def test_new_store_records_xxh3_and_verifies(tmp_path):
    _write_store(tmp_path)
    files = _files(tmp_path)
    assert len(files) == 2 * (1 + 2 * len(LAYERS))
    for rel, info in files.items():
        assert set(info) == {"xxh3_128", "bytes"}
        assert info["xxh3_128"] == xxhash.xxh3_128((tmp_path / rel).read_bytes()).hexdigest()
    store = ActivationStore.open(tmp_path)
    assert store.tokens("ds").input_ids.tolist() == [*range(5), *range(10, 16)]
    for r, role in enumerate(("base", "organism")):
        for layer in LAYERS:
            assert torch.equal(store.activations("ds", role, layer), torch.cat([_act(r, layer, 0, 5), _act(r, layer, 1, 6)]))


def test_sha256_store_of_the_previous_version_opens_and_verifies(tmp_path):
    _write_store(tmp_path)
    _as_sha256_store(tmp_path)
    assert all(set(info) == {"sha256", "bytes"} for info in _files(tmp_path).values())
    store = ActivationStore.open(tmp_path)
    assert torch.equal(store.activations("ds", "base", 5)[:5], _act(0, 5, 0, 5))
    path = tmp_path / act_file("ds", "base", 5, shard_name(1))
    _flip(path, path.stat().st_size - 3)
    with pytest.raises(StoreError, match=rf"shard file {path} fails its sha256 checksum"):
        ActivationStore.open(tmp_path)


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_flipped_byte_in_any_file_is_named_at_open(tmp_path, where):
    """Every file of the store (tokens and activations of both roles), one at a time."""
    _write_store(tmp_path)
    for rel in _files(tmp_path):
        path = tmp_path / rel
        header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        original = _flip(path, 10 if where == "header" else (header + path.stat().st_size) // 2)
        with pytest.raises(StoreError, match=rf"corrupt store: shard file {path} fails its xxh3_128 checksum"):
            ActivationStore.open(tmp_path)
        ActivationStore.open(tmp_path, verify=False)  # sizes still match: only the checksum sees it
        path.write_bytes(original)
    ActivationStore.open(tmp_path)


def test_unknown_checksum_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown checksum 'md5'; known: xxh3_128, sha256"):
        StoreWriter(tmp_path, checksum="md5")
    _write_store(tmp_path, n_shards=1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    rel, info = next(iter(manifest["datasets"]["ds"]["shards"][0]["files"].items()))
    info["md5"] = info.pop("xxh3_128")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=rf"{tmp_path / rel} records no checksum this version knows"):
        ActivationStore.open(tmp_path)


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def test_interrupted_extraction_resumes_to_the_uninterrupted_store(tmp_path, monkeypatch):
    """Extraction writes xxh3_128 entries; killed after a few files and resumed, it gives the same files, the same
    digests and no leftover temp files."""
    base, org = make_pair(tmp_path / "pair")
    data = write_data(tmp_path / "data", n_text=8, n_chat=6)
    reference = preprocess(make_plan(tiny_cfg(base, org, data, tmp_path / "ref.db")), shard_tokens=300)
    cfg = tiny_cfg(base, org, data, tmp_path / "mlflow.db")
    real, count = store_mod.write_file, [0]

    def dies_after_six(path, tensors):
        count[0] += 1
        if count[0] > 6:
            raise RuntimeError("killed")
        return real(path, tensors)

    monkeypatch.setattr(store_mod, "write_file", dies_after_six)
    with pytest.raises(RuntimeError, match="killed"):
        preprocess(make_plan(cfg), shard_tokens=300)
    monkeypatch.undo()
    resumed = preprocess(make_plan(cfg), shard_tokens=300)
    ref_root, got_root = Path(reference.store_path), Path(resumed.store_path)
    assert _shard_bytes(got_root) == _shard_bytes(ref_root) and len(_shard_bytes(ref_root)) > 6
    assert _files(got_root) == _files(ref_root)
    assert all(set(info) == {"xxh3_128", "bytes"} for info in _files(got_root).values())
    assert not list(got_root.rglob("*.tmp"))
    ActivationStore.open(got_root)


def test_a_store_of_a_newer_format_is_refused_in_one_line(tmp_path):
    """A reader reads every format up to its own (sha256-only stores are format 1) and refuses a newer one."""
    import json

    from diffgame.store.layout import FORMAT

    root = tmp_path / "store"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"format": FORMAT + 1, "datasets": {}}))
    with pytest.raises(StoreError, match=rf"has format {FORMAT + 1}, newer than this diffgame reads \(up to "
                                         rf"{FORMAT}\); upgrade diffgame"):
        ActivationStore.open(root)
