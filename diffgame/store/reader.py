"""Reading a complete store: memory-mapped safetensors shards, the token stream, and token-aligned batches.

`ActivationStore.open` refuses a partial store (no manifest) and checks every file's size and checksum (xxh3_128,
or sha256 in stores written before it).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffgame.errors import StoreError
from diffgame.store.layout import CHECKSUMS, FORMAT, MODEL_ROLES, ST_DTYPES, act_file, rebuild_hint, tokens_file
from diffgame.store.writer import StoreWriter

Fetch = Callable[[str], Path]
"""Brings a store file (its path relative to the store) into a local cache and returns where it is."""


def _header(path: Path) -> tuple[int, dict]:
    """(data start, header) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def read_rows(path: Path, name: str, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of 2-D tensor `name` of a safetensors file, read into fresh memory (no map stays behind,
    so reading a store larger than RAM in blocks keeps memory bounded)."""
    data, header = _header(path)
    info = header[name]
    dtype, (rows, cols) = ST_DTYPES[info["dtype"]], info["shape"]
    start, stop = max(0, start), min(stop, rows)
    row_bytes = cols * torch.finfo(dtype).bits // 8 if dtype.is_floating_point else cols * torch.iinfo(dtype).bits // 8
    buf = bytearray(max(stop - start, 0) * row_bytes)
    with open(path, "rb", buffering=0) as f:
        f.seek(data + info["data_offsets"][0] + start * row_bytes)
        got = f.readinto(buf)
    if got != len(buf):
        raise StoreError(f"store file {path} is shorter than its header says; rebuild the store")
    if not buf:
        return torch.empty(0, cols, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(-1, cols)


def mmap_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file as copy-on-write memory maps (nothing is read until touched)."""
    data, header = _header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = ST_DTYPES[info["dtype"]]
        if end == start:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=data + start, shape=(end - start,))
        out[name] = torch.from_numpy(raw).view(dtype).reshape(info["shape"])
    return out


@dataclass
class TokenStream:
    """The flat token stream of one dataset: N tokens in S sequences, no padding."""

    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64, position inside its sequence
    roles: torch.Tensor  # [N] int64, indexes diffgame.data.sequences.ROLES
    seq_offsets: torch.Tensor  # [S+1] int64, sequence s spans seq_offsets[s]:seq_offsets[s+1]
    sequence_ids: torch.Tensor  # [S] int64, row index in the source dataset

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class SequenceView:
    """One stored sequence: its tokens and where it sits in the flat stream."""

    index: int
    sequence_id: int
    input_ids: torch.Tensor
    roles: torch.Tensor
    positions: torch.Tensor
    start: int
    end: int


class ActivationStore:
    """Read access to a complete store; open with `ActivationStore.open(path)`."""

    def __init__(self, root: Path, manifest: dict, skip_first: int = 0, fetch: Fetch | None = None,
                 verify: bool = True):
        self.root, self.manifest = root, manifest
        self.skip_first = skip_first
        """Tokens at positions < this are left out of what methods compute (`keep`); `model.skip_first`."""
        self._tokens: dict[str, TokenStream] = {}
        self._fetch, self._verify = fetch, verify
        self._arrived: set[str] = set()

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, skip_first: int = 0,
             fetch: Fetch | None = None) -> "ActivationStore":
        """Open a store, refusing a partial one; `verify` checks every file's checksum against the manifest;
        `skip_first` sets which tokens `keep` leaves out. With `fetch` (a remote store read through a cache), a file
        is brought by `fetch(relative path)` when first read and checked then, so only what is read is fetched."""
        root = Path(path)
        if fetch is not None:
            try:
                fetch("manifest.json")
            except StoreError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the artifact store's client raises
                raise StoreError(f"no finished activation store at {root} ({type(e).__name__}: {str(e)[:200]}); "
                                 f"build one with `diffgame preprocess ...`") from None
        mpath = root / "manifest.json"
        if not mpath.is_file():
            plan = StoreWriter(root).read_plan()
            if plan is not None:
                raise StoreError(f"store {root} is partial (no manifest: its preprocess run did not finish); "
                                 f"rerun `{rebuild_hint(plan)}` to resume it")
            raise StoreError(f"no activation store at {root} (manifest.json missing); "
                             f"build one with `diffgame preprocess ...`")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"unreadable manifest {mpath}: {e}; rebuild with `diffgame preprocess ...`") from None
        if int(manifest.get("format", 1)) > FORMAT:
            raise StoreError(f"store {root} has format {manifest['format']}, newer than this diffgame reads "
                             f"(up to {FORMAT}); upgrade diffgame, or rebuild the store with this version")
        store = cls(root, manifest, skip_first, fetch, verify)
        if fetch is None:  # fetched files are checked as they arrive
            store.check_files(checksums=verify)
        return store

    def _files(self) -> dict[str, dict]:
        return {rel: info for ds in self.manifest["datasets"].values() for sh in ds["shards"]
                for rel, info in sh["files"].items()}

    def check_files(self, checksums: bool = True) -> None:
        """Every listed file exists with its recorded size (and checksum, by whichever algorithm it records)."""
        for rel, info in self._files().items():
            self._check_file(self.root / rel, info, checksums)

    def _check_file(self, f: Path, info: dict, checksums: bool) -> None:
        why = None
        if not f.is_file():
            why = "is missing"
        elif f.stat().st_size != info["bytes"]:
            why = f"has {f.stat().st_size} bytes, manifest says {info['bytes']}"
        elif checksums:
            algorithm = next((a for a in CHECKSUMS if a in info), None)
            if algorithm is None:
                why = f"records no checksum this version knows ({', '.join(CHECKSUMS)})"
            elif file_digest(f, algorithm) != info[algorithm]:
                why = f"fails its {algorithm} checksum"
        if why:
            raise StoreError(f"corrupt store: shard file {f} {why}; rebuild it with "
                             f"`{rebuild_hint(self.manifest)}` (after deleting the run or its store)")

    def _file(self, rel: str) -> Path:
        """The local path of store file `rel`: in place, or fetched into the cache and checked on arrival."""
        if self._fetch is None:
            return self.root / rel
        path = self._fetch(rel)
        if rel not in self._arrived:
            self._check_file(path, self._files()[rel], self._verify)
            self._arrived.add(rel)
        return path

    # metadata
    @property
    def datasets(self) -> list[str]:
        return list(self.manifest["datasets"])

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.manifest["layers"]]

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    def n_tokens(self, dataset: str) -> int:
        return int(self._ds(dataset)["n_tokens"])

    def _ds(self, dataset: str) -> dict:
        if dataset not in self.manifest["datasets"]:
            raise StoreError(f"dataset '{dataset}' is not in store {self.root}; stored: {', '.join(self.datasets)}")
        return self.manifest["datasets"][dataset]

    def _check(self, role: str, layer: int) -> None:
        if role not in MODEL_ROLES:
            raise StoreError(f"unknown role '{role}'; valid: {', '.join(MODEL_ROLES)}")
        if layer not in self.layers:
            raise StoreError(f"layer {layer} is not in store {self.root}; stored layers: {self.layers}")

    # tokens
    def tokens(self, dataset: str) -> TokenStream:
        if dataset not in self._tokens:
            parts = [mmap_tensors(self._file(tokens_file(dataset, sh["name"]))) for sh in self._ds(dataset)["shards"]]
            offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
            for p in parts:
                offsets.append(p["seq_offsets"][1:].long() + base)
                base += int(p["input_ids"].shape[0])
            self._tokens[dataset] = TokenStream(
                input_ids=torch.cat([p["input_ids"].long() for p in parts]),
                positions=torch.cat([p["positions"].long() for p in parts]),
                roles=torch.cat([p["roles"].long() for p in parts]),
                seq_offsets=torch.cat(offsets),
                sequence_ids=torch.cat([p["sequence_ids"].long() for p in parts]))
        return self._tokens[dataset]

    def keep(self, dataset: str) -> torch.Tensor:
        """[N] bool: the tokens of `dataset` that statistics and dictionary training read, those at positions >=
        `skip_first` (the first tokens of a sequence, the attention sink, carry outlier norms). Every store method
        masks with this, and only this."""
        return self.tokens(dataset).positions >= self.skip_first

    # activations
    def shard_activations(self, dataset: str, role: str, layer: int) -> list[torch.Tensor]:
        """Per shard, the memory-mapped `[n, D]` activations, in stream order."""
        self._check(role, layer)
        return [mmap_tensors(self._file(act_file(dataset, role, layer, sh["name"])))["act"]
                for sh in self._ds(dataset)["shards"]]

    def activations(self, dataset: str, role: str, layer: int) -> torch.Tensor:
        """`[N, D]` activations of one role and layer; a zero-copy map for a one-shard store, else concatenated."""
        shards = self.shard_activations(dataset, role, layer)
        return shards[0] if len(shards) == 1 else torch.cat(shards)

    def iter_batches(self, dataset: str, layer: int, batch_tokens: int = 4096
                     ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Token-aligned `(start, base [n, D], organism [n, D])` slices in stream order (never across shards)."""
        start = 0
        for b, o in zip(self.shard_activations(dataset, "base", layer),
                        self.shard_activations(dataset, "organism", layer)):
            for i in range(0, b.shape[0], batch_tokens):
                yield start + i, b[i:i + batch_tokens], o[i:i + batch_tokens]
            start += b.shape[0]

    def sequences(self, dataset: str) -> Iterator[SequenceView]:
        ts = self.tokens(dataset)
        off = ts.seq_offsets.tolist()
        for s in range(len(off) - 1):
            a, e = off[s], off[s + 1]
            yield SequenceView(s, int(ts.sequence_ids[s]), ts.input_ids[a:e], ts.roles[a:e], ts.positions[a:e], a, e)

    def shard_sizes(self, dataset: str) -> list[int]:
        """Tokens per shard of `dataset`, in stream order."""
        return [int(sh["n_tokens"]) for sh in self._ds(dataset)["shards"]]

    def read_block(self, dataset: str, role: str, layer: int, shard: int, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop` of shard `shard` (index) of one role and layer, read into fresh memory `[n, D]`."""
        self._check(role, layer)
        name = self._ds(dataset)["shards"][shard]["name"]
        return read_rows(self._file(act_file(dataset, role, layer, name)), "act", start, stop)

    def shuffled_batches(self, dataset: str, layer: int, batch_size: int, seed: int = 0
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`(token_index [n], base [n, D], organism [n, D])` over a seeded permutation of all tokens (one epoch)."""
        base = self.shard_activations(dataset, "base", layer)
        org = self.shard_activations(dataset, "organism", layer)
        bounds = torch.tensor([0] + [t.shape[0] for t in base]).cumsum(0)
        perm = torch.randperm(int(bounds[-1]), generator=torch.Generator().manual_seed(seed))
        for i in range(0, perm.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            shard = torch.searchsorted(bounds, idx, right=True) - 1
            out_b = torch.empty(idx.shape[0], self.d_model, dtype=base[0].dtype)
            out_o = torch.empty_like(out_b)
            for s in shard.unique().tolist():
                sel = (shard == s).nonzero().squeeze(1)
                local = idx[sel] - bounds[s]
                out_b[sel], out_o[sel] = base[s][local], org[s][local]
            yield idx, out_b, out_o


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file by one of `CHECKSUMS`, streamed in constant memory."""
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, CHECKSUMS[algorithm]).hexdigest()
