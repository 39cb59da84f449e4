"""Writing a store: one safetensors file atomically (with its checksum), parts with completion markers, the plan,
and the manifest last.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from pathlib import Path

import torch

from diffgame.errors import StoreError
from diffgame.store.layout import CHECKSUMS, FORMAT, PARTS, rebuild_hint

Tensors = dict[str, torch.Tensor | Sequence[torch.Tensor]]
TensorsOrMaker = Tensors | Callable[[], Tensors]
_CHUNK = 8 << 20
"""Bytes hashed then written per step: hashing brings them into cache, the write copies them from there."""
_checksum: ContextVar[str] = ContextVar("diffgame_store_checksum", default="xxh3_128")
"""Algorithm `write_file` records when not told: each `StoreWriter` sets it around its calls, so `write_file` keeps
the two-argument form that callers and tests wrap."""


def tmp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique per process and call, so two writers never share one."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _header(tensors: dict[str, list[torch.Tensor]]) -> tuple[bytes, list[str]]:
    """The safetensors header (length prefix, JSON, space padding to 8 bytes) of `tensors` (name -> row chunks),
    and the names in the order their data follows it.

    safetensors orders entries by dtype then name and spells dtypes its own way; both are taken from the library
    itself by saving empty placeholders, so the header is the one `safetensors.torch.save` would write."""
    from safetensors.torch import save

    probe = save({name: torch.empty(0, dtype=chunks[0].dtype) for name, chunks in tensors.items()})
    (n,) = struct.unpack_from("<Q", probe)
    header, offset = {}, 0
    for name, info in json.loads(probe[8:8 + n]).items():
        chunks = tensors[name]
        shape = list(chunks[0].shape) if len(chunks) == 1 else [sum(c.shape[0] for c in chunks), *chunks[0].shape[1:]]
        size = sum(c.numel() for c in chunks) * chunks[0].element_size()
        header[name] = {"dtype": info["dtype"], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, list(header)


def _chunks(name: str, value: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`value` as a list of contiguous CPU row chunks that concatenate along dim 0."""
    chunks = [value] if isinstance(value, torch.Tensor) else list(value)
    if not chunks:
        raise ValueError(f"tensor '{name}' has no chunks")
    first = chunks[0]
    if any(c.dtype != first.dtype or c.shape[1:] != first.shape[1:] or c.dim() == 0 for c in chunks[1:]):
        raise ValueError(f"chunks of tensor '{name}' differ in dtype or trailing shape")
    return [c.detach().cpu().contiguous() for c in chunks]  # no-ops for the writer's CPU tensors


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (safetensors stores little-endian, as x86 and ARM are)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_file(path: Path, tensors: Tensors, checksum: str | None = None) -> dict:
    """Write one safetensors file atomically (unique tmp + rename); return `{checksum: hex digest, "bytes": size}`.

    The header and each tensor's bytes go from memory to the file in large sequential writes and are hashed on the
    way, so nothing is serialised to `bytes`, concatenated or read back; a list of tensors is stored as their
    concatenation along dim 0. `checksum` (a key of `CHECKSUMS`) defaults to the calling `StoreWriter`'s, else xxh3_128."""
    assert sys.byteorder == "little", "safetensors stores little-endian bytes"
    algorithm = checksum or _checksum.get()
    chunks = {name: _chunks(name, value) for name, value in tensors.items()}
    digest, size = CHECKSUMS[algorithm](), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    header, order = _header(chunks)
    tmp = tmp_path(path)
    try:
        with open(tmp, "xb", buffering=0) as f:
            for piece in (memoryview(header), *(_raw(c) for name in order for c in chunks[name])):
                for i in range(0, len(piece), _CHUNK):
                    step = piece[i:i + _CHUNK]
                    digest.update(step)
                    size += len(step)
                    while step:
                        step = step[f.write(step):]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {algorithm: digest.hexdigest(), "bytes": size}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class StoreWriter:
    """Writes a store part by part; each part is marked complete only after its files are on disk.

    `checksum` (a key of `CHECKSUMS`) is what file entries record: xxh3_128 unless told (an order of magnitude faster
    than sha256, which keeps hashing off extraction's hot path); stores written before issue #18 record sha256, and
    readers verify either."""

    def __init__(self, root: str | Path, checksum: str = "xxh3_128"):
        if checksum not in CHECKSUMS:
            raise ValueError(f"unknown checksum '{checksum}'; known: {', '.join(CHECKSUMS)}")
        self.root, self.checksum = Path(root), checksum

    def marker(self, dataset: str, shard: str, part: str) -> Path:
        return self.root / "_parts" / f"{dataset}.{shard}.{part}.json"

    def part_done(self, dataset: str, shard: str, part: str) -> bool:
        """Marker present and every file it lists present with its recorded size."""
        m = self.marker(dataset, shard, part)
        if not m.is_file():
            return False
        files = json.loads(m.read_text())["files"]
        return all((self.root / f).is_file() and (self.root / f).stat().st_size == info["bytes"]
                   for f, info in files.items())

    def write_part(self, dataset: str, shard: str, part: str, files: dict[str, dict[str, torch.Tensor]],
                   meta: dict, executor: Executor | None = None) -> list[str]:
        """Write `files` (relpath -> tensors) then the part's marker; returns the relpaths written."""
        return self.write_parts(dataset, shard, {part: files}, meta, executor)

    def write_parts(self, dataset: str, shard: str, parts: dict[str, dict[str, TensorsOrMaker]], meta: dict,
                    executor: Executor | None = None) -> list[str]:
        """Write each part's files, then each part's marker; returns the relpaths written.

        A file's tensors may be given as a callable that makes them (a concatenation, say), so that with an
        `executor` every file of every part is made, hashed and written in parallel."""
        jobs = [(part, rel, tensors) for part, files in parts.items() for rel, tensors in files.items()]

        def write(job) -> dict:
            _, rel, tensors = job
            token = _checksum.set(self.checksum)  # per call: pool threads do not share a context
            try:
                return write_file(self.root / rel, tensors() if callable(tensors) else tensors)
            finally:
                _checksum.reset(token)

        last = {part: i for i, (part, _, _) in enumerate(jobs)}
        files: dict[str, dict] = {part: {} for part in parts}
        written = []
        for part in parts:
            if part not in last:  # nothing to write: complete at once
                _write_json(self.marker(dataset, shard, part), {**meta, "files": {}})
                written.append(str(self.marker(dataset, shard, part).relative_to(self.root)))
        # results come back in submission order: a part's marker is written as soon as its own files are on
        # disk, so a failure later in the shard still leaves the finished parts resumable
        for i, info in enumerate((executor.map if executor is not None else map)(write, jobs)):
            part, rel, _ = jobs[i]
            files[part][rel] = info
            if last[part] == i:
                _write_json(self.marker(dataset, shard, part), {**meta, "files": files[part]})
                written += [*files[part], str(self.marker(dataset, shard, part).relative_to(self.root))]
        return written

    def write_plan(self, plan: dict) -> None:
        _write_json(self.root / "plan.json", plan)

    def read_plan(self) -> dict | None:
        p = self.root / "plan.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def finalize(self, plan: dict, extra: dict) -> dict:
        """Merge every rank's part markers into `manifest.json` (written last) and return it."""
        datasets = {}
        for name, shards in plan["shards"].items():
            entries = []
            for sh in shards:
                files, rank = {}, None
                for part in PARTS:
                    m = self.marker(name, sh["name"], part)
                    if not self.part_done(name, sh["name"], part):
                        raise StoreError(f"store {self.root} is incomplete: part {part} of shard {sh['name']} of "
                                         f"'{name}' is missing; rerun `{rebuild_hint(plan)}` to resume it")
                    info = json.loads(m.read_text())
                    files.update(info["files"])
                    rank = info.get("rank", rank) if part == "tokens" else rank
                entries.append({**sh, "rank": rank, "files": files})
            datasets[name] = {"n_tokens": sum(s["n_tokens"] for s in shards),
                              "n_sequences": sum(s["n_sequences"] for s in shards), "shards": entries}
        if not any(d["n_tokens"] for d in datasets.values()):  # never a FINISHED store a later run would reuse
            raise StoreError(f"store {self.root} would hold no tokens (datasets: {', '.join(datasets) or 'none'}); "
                             f"check the dataset sources and their limits (max_samples, max_tokens)")
        manifest = {k: v for k, v in plan.items() if k != "shards"}
        manifest.update({"format": FORMAT, "datasets": datasets, **extra})
        _write_json(self.root / "manifest.json", manifest)
        return manifest


