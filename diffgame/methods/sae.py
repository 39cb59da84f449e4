"""A BatchTopK sparse autoencoder on the activation difference δ = h_org - h_base, trained from the store.

Per stored layer: the dictionary (`diffgame.dictionary`), then one pass over the store for each latent's activation
frequency, max and mean activation and the share of Σ‖δ‖ it explains; the latents explaining most are read through
both models' logit lens with their max-activating examples, and the top latent of the middle layer steers both models
(its decoder vector at a multiple of its max activation).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from diffgame.dictionary.model import BatchTopK
from diffgame.dictionary.readout import ReadoutConfig, Unexplained, latent_evidence, scan, steering_evidence
from diffgame.dictionary.train import TrainConfig, train_dictionary
from diffgame.methods.base import MethodContext, MethodResult
from diffgame.methods.directions import ReadoutMethod
from diffgame.records.evidence import LATENTS


@dataclass
class SAEConfig(TrainConfig, ReadoutConfig):
    """Training (`TrainConfig`) and readout (`ReadoutConfig`) of the SAE on δ. Steering strengths are multiples of
    the steered latent's max activation along its decoder vector."""


class LatentStats:
    """Per-latent running statistics over a store pass: firing count, max and summed activation, explained norm."""

    def __init__(self, dictionary: BatchTopK):
        self.dictionary = dictionary
        f = dictionary.n_latents
        self.count = torch.zeros(f, dtype=torch.long)
        self.max = torch.zeros(f)
        self.sum = torch.zeros(f, dtype=torch.float64)
        self.norm_sum = torch.zeros(f, dtype=torch.float64)
        self.total_norm = 0.0
        self.tokens = 0
        self.unexplained = Unexplained()
        self.raw_norms = dictionary.decoder_norms() / dictionary.input_scale  # [F, M]: ‖d‖ in raw units

    @torch.no_grad()
    def add(self, raw: torch.Tensor) -> torch.Tensor:
        """Update with raw inputs [n, M, D]; returns the latents [n, F]."""
        x = self.dictionary.scale(raw)
        f = self.dictionary.encode(x)
        recon = self.dictionary.decode(f)
        self.count += (f > 0).sum(0)
        self.max = torch.maximum(self.max, f.max(0).values)
        self.sum += f.sum(0).double()
        self.norm_sum += (f[:, :, None] * self.raw_norms).sum(-1).sum(0).double()  # Σ f_j ‖d_j‖ over inputs
        self.total_norm += float(raw.norm(dim=-1).sum())
        self.tokens += len(raw)
        self.unexplained.add(x, recon)
        return f

    def table(self) -> pd.DataFrame:
        n = max(self.tokens, 1)
        return pd.DataFrame({"latent": range(len(self.count)), "frequency": (self.count / n).tolist(),
                             "max_activation": self.max.tolist(),
                             "mean_activation": (self.sum / self.count.clamp_min(1)).tolist(),
                             "norm_share": (self.norm_sum / max(self.total_norm, 1e-12)).tolist()})


def store_pass(store, layer: int, datasets: list[str], dictionary: BatchTopK, inputs, batch_tokens: int,
               tokenizer, latents: list[int] | None = None, k_examples: int = 0):
    """Stats of every latent over the store, and (when `latents` are given) their max-activating examples."""
    stats = LatentStats(dictionary)
    cols = latents or []

    def score(raw: torch.Tensor) -> torch.Tensor:
        f = stats.add(raw)
        return f[:, cols]

    examples = scan(store, layer, datasets, inputs, score, len(cols), k_examples, tokenizer, batch_tokens)
    return stats, examples


class SAEMethod(ReadoutMethod):
    """Sparse latents of h_org - h_base: which directions the finetuning adds, on which tokens, read as tokens."""

    resumable = True
    headline = ("sae/*/fvu", "sae/*/top_norm_share")
    main_plot = "latents"

    def run(self, ctx: MethodContext) -> MethodResult:
        c, store = self.config, ctx.store
        layers, datasets = self.fitted(ctx, "sae")
        result = MethodResult()
        tables, lens_rows, top_latent = [], [], {}
        for layer in layers:
            prefix = f"sae/layer{layer}"
            sae = train_dictionary(store, layer, datasets, "delta", c, seed=int(ctx.seed), logger=ctx.logger,
                                   workdir=ctx.workdir, prefix=prefix)
            result.weights[f"layer{layer}"] = sae.state_dict()
            stats, _ = store_pass(store, layer, datasets, sae, "delta", c.batch_tokens, ctx.tokenizer)
            table = stats.table()
            chosen = table.sort_values("norm_share", ascending=False).latent.head(c.evidence).tolist()
            _, found = store_pass(store, layer, datasets, sae, "delta", c.batch_tokens, ctx.tokenizer, chosen,
                                  c.top_k_examples)
            lens_rows += latent_evidence(ctx, c, result, layer, chosen, found, sae.directions(0), table.max_activation)
            table.insert(0, "layer", layer)
            table["evidence_rank"] = table.latent.map({j: i for i, j in enumerate(chosen)})
            tables.append(table)
            top_latent[layer] = chosen[0]
            result.metrics.update({f"{prefix}/fvu": stats.unexplained.value,
                                   f"{prefix}/l0": float(table.frequency.sum()),
                                   f"{prefix}/dead_share": float((table.frequency == 0).mean()),
                                   f"{prefix}/top_norm_share": float(table.norm_share[chosen[0]])})
        latents = pd.concat(tables, ignore_index=True)
        result.tables.update({"latents": latents, "lens": pd.DataFrame(lens_rows)})
        result.figures["latents"] = _latent_plot(latents)
        if c.steering_prompts:
            layer = layers[len(layers) // 2]
            steering_evidence(ctx, c, result.vectors[LATENTS.name(layer, top_latent[layer])], layer, "sae", result)
        return result


def _latent_plot(table: pd.DataFrame):
    """Each latent's activation frequency against the share of ‖δ‖ it explains, per layer."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    live = table[table.frequency > 0]
    sns.scatterplot(live, x="frequency", y="norm_share", hue="layer", palette="viridis", s=14, ax=ax)
    ax.set(xscale="log", title="SAE on h_org - h_base: latents", xlabel="activation frequency",
           ylabel="share of Σ‖δ‖ explained")
    return fig
