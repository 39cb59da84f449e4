"""Shuffled training batches of one layer of an activation store, with memory bounded by a shuffle buffer.

The store's tokens are cut into blocks of consecutive rows; each epoch visits the blocks in a seeded order, reads
`buffer_blocks` of them at a time with plain file reads (no memory map stays resident, so a store larger than RAM
trains in bounded memory), and shuffles the rows inside that buffer. Batch i of the stream is a pure function of
(seed, i), so a run resumed at step s continues with exactly the batches an uninterrupted run would have seen.

With `lanes` L > 1 each epoch's blocks are dealt to L lanes, each an independent shuffled stream of batch/L rows, and
batch i is lane batches i joined in lane order; the DDP ranks of one training each read their own lanes (disjoint
blocks), so the global batch does not depend on how many processes share it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import IterableDataset

from diffgame.errors import ConfigError

Inputs = Literal["delta", "pair"]
"""`delta`: h_org - h_base as one input [N, 1, D]; `pair`: [h_base; h_org] as two inputs [N, 2, D]."""


@dataclass(frozen=True)
class Block:
    dataset: str
    shard: int
    start: int
    stop: int
    rows: torch.Tensor | None = None
    """The rows read, as offsets from `start` (None: all): tokens the store's `keep` leaves out are not."""

    def __len__(self) -> int:
        return self.stop - self.start if self.rows is None else len(self.rows)

    def read(self, store, role: str, layer: int) -> torch.Tensor:
        """The block's kept rows of one role `[n, D]` in the store's dtype."""
        x = store.read_block(self.dataset, role, layer, self.shard, self.start, self.stop)
        return x if self.rows is None else x[self.rows]


def blocks(store, datasets: Sequence[str], block_tokens: int) -> list[Block]:
    """Every kept token (`ActivationStore.keep`) of `datasets` in blocks of at most `block_tokens` consecutive rows
    (never across shards); a block with no kept token is left out."""
    out = []
    for ds in datasets:
        keep, at = store.keep(ds), 0
        for s, n in enumerate(store.shard_sizes(ds)):
            for a in range(0, n, block_tokens):
                b = min(a + block_tokens, n)
                k = keep[at + a:at + b]
                if bool(k.all()):
                    out.append(Block(ds, s, a, b))
                elif k.any():
                    out.append(Block(ds, s, a, b, k.nonzero().squeeze(1)))
            at += n
    return out


def read_inputs(store, block: Block, layer: int, inputs: Inputs) -> torch.Tensor:
    """The block's rows as dictionary inputs `[n, M, D]` fp32 (raw activation units)."""
    base, org = block.read(store, "base", layer).float(), block.read(store, "organism", layer).float()
    return (org - base)[:, None] if inputs == "delta" else torch.stack([base, org], 1)


class ShuffledStream(IterableDataset):
    """Batches `[batch_size, M, D]` (fp32) of one layer from batch `start_step` on, up to `steps` (None: endless);
    with `raw`, the same batches before `to_inputs`: rows `[batch_size, 2, D]` (base, organism) in the store's dtype,
    so the trainer converts them on its own device (half the bytes of fp32 cross to a GPU).

    No `__len__`: Lightning then counts steps, not epochs, so a resumed fit never restarts the stream. Buffers hold
    raw rows in the store's dtype and each batch is gathered and converted on its own; `prefetch` > 0 makes that many
    batches ahead in a background thread (worth it beside a GPU step, not on a small CPU); `pin` page-locks each batch
    there, so the copy to a GPU can run asynchronously (ignored without CUDA). `lanes` splits the stream into that
    many disjoint block streams (module docstring); `only_lanes` yields just those lanes' rows of each batch (one
    DDP rank's share), `batch_size` stays the global batch."""

    def __init__(self, store, layer: int, datasets: Sequence[str], inputs: Inputs, batch_size: int, steps: int | None,
                 seed: int = 0, block_tokens: int = 1024, buffer_blocks: int = 16, start_step: int = 0,
                 prefetch: int = 0, raw: bool = False, pin: bool = False, lanes: int = 1,
                 only_lanes: Sequence[int] | None = None):
        super().__init__()
        self.prefetch, self.raw, self.pin = prefetch, raw, pin
        self.store, self.layer, self.inputs = store, layer, inputs
        self.batch_size, self.steps, self.seed, self.start_step = batch_size, steps, seed, start_step
        self.buffer_blocks = buffer_blocks
        self.blocks = blocks(store, datasets, block_tokens)
        self.n_tokens = sum(len(b) for b in self.blocks)
        if self.n_tokens == 0:
            raise ConfigError(f"the store has no tokens in datasets {list(datasets)} to train a dictionary on")
        if batch_size % lanes:
            raise ConfigError(f"batch_size ({batch_size}) must be a multiple of stream_lanes ({lanes})")
        if len(self.blocks) < lanes:  # a lane without blocks would never yield a batch
            raise ConfigError(f"{lanes} stream lanes need at least {lanes} blocks; the store's {self.n_tokens} "
                              f"tokens make {len(self.blocks)} of block_tokens={block_tokens}: lower block_tokens")
        self.lanes = lanes
        self.only_lanes = list(range(lanes)) if only_lanes is None else list(only_lanes)

    def _buffers(self, lane: int) -> Iterator[list[Block]]:
        """The blocks of each shuffle buffer of `lane`, epoch after epoch (block order seeded per epoch, the blocks
        dealt to lanes in turn; each lane's buffer holds its share of `buffer_blocks`)."""
        per = -(-self.buffer_blocks // self.lanes)
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.blocks), generator=gen).tolist()[lane::self.lanes]
            for i in range(0, len(order), per):
                yield [self.blocks[j] for j in order[i:i + per]]
            epoch += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        lanes = [self._batches(lane) for lane in self.only_lanes]
        batches = lanes[0] if len(lanes) == 1 else (torch.cat(parts) for parts in zip(*lanes))
        if not self.raw:
            batches = (to_inputs(rows, self.inputs) for rows in batches)
        # pin_memory() raises without CUDA, hence the guard; it runs in the prefetch thread when there is one. Not yet
        # run on a GPU (the development machine has no CUDA), so kept to these two lines.
        if self.pin and torch.cuda.is_available():
            batches = (b.pin_memory() for b in batches)
        return batches if not self.prefetch else _prefetched(batches, self.prefetch)

    def _raw_buffer(self, group: list[Block]) -> torch.Tensor:
        """The blocks' rows as one `[n, 2, D]` tensor of both roles in the store's dtype (converted per batch)."""
        out = torch.empty(sum(len(b) for b in group), 2, self.store.d_model, dtype=self.store.dtype)
        at = 0
        for b in group:
            for r, role in enumerate(("base", "organism")):
                out[at:at + len(b), r] = b.read(self.store, role, self.layer)
            at += len(b)
        return out

    def _batches(self, lane: int) -> Iterator[torch.Tensor]:
        """Raw rows `[batch_size / lanes, 2, D]` of `lane`'s share of each batch, in the store's dtype (fresh
        tensors, no views of a buffer)."""
        size_of_batch = self.batch_size // self.lanes
        skip = self.start_step * size_of_batch  # tokens before the first batch we yield
        carry: torch.Tensor | None = None  # raw rows left over from the previous buffer
        made = self.start_step
        for n_buf, group in enumerate(self._buffers(lane)):
            size = sum(len(b) for b in group)
            if skip >= size:  # fast-forward without reading
                skip -= size
                continue
            raw = self._raw_buffer(group)
            gen = torch.Generator().manual_seed(self.seed * 7_919 + n_buf + 104_729 * lane)
            order = torch.randperm(size, generator=gen)[skip:]
            skip = 0
            at = 0
            if carry is not None:  # complete the batch the previous buffer started
                need = size_of_batch - len(carry)
                if len(order) < need:
                    carry = torch.cat([carry, raw[order]])
                    continue
                if self.steps is not None and made >= self.steps:
                    return
                yield torch.cat([carry, raw[order[:need]]])
                made, at, carry = made + 1, need, None
            while len(order) - at >= size_of_batch:
                if self.steps is not None and made >= self.steps:
                    return
                yield raw[order[at:at + size_of_batch]]
                at += size_of_batch
                made += 1
            carry = raw[order[at:]]
            if self.steps is not None and made >= self.steps:
                return


def to_inputs(raw: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """Raw `[n, 2, D]` (base, organism) rows -> dictionary inputs `[n, M, D]` fp32, on the rows' device."""
    x = raw.float()
    return (x[:, 1] - x[:, 0])[:, None] if inputs == "delta" else x


def _prefetched(batches: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
    """`batches` made ahead in a background thread (file reads and copies release the GIL), at most `depth` waiting;
    the order is unchanged."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="diffgame-store-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def input_scale(store, layer: int, datasets: Sequence[str], inputs: Inputs, max_tokens: int = 65536) -> torch.Tensor:
    """Per input, sqrt(D) / mean ‖x‖ over the first `max_tokens` tokens: scaled inputs have mean norm sqrt(D), so
    the learning rate and k do not depend on the model's activation scale."""
    got, norms = 0, []
    for b in blocks(store, datasets, 4096):
        x = read_inputs(store, b, layer, inputs)
        norms.append(x.norm(dim=-1))
        got += len(x)
        if got >= max_tokens:
            break
    mean = torch.cat(norms).mean(0).clamp_min(1e-12)  # [M]
    return store.d_model ** 0.5 / mean
