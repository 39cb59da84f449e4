"""Evidence from directions found on the store (PCA components, SAE and crosscoder latents): per-token scores over
the store with max-activating examples, and logit-lens readouts through both models.

Passes read the store shard by shard in blocks (`ActivationStore.read_block`), so memory stays bounded by one
shard's scores, never the whole store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from diffgame.data.sequences import ROLES
from diffgame.dictionary.data import Block, Inputs, read_inputs
from diffgame.errors import ConfigError
from diffgame.models.lens import logit_lens, top_tokens
from diffgame.models.loading import resolve_layers
from diffgame.models.steering import coherent_sweep
from diffgame.records.evidence import LATENTS, DirectionNames, Example, RankedTokens
from diffgame.records.examples import TopKSequences, token_decoder
from diffgame.records.ranges import ANY, Checked, bounded, ge, gt, layer_field

Scores = Callable[[torch.Tensor], torch.Tensor]
"""Raw inputs `[n, M, D]` -> per-token scores `[n, L]` (one column per direction)."""


@torch.no_grad()
def scan(store, layer: int, datasets: Sequence[str], inputs: Inputs, score: Scores, n_columns: int,
         k_examples: int, tokenizer, batch_tokens: int = 8192) -> list[list[Example]]:
    """Run `score` over every kept token (`ActivationStore.keep`) of `datasets`; the `k_examples` sequences with the
    highest max score per column.

    `score` may also accumulate statistics of its own (it sees every kept token once, in stream order)."""
    tops = [TopKSequences(k_examples, reducers=("max",)) for _ in range(n_columns)]
    for ds in datasets:
        stream, keep = store.tokens(ds), store.keep(ds)
        offsets = stream.seq_offsets.tolist()
        seq = 0
        start = 0
        for shard, n in enumerate(store.shard_sizes(ds)):
            scores = torch.zeros(n, n_columns)  # [n, L]; 0 where a token is not kept
            for a in range(0, n, batch_tokens):
                b = min(a + batch_tokens, n)
                k = keep[start + a:start + b]
                if bool(k.all()):
                    scores[a:b] = score(read_inputs(store, Block(ds, shard, a, b), layer, inputs)).float()
                elif k.any():
                    rows = k.nonzero().squeeze(1)
                    scores[a + rows] = score(read_inputs(store, Block(ds, shard, a, b, rows), layer, inputs)).float()
            while seq < len(offsets) - 1 and offsets[seq + 1] <= start + n:
                a, b = offsets[seq], offsets[seq + 1]
                ids, roles = stream.input_ids[a:b], stream.roles[a:b]
                for col, top in enumerate(tops):
                    top.offer(ds, int(stream.sequence_ids[seq]), ids, roles, scores[a - start:b - start, col],
                              keep[a:b])
                seq += 1
            start += n
    decode = token_decoder(tokenizer)
    return [top.examples(decode, ROLES)["max"] for top in tops]


def lens_readouts(base, organism, directions: dict[str, torch.Tensor], top_k: int
                  ) -> tuple[list[dict], dict[str, RankedTokens]]:
    """Each direction `[D]` (and its negation) through both models' logit lens.

    Returns table rows (`name, vector (+|-), lens (organism|base), rank, token_id, token, prob`) and the organism
    lens readouts as ranked tokens by `<name>` (+) and `<name>/neg` (-)."""
    rows, ranked = [], {}
    for name, vec in directions.items():
        for sign, v in (("+", vec), ("-", -vec)):
            for lens, handle in (("organism", organism), ("base", base)):
                top = top_tokens(logit_lens(handle.model, v[None].float())[0], handle.tokenizer, top_k)
                rows += [{"name": name, "vector": sign, "lens": lens, "rank": i, "token_id": t, "token": s, "prob": p}
                         for i, (t, s, p) in enumerate(zip(top.token_ids, top.tokens, top.scores))]
                if lens == "organism":
                    ranked[DirectionNames.signed(name, negated=sign == "-")] = top
    return rows, ranked


def mean_norm(store, layer: int, datasets: Sequence[str], role: str = "organism", max_tokens: int = 65536) -> float:
    """Mean ‖h‖ of one role at `layer` over the kept tokens among the first `max_tokens` (the scale steering
    strengths are in)."""
    total, n = 0.0, 0
    for ds in datasets:
        keep, at = store.keep(ds), 0
        for shard, size in enumerate(store.shard_sizes(ds)):
            x = store.read_block(ds, role, layer, shard, 0, min(size, max_tokens - n)).float()
            x, at = x[keep[at:at + len(x)]], at + size
            total += float(x.norm(dim=-1).sum())
            n += len(x)
            if n >= max_tokens:
                return total / n
    return total / max(n, 1)


@dataclass
class ReadoutConfig(Checked):
    """Which layers and store datasets a dictionary method reads, and how its evidence is read out and steered."""

    layers: list[float] | None = layer_field(None)
    """Stored layers fitted (indices or fractions of depth); null: every layer of the store."""
    datasets: list[str] | None = None
    """Store datasets fitted on (e.g. [generic_text, generic_chat]); null: all of them."""
    top_k: int = bounded(gt(0), 20)
    """Tokens kept per lens readout."""
    top_k_examples: int = bounded(ge(0), 10)
    """Max-activating examples kept per component or latent."""
    evidence: int = bounded(gt(0), 8)
    """Components or latents whose organism-lens readouts are graded. The same number for every organism, so the
    control's chance of a lucky readout matches the organism's."""
    batch_tokens: int = bounded(gt(0), 8192)
    """Tokens read from the store at once in readout passes."""
    steering_dataset: str = "@text"
    """Text whose first words are the steering prompts: `@text` (the dataset preset's text source), a zoo corpus, hub
    id or local file."""
    steering_prompts: int = bounded(ge(0), 6)
    """Prompts continued per strength; 0 skips steering."""
    steering_alphas: list[float] = bounded(ANY, default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    """Steering strengths tried (units: see the method)."""
    steering_tokens: int = bounded(gt(0), 24)
    """New tokens per steered sample."""
    coherence_factor: float = bounded(gt(0), 2.0)
    """A strength is coherent while its samples' perplexity under the base stays within this factor of unsteered."""

    def __post_init__(self):
        if self.datasets is not None and len(self.datasets) == 0:
            raise ConfigError("datasets must name at least one store dataset (or null for all)")
        super().__post_init__()

def fitted_layers(cfg: ReadoutConfig, store, n_layers: int, key: str = "layers") -> list[int]:
    """The configured layers as store layer indices; a layer the store lacks is a ConfigError naming the stored
    (`key`: the config key errors name, e.g. `method.sae.layers`)."""
    if cfg.layers is None:
        return list(store.layers)
    layers = resolve_layers(list(cfg.layers), n_layers, key)
    missing = [layer for layer in layers if layer not in store.layers]
    if missing:
        raise ConfigError(f"{key}: layers {missing} are not in the store (stored: {store.layers}); pick stored "
                          f"layers or preprocess with preprocessing.layers including them")
    return layers


def fitted_datasets(cfg: ReadoutConfig, store, key: str = "datasets") -> list[str]:
    if cfg.datasets is None:
        return list(store.datasets)
    missing = [d for d in cfg.datasets if d not in store.datasets]
    if missing:
        raise ConfigError(f"{key}: datasets {missing} are not in the store; stored: {', '.join(store.datasets)}")
    return list(cfg.datasets)


def steering_prompts(rows: list[dict], n: int) -> list[str]:
    """The first six words of each text row, up to `n` prompts."""
    out = [" ".join(str(r.get("text", "")).split()[:6]) for r in rows]
    return [p for p in out if p][:n]


def steering_evidence(ctx, cfg: ReadoutConfig, vector: torch.Tensor, layer: int, prefix: str, result) -> None:
    """Steer both models with `vector` (the coherent sweep of `diffgame.models.steering`) and put the samples, the sweep
    table and `<prefix>/steering/*` metrics into `result`."""
    prompts = steering_prompts(ctx.texts.get("steering", []), cfg.steering_prompts)
    if not prompts or not cfg.steering_alphas:
        return
    found = coherent_sweep(ctx.base, ctx.organism, vector, layer, prompts, cfg.steering_alphas, cfg.steering_tokens,
                           cfg.coherence_factor, seed=int(ctx.seed))
    result.samples["steering"] = found.samples
    result.tables["steering_sweep"] = pd.DataFrame([r | {"layer": layer} for r in found.sweep])
    result.metrics.update({f"{prefix}/steering/layer": float(layer), f"{prefix}/steering/alpha": float(found.alpha),
                           f"{prefix}/steering/ppl_ratio": float(found.ppl_ratio),
                           f"{prefix}/steering/coherent": float(found.coherent)})


class Unexplained:
    """Running fraction of variance unexplained over a pass: Σ‖x - x̂‖² / Σ‖x - mean x‖² (x: [n, M, D])."""

    def __init__(self):
        self.err = self.sq = 0.0
        self.sum: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        self.err += float((x - recon).pow(2).sum())
        self.sq += float(x.pow(2).sum())
        s = x.sum(0).double()
        self.sum = s if self.sum is None else self.sum + s
        self.n += len(x)

    @property
    def value(self) -> float:
        if self.sum is None:
            return float("nan")
        return self.err / max(self.sq - float((self.sum ** 2).sum()) / self.n, 1e-12)


def latent_evidence(ctx, cfg: ReadoutConfig, result, layer: int, chosen: list[int], examples: list[list[Example]],
                    directions: torch.Tensor, max_activation) -> list[dict]:
    """Put the chosen latents' evidence into `result` (examples `layer<L>_latent<j>`, organism-lens ranked tokens
    `layer<L>/latent<j>`, steering vectors = decoder direction × max activation); returns their lens table rows.

    `directions`: decoder rows `[F, D]` in raw units; `max_activation[j]`: the latent's largest activation."""
    unit = {LATENTS.name(layer, j): directions[j] / directions[j].norm().clamp_min(1e-12) for j in chosen}
    rows, ranked = lens_readouts(ctx.base, ctx.organism, unit, cfg.top_k)
    for j, found in zip(chosen, examples):
        result.examples[LATENTS.examples(layer, j)] = found
        result.ranked_tokens[LATENTS.name(layer, j)] = ranked[LATENTS.name(layer, j)]
        result.vectors[LATENTS.name(layer, j)] = directions[j] * float(max_activation[j])
    return [r | {"layer": layer} for r in rows]
