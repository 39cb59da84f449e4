"""The store's layout: format version, model roles, parts and the relative path of every file.

Layout under the store root (DESIGN.md §3):
  plan.json                                the shard plan, written first (a store without a manifest is partial)
  <dataset>/tokens/<shard>.safetensors     input_ids, positions, roles, seq_offsets, sequence_ids of the shard
  <dataset>/<role>/L<layer>/<shard>.safetensors   `act` [n, D] for role base|organism
  _parts/<dataset>.<shard>.<part>.json     completion marker of one part (tokens|base|organism), with checksums
  manifest.json                            written last: datasets, shards, counts, dtype, layers, checksums
Reads are memory-mapped (no copies) from the safetensors files in place. Each file's entry is
`{"bytes": size, <algorithm>: hex digest}` with one algorithm of `CHECKSUMS`.
"""

from __future__ import annotations

import hashlib

import torch
import xxhash

FORMAT = 2
"""Manifest format: 2 records each file's checksum under its algorithm's name (xxh3_128 or sha256); 1 only sha256.
Readers read every format up to theirs and refuse a newer one."""
MODEL_ROLES = ("base", "organism")
PARTS = ("tokens", *MODEL_ROLES)
ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64,
             "I32": torch.int32, "U8": torch.uint8, "I16": torch.int16}
CHECKSUMS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
"""Checksum algorithms a file entry may record, preferred first: extraction records xxh3_128 (~25 GB/s per core,
computed while writing); stores written before it record sha256 and still verify."""


def shard_name(index: int) -> str:
    return f"s{index:05d}"


def tokens_file(dataset: str, shard: str) -> str:
    return f"{dataset}/tokens/{shard}.safetensors"


def act_file(dataset: str, role: str, layer: int, shard: str) -> str:
    return f"{dataset}/{role}/L{layer:03d}/{shard}.safetensors"


def rebuild_hint(manifest_or_plan: dict) -> str:
    return manifest_or_plan.get("command") or "diffgame preprocess <the same overrides>"


