"""Train a BatchTopK dictionary on one layer of an activation store with Lightning, resumable from its checkpoint.

`train_dictionary` is the one entry point: it streams shuffled store batches (`diffgame.dictionary.data`), trains in
the configured precision on whatever accelerator Lightning finds, logs loss / FVU / L0 / dead share per step to the
given Lightning logger, checkpoints into `workdir`, and resumes from the last checkpoint there; a layer whose training
finished is loaded from `workdir` instead of trained again. With `devices` > 1 Lightning spawns that many DDP ranks,
each reading its own lanes of the store stream (`StoreBatches`), and hands rank 0's weights back.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from safetensors.torch import load_file, save_file

from diffgame.dictionary.data import Inputs, ShuffledStream, input_scale, to_inputs
from diffgame.dictionary.model import BatchTopK
from diffgame.errors import ConfigError
from diffgame.records.ranges import Checked, bounded, ge, gt


@dataclass
class TrainConfig(Checked):
    """How a dictionary is trained (fields shared by the `sae` and `crosscoder` methods)."""

    n_latents: int = bounded(gt(0), 512)
    """Dictionary size F."""
    k: int = bounded(gt(0), 16)
    """Mean active latents per token (BatchTopK)."""
    steps: int | None = bounded(gt(0, "or null for `epochs`"), None)
    """Optimizer steps per layer; null: `epochs` passes over the fitted tokens."""
    epochs: float = bounded(gt(0), 10.0)
    """Passes over the fitted tokens when `steps` is null (a small store is seen several times, a large one once)."""
    batch_size: int = bounded(gt(0), 1024)
    """Tokens per step."""
    topk: Literal["batch", "token"] = "batch"
    """`batch`: BatchTopK, the k·N best latent scores of a batch; `token`: TopK, the k best of each token. BatchTopK
    gives tokens of large norm more of the budget and can split a direction carried by such tokens over several
    co-firing latents (see docs/methods.md, dictionary methods); TopK does not."""
    lr: float = bounded(gt(0), 1e-3)
    """Adam learning rate (inputs are scaled to mean norm sqrt(D), so it does not depend on the model's scale)."""
    aux_coef: float = bounded(ge(0), 0.03125)
    """Weight of the dead-latent auxiliary loss (1/32, Gao et al. 2024)."""
    dead_steps: int = bounded(gt(0), 100)
    """A latent that has not fired for this many steps counts as dead."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """Lightning precision; `auto`: bf16-mixed on a GPU with bf16, else 32-true (CPU autocast gains little)."""
    accelerator: str = "auto"
    """Lightning accelerator (auto: a GPU when there is one)."""
    checkpoint_every: int = bounded(gt(0), 100)
    """Steps between checkpoints (an interrupted run resumes from the last one)."""
    block_tokens: int = bounded(gt(0), 1024)
    """Consecutive store rows read at once."""
    buffer_blocks: int = bounded(gt(0), 32)
    """Blocks shuffled together: memory holds about block_tokens × buffer_blocks tokens of inputs."""
    log_every: int = bounded(gt(0), 10)
    """Steps between logged training metrics."""
    devices: int = bounded(gt(0), 1)
    """Processes training one dictionary together (Lightning's ddp_spawn: GPUs with a GPU accelerator, else CPU
    processes on gloo), each with an equal share of every batch; the dictionary does not depend on it."""
    stream_lanes: int | None = bounded(gt(0, "or null for one per device"), None)
    """Disjoint block streams every batch is drawn from, a multiple of `devices` (each rank reads its own); null: one
    per device. The batches, so the dictionary, depend on it: `devices: 1, stream_lanes: 2` trains what `devices: 2`
    does."""

    RUNTIME = ("devices",)
    ADDED = {"stream_lanes": 1}

    def __post_init__(self):
        super().__post_init__()  # each field in its range first: k > 0 before k <= n_latents
        if self.k > self.n_latents:
            raise ConfigError(f"k ({self.k}) must be <= n_latents ({self.n_latents})")
        lanes = f"stream_lanes ({self.stream_lanes})"
        if self.stream_lanes is None:
            self.stream_lanes = self.devices
            lanes = f"devices ({self.devices}, one stream lane each)"
        if self.stream_lanes % self.devices:
            raise ConfigError(f"stream_lanes ({self.stream_lanes}) must be a multiple of devices ({self.devices})")
        if self.batch_size % self.stream_lanes:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of {lanes}")


class DictionaryModule(pl.LightningModule):
    """Lightning glue around `BatchTopK`: one step = turn the raw batch into inputs, scale, forward, log the numbers.

    Batches are raw rows `[N, 2, D]` (base, organism) as `ShuffledStream(raw=True)` yields them, converted by
    `to_inputs` on the batch's device: on a GPU the fp32 cast and the delta happen there, after a half-size copy."""

    def __init__(self, dictionary: BatchTopK, cfg: TrainConfig, prefix: str, inputs: Inputs):
        super().__init__()
        self.dictionary, self.cfg, self.prefix, self.inputs = dictionary, cfg, prefix, inputs

    def on_fit_start(self) -> None:
        self.dictionary.synced = self.trainer.world_size > 1

    def on_fit_end(self) -> None:
        self.dictionary.synced = False

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # normalised before (not after) each step: a checkpoint written after step s then resumes exactly
        self.dictionary.normalize_decoder()
        x = to_inputs(batch, self.inputs)  # [N, 2, D] store dtype -> [N, M, D] fp32
        out = self.dictionary(self.dictionary.scale(x), aux_coef=self.cfg.aux_coef, mode=self.cfg.topk)
        # under DDP: the ranks' means (equal shares), so the loss and L0 are the whole batch's and FVU nearly so
        self.log_dict({f"{self.prefix}/loss": out.loss.detach(), f"{self.prefix}/fvu": out.fvu,
                       f"{self.prefix}/l0": out.l0, f"{self.prefix}/aux": out.aux,
                       f"{self.prefix}/dead": self.dictionary.dead_share()},
                      on_step=True, on_epoch=False, batch_size=batch.shape[0], sync_dist=self.dictionary.synced)
        return out.loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.dictionary.parameters(), lr=self.cfg.lr)


class StoreBatches(pl.LightningDataModule):
    """The store stream as each rank's loader: rank r of W reads lanes r·L/W … (r+1)·L/W - 1 of every batch, so the
    ranks' shares join into the one global batch (a one-process run reads all lanes)."""

    def __init__(self, stream: ShuffledStream):
        super().__init__()
        self.stream = stream

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per = self.stream.lanes // world
        stream = copy.copy(self.stream)
        stream.only_lanes = list(range(rank * per, (rank + 1) * per))
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)


def _strategy(cfg: TrainConfig):
    """One process, or `devices` spawned DDP ranks on this machine (never a cluster environment's world: the ranks
    are this process's children)."""
    if cfg.devices == 1:
        return "auto", []
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(start_method="spawn"), [LightningEnvironment()]


def _on_gpu(cfg: TrainConfig) -> bool:
    return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if _on_gpu(cfg) and torch.cuda.is_bf16_supported() else "32-true"


class StepProgress(pl.Callback):
    """A tqdm bar over optimizer steps (Lightning's own bar counts epochs of a stream that has none)."""

    def __init__(self, total: int, start: int, desc: str):
        self.total, self.start, self.desc = total, start, desc

    def on_train_start(self, trainer, module) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.start, desc=self.desc, unit="step", leave=False,
                        disable=not trainer.is_global_zero)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.bar.update(trainer.global_step - self.bar.n)
        self.bar.set_postfix(fvu=f"{float(trainer.callback_metrics.get(f'{module.prefix}/fvu', float('nan'))):.3f}",
                             refresh=False)

    def on_train_end(self, trainer, module) -> None:
        self.bar.close()


def load_checkpoint(path: Path) -> dict | None:
    """A Lightning checkpoint read without unpickling arbitrary objects, or None (with a one-line warning, the file
    set aside as `<name>.refused`) when it holds anything else: the checkpoint folder may be shared, and a crafted
    pickle there would otherwise run its code on the next resume. The layer then trains from its first step."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = path.with_name(path.name + ".refused")
        path.replace(refused)
        reason = str(e).strip().splitlines()[-1][:160]
        print(f"[diffgame] refused checkpoint {path}: it holds objects beyond tensors and plain data ({reason}); "
              f"kept as {refused.name}, training this layer from its first step", file=sys.stderr, flush=True)
        return None


FINAL = "dictionary.safetensors"
"""A finished layer's dictionary inside its checkpoint folder (reused instead of training again)."""


def train_dictionary(store, layer: int, datasets: Sequence[str], inputs: Inputs, cfg: TrainConfig, seed: int = 0,
                     logger=None, workdir: Path | None = None, prefix: str = "dictionary") -> BatchTopK:
    """A trained dictionary of `layer` (on CPU, eval mode); `workdir/layer<L>/` holds its checkpoints."""
    n_inputs = 1 if inputs == "delta" else 2
    model = BatchTopK(n_inputs, store.d_model, cfg.n_latents, cfg.k, dead_steps=cfg.dead_steps, seed=seed)
    folder = Path(workdir) / f"layer{layer}" if workdir is not None else None
    if folder is not None and (folder / FINAL).is_file():
        model.load_state_dict(load_file(folder / FINAL))
        return model.eval()
    model.input_scale.copy_(input_scale(store, layer, datasets, inputs))
    stream = ShuffledStream(store, layer, datasets, inputs, cfg.batch_size, None, seed=seed,
                            block_tokens=cfg.block_tokens, buffer_blocks=cfg.buffer_blocks, raw=True,
                            lanes=cfg.stream_lanes)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * stream.n_tokens / cfg.batch_size))
    last = folder / "last.ckpt" if folder is not None and (folder / "last.ckpt").is_file() else None
    checkpoint = load_checkpoint(last) if last else None
    if checkpoint is None:
        last = None
    start = int(checkpoint["global_step"]) if checkpoint else 0
    stream.start_step = start
    # beside a GPU: two batches made ahead in a thread, page-locked there for an asynchronous copy
    stream.prefetch, stream.pin = (2, True) if _on_gpu(cfg) else (0, False)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no "GPU available" banners per layer
    callbacks: list[pl.Callback] = [StepProgress(steps, start, f"train {prefix}")]
    if folder is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=folder, every_n_train_steps=cfg.checkpoint_every, save_last=True,
                                         save_top_k=0, save_on_train_epoch_end=False))
    module = DictionaryModule(model, cfg, prefix, inputs)
    strategy, plugins = _strategy(cfg)
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, precision=_precision(cfg), accelerator=cfg.accelerator,
                         devices=cfg.devices, strategy=strategy, plugins=plugins, use_distributed_sampler=False,
                         logger=logger if logger is not None else False, callbacks=callbacks,
                         enable_checkpointing=folder is not None, enable_model_summary=False, enable_progress_bar=False,
                         log_every_n_steps=cfg.log_every, num_sanity_val_steps=0, deterministic=False,
                         default_root_dir=str(folder) if folder is not None else None)
    if start < steps:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|resuming from a checkpoint "
                                                      "that ended|infer the batch|LeafSpec|litlogger).*")
            trainer.fit(module, datamodule=StoreBatches(stream), ckpt_path=str(last) if last else None,
                        weights_only=True)
    elif checkpoint:
        module.load_state_dict(checkpoint["state_dict"])
    model = model.cpu().eval()
    model.normalize_decoder()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / FINAL))
    return model
