"""Write shards from a background thread as predictions arrive (a Lightning `BasePredictionWriter`).

The predict loop hands each batch's packed activations to a bounded queue, so the forward passes never
wait on disk unless the disk is slower than the models; a shard's part is marked complete only after its
files are written, which is what a resumed run trusts. A writer error (e.g. a full disk) fails the run.
Batches are written from the memory they arrived in (no clone, no concatenation) with an xxh3_128 checksum
computed on the way (issue #18: cloning and sha256 read-backs made extraction writer-bound).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from diffgame.errors import StoreError
from diffgame.preprocess.module import world
from diffgame.store import StoreWriter, act_file, tokens_file


class PendingParts:
    """Which of this pass's parts of a shard are not yet complete on disk (a picklable callable, for ddp_spawn)."""

    def __init__(self, root, parts: list[str]):
        self.root, self.parts = root, list(parts)

    def __call__(self, dataset: str, shard: str) -> list[str]:
        store = StoreWriter(self.root)
        return [p for p in self.parts if not store.part_done(dataset, shard, p)]


class ShardWriter(BasePredictionWriter):
    """Accumulates each shard's batches and writes its parts (`tokens`, `base`, `organism`) when complete."""

    def __init__(self, root, pending_parts: Callable[[str, str], list[str]], uploader: Callable | None = None,
                 command: str = "diffgame preprocess", max_queue: int = 8):
        super().__init__(write_interval="batch")
        self.root, self.pending_parts, self.uploader, self.command = root, pending_parts, uploader, command
        self.max_queue = max_queue
        self.bytes_written = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.store = StoreWriter(self.root)
        self.queue: queue.Queue = queue.Queue(self.max_queue)
        self.error: BaseException | None = None
        # files of a shard (one per layer) are hashed and written in parallel: one thread cannot keep up with an
        # accelerator's device-to-host rate, and page-cache writes cost kernel CPU (0.3-1 s per GB on a 2-core VM)
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 2) - 1)),
                                       thread_name_prefix="diffgame-file-writer")
        self.thread = threading.Thread(target=self._loop, name="diffgame-shard-writer", daemon=True)
        self.thread.start()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        while True:  # bounded put that notices a dead writer instead of blocking forever
            self._raise_if_failed()
            try:
                self.queue.put(prediction, timeout=0.5)
                return
            except queue.Full:
                continue

    def on_predict_end(self, trainer, pl_module) -> None:
        self.close()
        trainer.strategy.barrier("diffgame-shards-written")  # rank 0 writes the manifest once every rank's are on disk

    def on_exception(self, trainer, pl_module, exception) -> None:
        if getattr(self, "thread", None) is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.pool.shutdown()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    # --- the writer thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        open_shards: dict[tuple[str, str], list[dict]] = defaultdict(list)
        held: dict[tuple[str, str], list] = defaultdict(list)  # pinned buffers a shard's batches still live in
        key = ("?", "?")
        while True:
            item = self.queue.get()
            if item is None or self.error is not None:
                if item is None:
                    return
                continue  # drain after a failure so the producer never blocks
            try:
                if item["event"] is not None:
                    item["event"].synchronize()
                meta = item["meta"]
                key = (meta["dataset"], meta["shard"])
                held[key] += [(item["pool"], buf) for buf in item["held"]]
                open_shards[key].append({"meta": meta, "acts": item["acts"]})
                if meta["batch"] == meta["n_batches"] - 1:
                    self._write_shard(*key, open_shards.pop(key))
                    for pool, buf in held.pop(key):  # reused only once the files written from them are on disk
                        pool.give(buf)
            except BaseException as e:  # surfaced on the main thread by the next put or close
                self.error = self._explain(e, key)

    def _explain(self, e: BaseException, key) -> BaseException:
        if isinstance(e, OSError):
            if e.errno == errno.ENOSPC:
                what, fix = "the disk is full", "free space (or move the artifact store)"
            elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                what, fix = f"permission denied ({e.strerror})", "make the folder writable (or move the artifact store)"
            else:
                what, fix = f"{type(e).__name__}: {e}", "fix the cause"
            return StoreError(f"cannot write shard {key[1]} of '{key[0]}' to {self.root}: {what}; the store stays "
                              f"partial; {fix} and rerun `{self.command}` to resume")
        return e

    def _write_shard(self, dataset: str, shard: str, batches: list[dict]) -> None:
        rank = world()[0]
        metas = [b["meta"] for b in batches]
        ids = [torch.tensor(x, dtype=torch.int32) for m in metas for x in m["input_ids"]]
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
        common = {"rank": rank, "n_tokens": int(lengths.sum()), "n_sequences": len(ids)}
        parts: dict[str, dict] = {}
        for part in self.pending_parts(dataset, shard):
            if part == "tokens":
                tensors = {
                    "input_ids": torch.cat(ids),  # [n]
                    "positions": torch.cat([torch.arange(len(x), dtype=torch.int32) for x in ids]),
                    "roles": torch.cat([torch.tensor(r, dtype=torch.uint8) for m in metas for r in m["roles"]]),
                    "seq_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),  # [s+1]
                    "sequence_ids": torch.tensor([i for m in metas for i in m["sequence_ids"]], dtype=torch.int64)}
                parts[part] = {tokens_file(dataset, shard): tensors}
            else:
                layers = sorted({layer for (role, layer) in batches[0]["acts"] if role == part})
                if not layers:
                    continue  # this pass does not run that model (sequential mode)
                # each layer's [n, D] is written batch by batch as one tensor (write_file takes row chunks)
                parts[part] = {act_file(dataset, part, layer, shard): {"act": [b["acts"][part, layer] for b in batches]}
                               for layer in layers}
        # every file of the shard (all parts, all layers) is written in parallel; markers follow their files
        written = self.store.write_parts(dataset, shard, parts, common, executor=self.pool)
        self.bytes_written += sum((self.store.root / r).stat().st_size for r in written)
        if self.uploader is not None and written:
            self.uploader(written)
