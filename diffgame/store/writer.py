"""Writing a store: one safetensors file atomically (with its checksum), parts with completion markers, the plan,
and the manifest last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import torch

from diffgame.errors import StoreError
from diffgame.store.layout import FORMAT, PARTS, rebuild_hint

TensorsOrMaker = dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]


def write_file(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write one safetensors file atomically (tmp + rename); return its sha256 and size.

    `save_file` writes straight from the tensors' memory and the hash reads the file back from the page cache:
    serialising to `bytes` first costs two more copies, one of them under the GIL, which serialised the writer
    threads (1.3-1.7x slower on the CPU; benchmarks/extraction.py measures the whole path)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    digest, size, buf = hashlib.sha256(), 0, bytearray(1 << 24)
    view = memoryview(buf)
    with open(tmp, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    os.replace(tmp, path)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class StoreWriter:
    """Writes a store part by part; each part is marked complete only after its files are on disk."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

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
        `executor` every file of every part is made, serialised, hashed and written in parallel."""
        jobs = [(part, rel, tensors) for part, files in parts.items() for rel, tensors in files.items()]

        def write(job) -> dict:
            _, rel, tensors = job
            return write_file(self.root / rel, tensors() if callable(tensors) else tensors)

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


