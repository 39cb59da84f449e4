"""Activation Difference Lens (Minder et al., arXiv 2510.13900): read the mean activation difference as tokens.

On text unrelated to the organism, the mean of h_org - h_base at the first few positions (and around the
assistant turn of chats) carries the finetuning objective. Each mean delta is read with the logit lens and
patchscope, and used to steer generation; steered samples are kept next to unsteered ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from diffgame.methods.adl_causal import causal_effect, encode
from diffgame.methods.adl_means import DeltaMeans, delta_means
from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest
from diffgame.models.lens import logit_lens, patchscope, top_tokens
from diffgame.models.loading import resolve_layers
from diffgame.models.steering import coherent_sweep
from diffgame.records.evidence import RankedTokens
from diffgame.records.ranges import ANY, Checked, bounded, ge, gt, layer_field


@dataclass
class ADLConfig(Checked):
    """Activation Difference Lens settings."""

    SECTION = "method.adl"

    dataset: str = "@text"
    """Text the deltas are averaged over, unrelated to the organism: `@text` (the dataset preset's text source, e.g.
    the FineWeb sample of `dataset=standard`), another `@name` of the preset, a zoo corpus, hub id or local file."""
    chat_dataset: str | None = "@chat"
    """Chats for the assistant-turn positions (`@chat`: the preset's chat source); null skips them (base models
    without a chat template)."""
    split: str = "test"
    """Split of both datasets when they name a corpus, hub id or file (a `@name` source reads its own split)."""
    max_samples: int = bounded(ge(1), 200)
    """Documents (and chats) averaged over."""
    context_length: int = bounded(ge(1), 64)
    """Tokens kept per document; only the first positions matter."""
    batch_size: int = bounded(ge(1), 16)
    """Sequences per forward pass."""
    layers: list[float] | None = layer_field(None)
    """Layers (fractions of depth or indices); null uses `preprocessing.layers`."""
    positions: int = bounded(ge(2), 5)
    """First k token positions averaged per document; position 0 is reported but not used for evidence."""
    pre_reply: int = bounded(ge(0), 2)
    """Template tokens before the assistant's reply read out (`assistant-2`, `assistant-1`)."""
    reply: int = bounded(ge(0), 3)
    """First reply tokens read out (`assistant0` ...)."""
    top_k: int = bounded(ge(1), 20)
    """Tokens kept per readout."""
    patchscope_scales: list[float] = bounded(ANY, default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    """Patched norm as multiples of the layer's mean activation norm; empty skips patchscope."""
    steering_layer: float = layer_field(0.5)
    """Layer steered (fraction of depth or index); its mean delta over positions 1..k-1 is the vector."""
    steering_alphas: list[float] = bounded(ANY, default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    """Steering strengths tried, in units of the layer's mean activation norm."""
    steering_prompts: int = bounded(ge(0), 6)
    """Generic prompts (first words of held-out documents) continued per strength; 0 skips steering."""
    steering_tokens: int = bounded(ge(1), 24)
    """New tokens per steered sample."""
    coherence_factor: float = bounded(gt(0), 2.0)
    """A strength is coherent while its samples' perplexity under the base stays within this factor of the unsteered samples'."""
    causal_samples: int = bounded(ge(0), 32)
    """Sequences per dataset for the causal effect at the steering layer (the organism's own held-out data and the
    generic `dataset`); 0 skips it."""
    causal_random: int = bounded(ge(0), 8)
    """Random unit directions projected out as the causal effect's baseline."""
    causal_context: int = bounded(ge(1), 64)
    """Tokens per sequence in the causal effect."""



class ADLMethod(Method):
    """Mean activation differences on unrelated text, read with logit lens and patchscope, and steered."""

    needs_store = False
    needs_models = True
    version = 2  # 2: steering samples come from the one sampler (`diffgame.models.generation`), scored as they are drawn
    headline = ("adl/steering/alpha",)
    main_plot = "delta_norm"

    def texts(self) -> dict[str, TextRequest]:
        c = self.config
        out = {"documents": TextRequest(c.dataset, "text", c.split, c.max_samples)}
        if c.chat_dataset:
            out["chats"] = TextRequest(c.chat_dataset, "chat", c.split, c.max_samples)
        if c.causal_samples:
            out["causal/organism"] = TextRequest("@organism", "text", c.split, c.causal_samples, optional=True,
                                                   evidence=False)
            out["causal/generic"] = TextRequest(c.dataset, "text", c.split, c.causal_samples)
        return out

    def run(self, ctx: MethodContext) -> MethodResult:
        c, base, org = self.config, ctx.base, ctx.organism
        n_layers = org.n_layers
        layers = (resolve_layers(list(c.layers), n_layers, "method.adl.layers") if c.layers is not None
                  else list(ctx.layers))
        steer_layer = resolve_layers([c.steering_layer], n_layers, "method.adl.steering_layer")[0]
        capture = sorted(set(layers) | {steer_layer})
        means = delta_means(c, base, org, capture, ctx.texts["documents"], ctx.texts.get("chats", []))
        result = MethodResult()
        result.metrics.update({"adl/n_documents": float(means.n_documents), "adl/n_chats": float(means.n_chats)})
        lens_rows, ps_rows, norm_rows = [], [], []
        text_slots = [s for s in means.slots if s.startswith("pos") and s != "pos0"]
        for layer in layers:
            norm = means.mean_norm[layer]
            for slot in means.slots:
                delta = means.delta[layer][slot]
                result.vectors[f"layer{layer}/{slot}"] = delta
                norm_rows.append({"layer": layer, "slot": slot, "delta_norm": float(delta.norm()),
                                  "relative_norm": float(delta.norm()) / norm, "count": means.counts[slot]})
                lens_rows += self._lens_rows(layer, slot, means, base, org)
                if slot == "pos0":
                    continue  # dominated by the attention sink; reported, never used as evidence
                probs = logit_lens(org.model, delta[None])[0]
                result.ranked_tokens[f"layer{layer}/{slot}"] = top_tokens(probs, org.tokenizer, c.top_k)
                if not c.patchscope_scales:
                    continue
                sweep = patchscope(org.model, org.tokenizer, delta, layer, norm, c.patchscope_scales, c.top_k)
                result.ranked_tokens[f"layer{layer}/{slot}/patchscope"] = sweep.best
                for s, read, stab in zip(sweep.scales, sweep.readouts, sweep.stability):
                    ps_rows.append({"layer": layer, "slot": slot, "scale": s, "stability": stab,
                                    "chosen": s == sweep.scales[sweep.chosen], "tokens": read.tokens,
                                    "probs": read.scores})
            mean_delta = torch.stack([means.delta[layer][s] for s in text_slots]).mean(0)  # [D]
            result.vectors[f"layer{layer}/mean"] = mean_delta
            layer_norms = [r for r in norm_rows if r["layer"] == layer]
            text = [r["delta_norm"] for r in layer_norms if r["slot"] in text_slots]
            chat = [r["delta_norm"] for r in layer_norms if r["slot"].startswith("assistant")]
            result.metrics[f"adl/layer{layer}/delta_norm"] = sum(text) / len(text)
            result.metrics[f"adl/layer{layer}/relative_norm"] = sum(text) / len(text) / norm
            result.metrics[f"adl/layer{layer}/pos0_delta_norm"] = next(
                r["delta_norm"] for r in layer_norms if r["slot"] == "pos0")
            if chat:
                result.metrics[f"adl/layer{layer}/assistant_delta_norm"] = sum(chat) / len(chat)
            chosen = [r["scale"] for r in ps_rows if r["layer"] == layer and r["chosen"]]
            if chosen:
                result.metrics[f"adl/layer{layer}/patchscope_scale"] = float(torch.tensor(chosen).median())
        result.tables.update({"lens": pd.DataFrame(lens_rows), "patchscope": pd.DataFrame(ps_rows),
                              "delta_norms": pd.DataFrame(norm_rows)})
        result.figures["delta_norm"] = _norm_heatmap(result.tables["delta_norms"])
        if c.steering_prompts and c.steering_alphas:
            self._steer(ctx, means, text_slots, steer_layer, result)
        if c.causal_samples:
            self._causal(ctx, means, text_slots, steer_layer, result)
        return result

    def _causal(self, ctx: MethodContext, means: DeltaMeans, text_slots: list[str], layer: int,
                result: MethodResult) -> None:
        """The causal effect of the steering layer's mean δ on each causal dataset (`diffgame.methods.adl_causal`)."""
        c, base, org = self.config, ctx.base, ctx.organism
        delta = torch.stack([means.delta[layer][s] for s in text_slots]).mean(0)  # [D]
        rows = []
        for key, texts in ctx.texts.items():
            if not key.startswith("causal/"):
                continue
            name = key.removeprefix("causal/")
            seqs = encode(texts, org.tokenizer, c.causal_context)
            if not seqs:
                continue
            e = causal_effect(base.model, org.model, seqs, layer, delta, c.causal_random, seed=int(ctx.seed),
                              pad_id=org.tokenizer.pad_token_id or 0)
            random = torch.tensor(e.organism_without_random) - e.organism
            prefix = f"adl/causal/{name}"
            result.metrics.update({
                f"{prefix}/ce": e.organism, f"{prefix}/ce_delta": e.organism_without_delta - e.organism,
                f"{prefix}/random_ce_delta_mean": float(random.mean()) if len(random) else float("nan"),
                f"{prefix}/random_ce_delta_std": float(random.std()) if len(random) > 1 else float("nan"),
                f"{prefix}/base_ce": e.base, f"{prefix}/base_plus_delta_ce_delta": e.base_with_delta - e.base})
            rows += [{"dataset": name, "intervention": "project out delta", "ce_delta": e.organism_without_delta
                      - e.organism}] + [{"dataset": name, "intervention": "project out random", "ce_delta": float(r)}
                                        for r in random] + [
                     {"dataset": name, "intervention": "base + delta", "ce_delta": e.base_with_delta - e.base}]
        if rows:
            table = pd.DataFrame(rows)
            result.tables["causal"] = table
            result.figures["causal"] = _causal_plot(table, layer)

    def _lens_rows(self, layer: int, slot: str, means: DeltaMeans, base, org) -> list[dict]:
        """Token table: +delta and -delta through both models' lens; base and organism means as controls."""
        delta = means.delta[layer][slot]
        reads = [("delta", "organism", org, delta), ("-delta", "organism", org, -delta),
                 ("delta", "base", base, delta), ("-delta", "base", base, -delta),
                 ("base_mean", "base", base, means.base_mean[layer][slot]),
                 ("organism_mean", "organism", org, means.org_mean[layer][slot])]
        rows = []
        for kind, lens, handle, vec in reads:
            top: RankedTokens = top_tokens(logit_lens(handle.model, vec[None])[0], handle.tokenizer, self.config.top_k)
            rows += [{"layer": layer, "slot": slot, "vector": kind, "lens": lens, "rank": i, "token_id": t,
                      "token": s, "prob": p} for i, (t, s, p) in enumerate(zip(top.token_ids, top.tokens, top.scores))]
        return rows

    def _steer(self, ctx: MethodContext, means: DeltaMeans, text_slots: list[str], layer: int,
               result: MethodResult) -> None:
        """Sweep strengths on the organism, keep the largest coherent one, and sample both models with it."""
        c = self.config
        delta = torch.stack([means.delta[layer][s] for s in text_slots]).mean(0)  # [D]
        vector = delta / delta.norm().clamp_min(1e-12) * means.mean_norm[layer]
        found = coherent_sweep(ctx.base, ctx.organism, vector, layer, means.prompts[: c.steering_prompts],
                               c.steering_alphas, c.steering_tokens, c.coherence_factor, seed=int(ctx.seed))
        result.samples["steering"] = found.samples
        result.tables["steering_sweep"] = pd.DataFrame([r | {"layer": layer} for r in found.sweep])
        result.metrics.update({"adl/steering/layer": float(layer), "adl/steering/alpha": float(found.alpha),
                               "adl/steering/ppl_ratio": float(found.ppl_ratio),
                               "adl/steering/coherent": float(found.coherent)})


def _causal_plot(table: pd.DataFrame, layer: int):
    """Change of next-token loss per intervention and dataset (random directions: mean and spread)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    sns.barplot(table, x="dataset", y="ce_delta", hue="intervention", errorbar="sd", ax=ax)
    ax.set(title=f"ADL causal effect at layer {layer}", ylabel="Δ cross-entropy (nats/token)")
    return fig


def _norm_heatmap(table: pd.DataFrame):
    """‖delta‖ relative to the layer's mean activation norm, by layer and position."""
    import seaborn as sns
    from matplotlib.figure import Figure

    order = list(dict.fromkeys(table["slot"]))
    grid = table.pivot(index="layer", columns="slot", values="relative_norm")[order]
    fig = Figure(figsize=(1.0 + 0.7 * len(order), 1.2 + 0.5 * len(grid)), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(grid, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar_kws={"label": "‖δ‖ / mean ‖h‖"})
    ax.set(title="ADL: mean activation difference by layer and position", xlabel="position", ylabel="layer")
    return fig
