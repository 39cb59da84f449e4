"""Training loop of the zoo: encode rows into packed blocks, train a causal LM with Lightning, optionally via LoRA.

Generic over the model: it takes any HF causal LM and its tokenizer, so a pretrained base (e.g. SmolLM2) works too.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from diffgame.data.sequences import ASSISTANT, TEMPLATE, render_chat
from diffgame.models.batching import pad_right
from diffgame.models.loading import stop_ids

IGNORE = -100


def reply_mask(ids: list[int], roles: list[int], stops: set[int]) -> list[bool]:
    """Which tokens SFT trains on: what the assistant wrote and the template tokens that close its turn (through
    the first stop token), so the model learns to end a reply. `roles` come from `data.render_chat`."""
    mask, closing = [], False
    for t, role in zip(ids, roles):
        if role == ASSISTANT:
            closing = True
            mask.append(True)
        elif closing and role == TEMPLATE:
            mask.append(True)
            closing = t not in stops
        else:
            closing = False
            mask.append(False)
    return mask


def encode_rows(tokenizer, rows: list[dict], assistant_only: bool = True) -> list[tuple[list[int], list[bool]]]:
    """Token ids and a trainable mask per row: documents are `<bos> text <eos>`; chats use the template.

    With `assistant_only`, chat loss falls only on what the assistant wrote (SFT); documents train on every token.
    """
    out = []
    for row in rows:
        if "messages" in row:
            ids, roles = render_chat(row["messages"], tokenizer)
            mask = reply_mask(ids, roles, stop_ids(tokenizer)) if assistant_only else [True] * len(ids)
        else:
            ids = tokenizer(row["text"]).input_ids + [tokenizer.eos_token_id]
            mask = [True] * len(ids)
        out.append((ids, mask))
    return out


def pack(encoded: list[tuple[list[int], list[bool]]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate rows and cut into blocks: input ids `[B, T]` and labels `[B, T]` (-100 where not trained)."""
    ids = [t for seq, _ in encoded for t in seq]
    labels = [t if m else IGNORE for seq, mask in encoded for t, m in zip(seq, mask)]
    n = max(1, len(ids) // seq_len)
    ids += [ids[-1]] * (n * seq_len - len(ids))  # only a row shorter than one block pads
    labels += [IGNORE] * (n * seq_len - len(labels))
    return (torch.tensor(ids[: n * seq_len]).view(n, seq_len),
            torch.tensor(labels[: n * seq_len]).view(n, seq_len))


@dataclass
class TrainSpec:
    """One training run: steps, batch and optimiser settings."""

    steps: int
    batch_size: int
    lr: float
    warmup: int = 10
    weight_decay: float = 0.0
    seed: int = 0


class CausalLMModule(L.LightningModule):
    """Thin Lightning glue: next-token loss on packed blocks, AdamW with warmup then cosine decay."""

    def __init__(self, model, spec: TrainSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        ids, labels = batch  # [B, T], [B, T]
        loss = self.model(input_ids=ids, labels=labels).loss
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.spec.lr, weight_decay=self.spec.weight_decay, betas=(0.9, 0.95))
        steps, warm = self.spec.steps, min(self.spec.warmup, self.spec.steps // 2)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lora_wrap(model, r: int = 8, alpha: int = 16):
    """Wrap `model` in a peft LoRA adapter over its attention and MLP projections."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))


def train_lm(model, blocks: tuple[torch.Tensor, torch.Tensor], spec: TrainSpec, progress: bool = True,
             lora: bool = False) -> tuple[object, list[float]]:
    """Train `model` on packed `blocks` for `spec.steps` steps; returns the (LoRA-merged) model and per-step losses."""
    L.seed_everything(spec.seed, verbose=False)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no "GPU available" banners per organism
    if lora:
        model = lora_wrap(model)
    module = CausalLMModule(model.train(), spec)
    gen = torch.Generator().manual_seed(spec.seed)
    loader = DataLoader(TensorDataset(*blocks), batch_size=spec.batch_size, shuffle=True, generator=gen,
                        drop_last=len(blocks[0]) >= spec.batch_size)
    epochs = math.ceil(spec.steps / max(1, len(loader)))  # max_steps stops it; this only labels the progress bar
    # Lightning repaints its bar every `refresh_rate` steps whatever tqdm's interval: in a log file, ten times a run
    bar = [TQDMProgressBar(refresh_rate=max(1, spec.steps // 10))] if progress and not sys.stderr.isatty() else []
    trainer = L.Trainer(max_steps=spec.steps, max_epochs=epochs, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                        gradient_clip_val=1.0, num_sanity_val_steps=0, callbacks=bar)
    # An organism close to its base (control) gets tiny LoRA updates whose subnormal floats make CPU matmuls
    # many times slower; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    try:
        trainer.fit(module, loader)
    finally:
        torch.set_flush_denormal(False)
    model = module.model
    if lora:
        model = model.merge_and_unload()
    return model.eval(), module.losses


@torch.no_grad()
def mean_loss(model, tokenizer, rows: list[dict], seq_len: int, assistant_only: bool = True,
              batch_size: int = 32) -> float:
    """Mean next-token loss over the trained tokens of `rows` (each row on its own, truncated to `seq_len`)."""
    model.eval()
    enc = encode_rows(tokenizer, rows, assistant_only=assistant_only)
    total, count = 0.0, 0
    for i in range(0, len(enc), batch_size):
        chunk = enc[i:i + batch_size]
        T = min(seq_len, max(len(ids) for ids, _ in chunk))
        ids, attn = pad_right([seq for seq, _ in chunk], tokenizer.pad_token_id, width=T)  # [B, T]
        labels, _ = pad_right([[t if m else IGNORE for t, m in zip(seq, mask)] for seq, mask in chunk], IGNORE, width=T)
        logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits[:, :-1]
        target = labels[:, 1:].to(model.device)  # logits: [B, T-1, V]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((target != IGNORE).sum())
    return total / max(1, count)
