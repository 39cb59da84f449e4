"""The Lightning side of extraction: planned batches per rank, and a `predict_step` running both models on them.

`predict_step` captures the requested layers of base and organism (or of one model, in sequential mode)
on the same padded batch, drops padding, casts to the store dtype on the device, and starts an async copy
into pinned host memory; the writer thread waits on the copy's event before it touches the data, and hands the
pinned buffers back only after their shard's files are written (so it never copies them).
"""

from __future__ import annotations

import threading

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import IterableDataset

from diffgame.models.batching import pad_right
from diffgame.models.residuals import capture_residuals


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchMeta:
    """A batch's bookkeeping (shard, sequence ids, token ids, roles) as one opaque object: the DataLoader's convert
    and Lightning's device move walk dicts and lists element by element, which cost 1-10 ms per batch on its
    per-token lists."""

    __slots__ = ("meta",)

    def __init__(self, meta: dict):
        self.meta = meta


class PlannedBatches(IterableDataset):
    """This rank's batches of the shards still to do: shard k goes to rank k % world size.

    `pending(dataset, shard_name)` is asked at iteration time, so a resumed run skips finished shards.
    """

    def __init__(self, plan: dict, sequences: dict, pad_id: int, pending):
        self.plan, self.sequences, self.pad_id, self.pending = plan, sequences, pad_id, pending

    def shards(self, rank: int, world_size: int) -> list[dict]:
        todo = []
        for name, shards in self.plan["shards"].items():
            for sh in shards:
                if sh["index"] % world_size == rank and self.pending(name, sh["name"]):
                    todo.append({**sh, "dataset": name})
        return todo

    def __iter__(self):
        rank, world_size = world()
        for sh in self.shards(rank, world_size):
            seqs = self.sequences[sh["dataset"]]
            for b, members in enumerate(sh["batches"]):
                yield self.collate([seqs[i] for i in members], sh, b)

    def collate(self, seqs, shard: dict, b: int) -> dict:
        ids, mask = pad_right([s.input_ids for s in seqs], self.pad_id)  # [B, T], right-padded
        meta = {"dataset": shard["dataset"], "shard": shard["name"], "batch": b, "n_batches": len(shard["batches"]),
                "sequence_ids": [s.sequence_id for s in seqs], "input_ids": [s.input_ids for s in seqs],
                "roles": [s.roles for s in seqs]}
        keep = mask.flatten().nonzero().squeeze(1)  # [n] flat indices of real tokens, found here so no device syncs
        return {"input_ids": ids, "attention_mask": mask, "keep": keep, "meta": BatchMeta(meta)}


class HostBuffers:
    """A free list of pinned host buffers, so the device-to-host copies never allocate pinned memory per batch."""

    def __init__(self):
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()  # taken on the main thread, given back by the writer thread

    def take(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        with self.lock:
            for i, buf in enumerate(self.free):
                if buf.numel() >= numel and buf.dtype == dtype:
                    return self.free.pop(i)
        return torch.empty(max(numel, 1 << 20), dtype=dtype, pin_memory=True)

    def give(self, buf: torch.Tensor) -> None:
        with self.lock:
            self.free.append(buf)


class PairedExtraction(L.LightningModule):
    """Runs `models` ({role: model}) on each batch and returns their packed activations at `layers`."""

    def __init__(self, models: dict, layers: list[int], dtype: torch.dtype, move_models: bool = True):
        super().__init__()
        self._models = models  # not registered: device_map models must not be moved by Lightning
        self.layers, self.store_dtype, self.move_models = list(layers), dtype, move_models
        self.host_buffers: HostBuffers | None = None  # made per process (a lock does not pickle for ddp_spawn)

    def on_predict_start(self) -> None:
        self.host_buffers = HostBuffers()
        if self.move_models:
            for m in self._models.values():
                m.to(self.device)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        ids, mask, keep = batch["input_ids"], batch["attention_mask"], batch["keep"]
        acts, held = {}, []
        for role, model in self._models.items():
            hs = capture_residuals(model, ids.to(model.device), mask.to(model.device), self.layers)
            for layer, h in hs.items():
                flat = h.flatten(0, 1)  # [B*T, D]
                if keep.numel() < flat.shape[0]:  # a batch without padding is stored as the layer made it (cast)
                    flat = flat.index_select(0, keep.to(flat.device))  # [n, D], padding dropped
                packed = flat.to(self.store_dtype)
                if packed.is_cuda:
                    buf = self.host_buffers.take(packed.numel(), packed.dtype)
                    host = buf[:packed.numel()].view(packed.shape)
                    host.copy_(packed, non_blocking=True)
                    held.append(buf)
                else:
                    host = packed
                acts[(role, layer)] = host
        event = None
        if held:
            event = torch.cuda.Event()
            event.record()
        return {"meta": batch["meta"].meta, "acts": acts, "event": event, "held": held, "pool": self.host_buffers}


class TokenProgress(Callback):
    """A tqdm bar in tokens (so it shows tokens/s) on rank 0."""

    def __init__(self, batches: PlannedBatches, desc: str):
        self.batches, self.desc, self.bar = batches, desc, None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            from tqdm.auto import tqdm

            total = sum(s["n_tokens"] for s in self.batches.shards(0, trainer.world_size))
            self.bar = tqdm(total=total, desc=self.desc, unit="tok", unit_scale=True, dynamic_ncols=True)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.bar is not None:
            self.bar.update(sum(len(x) for x in batch["meta"].meta["input_ids"]))  # no device sync

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
