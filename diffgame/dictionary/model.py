"""A BatchTopK dictionary over M stacked inputs: a sparse autoencoder (M = 1, e.g. on h_org - h_base) or a crosscoder
(M = 2, [h_base; h_org], one encoder, one decoder per model).

BatchTopK (Bussmann et al. 2024, arXiv 2412.06410) keeps the k·N largest latent scores over a batch of N tokens, so
the number of active latents varies per token while averaging k; at inference a per-token threshold estimated during
training replaces the batch. Scores are pre-activations times the latent's summed decoder norm, so a latent cannot win
by shrinking its decoder (the crosscoder form of Minder et al. 2025, arXiv 2504.02922). An auxiliary top-k loss on
dead latents (Gao et al. 2024, arXiv 2406.04093, §A.2) keeps latents alive.

Trained by several DDP ranks (`synced`), each on its share of the batch, everything that reads the whole batch is
computed over the whole batch: the k·N-th score, which latents fired, the threshold's minimum and the auxiliary loss's
normaliser; DDP's gradient mean does the rest, so the step equals a one-process step on the joined batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class ForwardOutput:
    """One training step's numbers (all scalars but `latents` and `recon`)."""

    recon: torch.Tensor  # [N, M, D]
    latents: torch.Tensor  # [N, F]
    loss: torch.Tensor
    mse: torch.Tensor
    """Sum of squared errors per token (mean over tokens)."""
    fvu: torch.Tensor
    """Fraction of variance unexplained: Σ‖x - x̂‖² / Σ‖x - mean x‖²."""
    l0: torch.Tensor
    """Mean active latents per token."""
    aux: torch.Tensor
    """Auxiliary loss of dead latents reconstructing the residual (0 when none is dead)."""


class BatchTopK(nn.Module):
    """Encoder `W_enc [M, D, F]`, decoder `W_dec [F, M, D]`; `input_scale [M]` maps raw activations to unit scale."""

    def __init__(self, n_inputs: int, d_model: int, n_latents: int, k: int, aux_k: int | None = None,
                 dead_steps: int = 200, seed: int = 0):
        super().__init__()
        self.n_inputs, self.d_model, self.n_latents, self.k = n_inputs, d_model, n_latents, k
        self.aux_k = aux_k if aux_k is not None else min(2 * k, n_latents)
        self.dead_steps = dead_steps
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n_latents, n_inputs, d_model, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True) / n_inputs ** 0.5  # [F, M, D], ‖row‖ = 1 over all inputs
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.permute(1, 2, 0).contiguous())  # [M, D, F]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(n_inputs, d_model), )
        self.register_buffer("input_scale", torch.ones(n_inputs))
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet
        self.register_buffer("since_fired", torch.zeros(n_latents, dtype=torch.long))
        self.synced = False
        """Set while DDP ranks train it together (`torch.distributed` initialised), each with a share of the batch."""

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], k: int | None = None) -> "BatchTopK":
        """A dictionary from its saved parameters (e.g. `artifacts.load_weights(run_id, "layer2")`), in eval mode;
        `k` only matters for further training (inference uses the learned threshold)."""
        n_latents, n_inputs, d_model = state["W_dec"].shape
        model = cls(n_inputs, d_model, n_latents, k or 1)
        model.load_state_dict(state)
        return model.eval()

    # --- parts ---------------------------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec[f, m]‖ -> [F, M]."""
        return self.W_dec.norm(dim=-1)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """relu(x · W_enc + b_enc) for scaled inputs x [N, M, D] -> [N, F]."""
        return torch.relu(torch.einsum("nmd,mdf->nf", x, self.W_enc) + self.b_enc)

    def encode(self, x: torch.Tensor, mode: Literal["batch", "token", "threshold"] = "threshold") -> torch.Tensor:
        """Latents [N, F] of scaled inputs: the k·N best scores of the batch (`batch`), the k best of each token
        (`token`), or every score above the threshold learned in training (`threshold`, per token)."""
        pre = self.pre_activations(x)
        score = pre * self.decoder_norms().sum(-1)
        if mode == "threshold" and self.threshold < 0:
            mode = "batch"
        if mode == "batch":
            kth = self._batch_kth(score.detach())
        elif mode == "token":
            kth = score.topk(self.k, dim=-1).values[:, -1:]
        else:
            kth = self.threshold
        return pre * ((score >= kth) & (score > 0))

    def _batch_kth(self, score: torch.Tensor) -> torch.Tensor:
        """The (k·N)-th largest score of the batch; over every rank's rows when synced (ranks hold equal shares, and
        each rank's own top k·N of the whole batch are enough to find it, so only those are gathered)."""
        if not self.synced:
            keep = min(self.k * score.shape[0], score.numel())
            return score.flatten().topk(keep, sorted=False).values.min()
        import torch.distributed as dist

        world = dist.get_world_size()
        keep = min(self.k * score.shape[0], score.numel()) * world
        local = score.flatten().topk(min(keep, score.numel()), sorted=False).values
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        return torch.cat(gathered).topk(keep, sorted=False).values.min()

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        """`t` reduced over the ranks (`sum`, `max`, `min`) when synced, in place; else `t`."""
        if self.synced:
            import torch.distributed as dist

            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return t

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x̂ = latents · W_dec + b_dec -> [N, M, D] (scaled units)."""
        return torch.einsum("nf,fmd->nmd", latents, self.W_dec) + self.b_dec

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw activations [N, M, D] -> the unit scale the dictionary trains in."""
        return raw * self.input_scale[None, :, None].to(raw.dtype)

    # --- training ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, aux_coef: float = 1 / 32, mode: Literal["batch", "token"] = "batch"
                ) -> ForwardOutput:
        """A pass over scaled inputs x [N, M, D]: in training, top-k by `mode`, updating the threshold and the
        dead-latent counters; in eval mode the per-token threshold."""
        latents = self.encode(x, mode if self.training else "threshold")
        recon = self.decode(latents)
        err = x - recon
        mse = err.pow(2).sum((-1, -2)).mean()
        total_var = (x - x.mean(0)).pow(2).sum((-1, -2)).mean().clamp_min(1e-12)
        aux = self._aux_loss(x, err) if self.training else x.new_zeros(())
        if self.training:
            with torch.no_grad():
                fired = self._reduce((latents > 0).any(0).int(), "max").bool()
                self.since_fired.add_(1).masked_fill_(fired, 0)
                score = latents * self.decoder_norms().sum(-1)
                kept = self._reduce(torch.where(latents > 0, score, torch.inf).amin(), "min")
                if bool(torch.isfinite(kept)):  # some latent fired somewhere in the batch
                    t = self.threshold
                    self.threshold.copy_(kept if t < 0 else 0.99 * t + 0.01 * kept)
        return ForwardOutput(recon, latents, mse + aux_coef * aux, mse.detach(), (mse / total_var).detach(),
                             (latents > 0).float().sum(-1).mean().detach(), aux.detach())

    def _aux_loss(self, x: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Dead latents (no firing for `dead_steps` steps) reconstruct the residual with their own top-k."""
        dead = self.since_fired > self.dead_steps
        if not bool(dead.any()):
            return x.new_zeros(())
        pre = self.pre_activations(x) * dead
        k = min(self.aux_k, int(dead.sum()))
        vals, idx = pre.topk(k, dim=-1)
        aux_latents = torch.zeros_like(pre).scatter_(-1, idx, vals)
        aux_recon = torch.einsum("nf,fmd->nmd", aux_latents, self.W_dec)
        target = err.detach()
        scale = target.pow(2).sum((-1, -2)).mean()  # no gradient: the mean over the whole batch when synced
        if self.synced:
            import torch.distributed as dist

            scale = self._reduce(scale.clone(), "sum") / dist.get_world_size()
        return (target - aux_recon).pow(2).sum((-1, -2)).mean() / scale.clamp_min(1e-12)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each latent's decoder rows so their norms sum to 1 over inputs (relative norms unchanged), moving
        the scale into the encoder so the function stays the same; keeps scores comparable across latents."""
        total = self.decoder_norms().sum(-1).clamp_min(1e-12)  # [F]
        self.W_dec.div_(total[:, None, None])
        self.W_enc.mul_(total)
        self.b_enc.mul_(total)

    def dead_share(self) -> float:
        return float((self.since_fired > self.dead_steps).float().mean())

    # --- reading -------------------------------------------------------------------------------------
    def directions(self, role: int = -1) -> torch.Tensor:
        """Decoder rows of input `role` in raw activation units' direction (not normalised) -> [F, D]."""
        return (self.W_dec[:, role] / self.input_scale[role]).detach()
