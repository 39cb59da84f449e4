"""A BatchTopK crosscoder on [h_base; h_org] with Latent Scaling (Lindsey et al. 2024; Minder et al. 2025,
arXiv 2504.02922): shared latents, and the latents only the organism has.

One encoder reads both models' activations, one decoder per model writes them back. A latent's relative decoder norm
Δ = ½((‖d_org‖ - ‖d_base‖) / max(‖d_org‖, ‖d_base‖) + 1) tags it base-only (near 0), shared (near ½) or
organism-only (near 1). Decoder norms alone over-count organism-only latents (a latent whose base decoder shrank to
zero while the base still carries its direction), so Latent Scaling fits, per latent j and model m, the scalar β
that best explains a target from f_j · d_j^org in closed form over the store:
  reconstruction β^r_m: target x̂_m (the crosscoder's reconstruction of model m),
  error β^ε_m: target x_m - x̂_m + f_j d_j^m (what the rest of the dictionary leaves of model m),
and reports ν^r = β^r_base / β^r_org and ν^ε = β^ε_base / β^ε_org: a latent truly specific to the organism has both
near 0. The organism-specific latents (organism-only with ν below the configured maximum) are read through both
models' logit lens with their max-activating examples, and the first one steers both models.
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
from diffgame.records.ranges import Range, bounded, gt

TAGS = ("base_only", "shared", "organism_only", "other")


@dataclass
class CrosscoderConfig(TrainConfig, ReadoutConfig):
    """Training, tagging and readout of the crosscoder. Steering strengths are multiples of the steered latent's max
    activation along its organism decoder vector."""

    base_only_below: float = bounded(Range(0, 0.5, hi_open=True), 0.1)
    """Δ below this tags a latent base-only."""
    organism_only_above: float = bounded(Range(0.5, 1, lo_open=True), 0.9)
    """Δ above this tags a latent organism-only."""
    shared_within: float = bounded(Range(0, 0.5, lo_open=True, hi_open=True), 0.1)
    """|Δ - ½| within this tags a latent shared."""
    beta_ratio_max: float = bounded(gt(0), 0.5)
    """An organism-only latent counts as organism-specific when both ν^r and ν^ε are below this."""



def relative_norm(norms: torch.Tensor) -> torch.Tensor:
    """Δ per latent from decoder norms [F, 2] (base, organism): 0 base-only, ½ shared, 1 organism-only."""
    base, org = norms[:, 0], norms[:, 1]
    return 0.5 * ((org - base) / torch.maximum(org, base).clamp_min(1e-12) + 1)


def tag(delta: torch.Tensor, c: CrosscoderConfig) -> list[str]:
    out = []
    for d in delta.tolist():
        if d < c.base_only_below:
            out.append("base_only")
        elif d > c.organism_only_above:
            out.append("organism_only")
        elif abs(d - 0.5) <= c.shared_within:
            out.append("shared")
        else:
            out.append("other")
    return out


class LatentScaling:
    """Closed-form β per latent and model over a store pass (module docstring), with firing statistics."""

    def __init__(self, crosscoder: BatchTopK):
        self.cc = crosscoder
        f = crosscoder.n_latents
        self.d_org = crosscoder.directions(1)  # [F, D] raw units
        self.d_model_dirs = torch.stack([crosscoder.directions(0), self.d_org], 1)  # [F, 2, D]
        self.ff = torch.zeros(f, dtype=torch.float64)  # Σ f_j²
        self.recon = torch.zeros(2, f, dtype=torch.float64)  # Σ f_j <x̂_m, d_j>
        self.err = torch.zeros(2, f, dtype=torch.float64)  # Σ f_j <x_m - x̂_m, d_j>
        self.count = torch.zeros(f, dtype=torch.long)
        self.max = torch.zeros(f)
        self.tokens = 0
        self.unexplained = Unexplained()

    @torch.no_grad()
    def add(self, raw: torch.Tensor) -> torch.Tensor:
        """Update with raw [n, 2, D]; returns the latents [n, F]."""
        x = self.cc.scale(raw)
        f = self.cc.encode(x)
        scaled = self.cc.decode(f)
        self.unexplained.add(x, scaled)
        recon = scaled / self.cc.input_scale[None, :, None]  # raw units
        for m in range(2):
            self.recon[m] += (f * (recon[:, m] @ self.d_org.T)).sum(0).double()
            self.err[m] += (f * ((raw[:, m] - recon[:, m]) @ self.d_org.T)).sum(0).double()
        self.ff += f.pow(2).sum(0).double()
        self.count += (f > 0).sum(0)
        self.max = torch.maximum(self.max, f.max(0).values)
        self.tokens += len(raw)
        return f

    def ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ν^r, ν^ε) per latent; NaN for a latent that never fired."""
        own = (self.d_model_dirs * self.d_org[:, None]).sum(-1).double()  # <d_j^m, d_j^org> [F, 2]
        err = self.err + self.ff[None] * own.T  # add back the latent's own contribution
        nan = torch.full_like(self.ff, float("nan"))
        fired = self.count > 0
        nu_r = torch.where(fired, self.recon[0] / self.recon[1], nan)
        nu_e = torch.where(fired, err[0] / err[1], nan)
        return nu_r.float(), nu_e.float()


def organism_specific(table: pd.DataFrame, c: CrosscoderConfig) -> list[int]:
    """Latents ranked for evidence: organism-only with both β ratios below the maximum (most frequent first), then
    the other organism-only ones, then the highest Δ, so every organism is read through the same number of latents."""
    live = table[table.frequency > 0]
    specific = live[(live.tag == "organism_only") & (live.nu_r.abs() < c.beta_ratio_max)
                    & (live.nu_error.abs() < c.beta_ratio_max)].sort_values("frequency", ascending=False)
    rest = live[~live.latent.isin(specific.latent)].sort_values("relative_norm", ascending=False)
    return (specific.latent.tolist() + rest.latent.tolist())[: c.evidence]


class CrosscoderMethod(ReadoutMethod):
    """Latents shared by both models and latents only the organism has, with Latent Scaling against artefacts."""

    resumable = True
    headline = ("crosscoder/*/max_relative_norm", "crosscoder/*/organism_specific")
    main_plot = "latents"

    def run(self, ctx: MethodContext) -> MethodResult:
        c, store = self.config, ctx.store
        layers, datasets = self.fitted(ctx, "crosscoder")
        result = MethodResult()
        tables, lens_rows, first = [], [], {}
        for layer in layers:
            prefix = f"crosscoder/layer{layer}"
            cc = train_dictionary(store, layer, datasets, "pair", c, seed=int(ctx.seed), logger=ctx.logger,
                                  workdir=ctx.workdir, prefix=prefix)
            result.weights[f"layer{layer}"] = cc.state_dict()
            scaling = LatentScaling(cc)
            scan(store, layer, datasets, "pair", lambda raw: scaling.add(raw)[:, :0], 0, 0, ctx.tokenizer,
                 c.batch_tokens)
            norms = cc.decoder_norms() / cc.input_scale  # [F, 2] raw units
            delta = relative_norm(norms)
            nu_r, nu_e = scaling.ratios()
            n = max(scaling.tokens, 1)
            table = pd.DataFrame({"latent": range(cc.n_latents), "base_norm": norms[:, 0].tolist(),
                                  "organism_norm": norms[:, 1].tolist(), "relative_norm": delta.tolist(),
                                  "tag": tag(delta, c), "nu_r": nu_r.tolist(), "nu_error": nu_e.tolist(),
                                  "frequency": (scaling.count / n).tolist(), "max_activation": scaling.max.tolist()})
            chosen = organism_specific(table, c)
            table["organism_specific"] = (table.tag == "organism_only") & (table.nu_r.abs() < c.beta_ratio_max) & (
                table.nu_error.abs() < c.beta_ratio_max)
            found = scan(store, layer, datasets, "pair", lambda raw: cc.encode(cc.scale(raw))[:, chosen], len(chosen),
                         c.top_k_examples, ctx.tokenizer, c.batch_tokens)
            lens_rows += latent_evidence(ctx, c, result, layer, chosen, found, cc.directions(1), table.max_activation)
            table.insert(0, "layer", layer)
            table["evidence_rank"] = table.latent.map({j: i for i, j in enumerate(chosen)})
            tables.append(table)
            first[layer] = chosen[0]
            live = table[table.frequency > 0]
            result.metrics.update({f"{prefix}/{t}": float((live.tag == t).mean()) for t in TAGS})
            result.metrics.update({f"{prefix}/organism_specific": float(table.organism_specific.sum()),
                                   f"{prefix}/max_relative_norm": float(live.relative_norm.max()),
                                   f"{prefix}/dead_share": float((table.frequency == 0).mean()),
                                   f"{prefix}/fvu": scaling.unexplained.value})
        latents = pd.concat(tables, ignore_index=True)
        result.tables.update({"latents": latents, "lens": pd.DataFrame(lens_rows)})
        result.figures["latents"] = _scatter(latents)
        if c.steering_prompts:
            layer = layers[len(layers) // 2]
            steering_evidence(ctx, c, result.vectors[LATENTS.name(layer, first[layer])], layer, "crosscoder",
                              result)
        return result


def _scatter(table: pd.DataFrame):
    """Relative decoder norm Δ against the error β ratio ν^ε of every live latent (Minder et al. Fig. 2 style)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    live = table[table.frequency > 0]
    sns.scatterplot(live, x="relative_norm", y="nu_error", hue="tag", style="layer", s=16, ax=ax)
    ax.set(title="Crosscoder latents", xlabel="relative decoder norm Δ (0 base, 1 organism)",
           ylabel="ν^ε = β^ε_base / β^ε_org")
    return fig
