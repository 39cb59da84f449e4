"""PCA on the activation difference δ = h_org - h_base: the directions along which the finetuning moved tokens most.

Per stored layer, scikit-learn's `IncrementalPCA` is fitted on δ streamed from the store in blocks (bounded memory).
Each component is read through both models' logit lens with both signs (a component's sign is arbitrary), the input
tokens whose δ projects on it most (mean per token id) are tabled, its max-activating examples are the sequences with
the largest projection, and the first component of the middle layer steers both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from diffgame.dictionary.data import blocks, read_inputs
from diffgame.dictionary.readout import ReadoutConfig, lens_readouts, mean_norm, scan, steering_evidence
from diffgame.errors import ConfigError
from diffgame.methods.base import MethodContext, MethodResult
from diffgame.methods.directions import ReadoutMethod
from diffgame.records.evidence import COMPONENTS
from diffgame.records.ranges import bounded, gt


@dataclass
class PCAConfig(ReadoutConfig):
    """PCA of δ per layer. Steering strengths are multiples of the layer's mean ‖h_org‖ along the unit component."""

    n_components: int = bounded(gt(0), 8)
    """Components fitted per layer."""
    evidence: int = bounded(gt(0), 4)
    """Components whose organism-lens readouts (both signs) are graded."""



def fit_pca(store, layer: int, datasets: list[str], n_components: int, batch_tokens: int):
    """IncrementalPCA of δ at `layer`, fed block by block (a short last block joins the one before it)."""
    from sklearn.decomposition import IncrementalPCA

    if store.d_model < n_components:
        raise ConfigError(f"n_components ({n_components}) exceeds d_model ({store.d_model})")
    pca = IncrementalPCA(n_components=n_components)
    pending: list[np.ndarray] = []
    have = 0
    for b in blocks(store, datasets, batch_tokens):
        pending.append(read_inputs(store, b, layer, "delta")[:, 0].numpy())
        have += len(b)
        if have >= max(batch_tokens, n_components):
            pca.partial_fit(np.concatenate(pending))
            pending, have = [], 0
    if pending:
        rest = np.concatenate(pending)
        if len(rest) >= n_components or not hasattr(pca, "components_"):
            pca.partial_fit(rest)
    if not hasattr(pca, "components_"):
        raise ConfigError(f"the store has fewer than {n_components} tokens at layer {layer} to fit PCA on")
    return pca


class TokenProjections:
    """Mean projection on each signed component per input token id, over one pass in stream order."""

    def __init__(self, ids: torch.Tensor, n_columns: int):
        self.ids, self.at = ids, 0  # [N] token ids of the fitted datasets, in the order the pass reads them
        vocab = int(ids.max()) + 1 if len(ids) else 1
        self.sum = torch.zeros(vocab, n_columns, dtype=torch.float64)
        self.count = torch.zeros(vocab, dtype=torch.long)

    def add(self, scores: torch.Tensor) -> None:
        ids = self.ids[self.at:self.at + len(scores)]
        self.at += len(scores)
        self.sum.index_add_(0, ids, scores.double())
        self.count += torch.bincount(ids, minlength=len(self.count))

    def rows(self, tokenizer, layer: int, n_components: int, top: int, min_count: int = 3) -> list[dict]:
        """The `top` token ids with the largest mean projection per component and sign (seen >= `min_count`)."""
        ids = (self.count >= min_count).nonzero().squeeze(1)
        mean = self.sum / self.count.clamp_min(1)[:, None]
        out = []
        for col in range(self.sum.shape[1]):
            k, sign = col % n_components, "+" if col < n_components else "-"
            best = ids[mean[ids, col].argsort(descending=True)[:top]].tolist()
            out += [{"layer": layer, "component": k, "sign": sign, "rank": r, "token_id": t,
                     "token": tokenizer.convert_ids_to_tokens(t), "mean_projection": float(mean[t, col]),
                     "count": int(self.count[t])} for r, t in enumerate(best)]
        return out


class PCAMethod(ReadoutMethod):
    """Principal components of h_org - h_base per layer, as tokens, examples and steering directions."""

    headline = ("pca/*/explained_variance_ratio/pc0",)
    main_plot = "explained_variance"

    def run(self, ctx: MethodContext) -> MethodResult:
        c, store = self.config, ctx.store
        layers, datasets = self.fitted(ctx, "pca")
        result = MethodResult()
        variance_rows, lens_rows, token_rows = [], [], []
        for layer in layers:
            pca = fit_pca(store, layer, datasets, c.n_components, c.batch_tokens)
            comps = torch.as_tensor(pca.components_, dtype=torch.float32)  # [K, D], unit rows
            mean = torch.as_tensor(pca.mean_, dtype=torch.float32)  # [D]
            ratio = pca.explained_variance_ratio_
            for k in range(len(comps)):
                variance_rows.append({"layer": layer, "component": k,
                                      "explained_variance": float(pca.explained_variance_[k]),
                                      "ratio": float(ratio[k]), "cumulative": float(ratio[:k + 1].sum())})
                result.vectors[COMPONENTS.name(layer, k)] = comps[k]
            result.vectors[f"layer{layer}/mean"] = mean
            prefix = f"pca/layer{layer}"
            result.metrics.update({f"{prefix}/explained_variance_ratio/pc{k}": float(ratio[k])
                                   for k in range(min(3, len(ratio)))})
            result.metrics[f"{prefix}/explained_variance_ratio/top{len(ratio)}"] = float(ratio.sum())
            directions = {COMPONENTS.name(layer, k): comps[k] for k in range(len(comps))}
            rows, ranked = lens_readouts(ctx.base, ctx.organism, directions, c.top_k)
            lens_rows += [r | {"layer": layer} for r in rows]
            for k in range(min(c.evidence, len(comps))):
                for key in (COMPONENTS.name(layer, k), COMPONENTS.signed(COMPONENTS.name(layer, k), negated=True)):
                    result.ranked_tokens[key] = ranked[key]
            signed = torch.cat([comps, -comps])  # [2K, D]: + then - projections
            kept_ids = [store.tokens(d).input_ids[store.keep(d)] for d in datasets]  # what `scan` scores
            by_token = TokenProjections(torch.cat(kept_ids), len(signed))

            def project(x: torch.Tensor) -> torch.Tensor:
                scores = (x[:, 0] - mean) @ signed.T  # [n, 2K]
                by_token.add(scores)
                return scores

            found = scan(store, layer, datasets, "delta", project, len(signed), c.top_k_examples, ctx.tokenizer,
                         c.batch_tokens)
            token_rows += by_token.rows(ctx.tokenizer, layer, len(comps), c.top_k)
            for k in range(len(comps)):
                result.examples[COMPONENTS.examples(layer, k)] = found[k]
                result.examples[COMPONENTS.examples(layer, k, negated=True)] = found[len(comps) + k]
        variance = pd.DataFrame(variance_rows)
        result.tables.update({"components": variance, "lens": pd.DataFrame(lens_rows),
                              "token_projections": pd.DataFrame(token_rows)})
        result.figures["explained_variance"] = _variance_plot(variance)
        if c.steering_prompts:
            layer = layers[len(layers) // 2]
            vector = result.vectors[COMPONENTS.name(layer, 0)] * mean_norm(store, layer, datasets)
            steering_evidence(ctx, c, vector, layer, "pca", result)
        return result


def _variance_plot(table: pd.DataFrame):
    """Explained variance ratio by component, one line per layer."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(table, x="component", y="ratio", hue="layer", marker="o", palette="viridis", ax=ax)
    ax.set(title="PCA of h_org - h_base", ylabel="explained variance ratio", xlabel="component")
    return fig
