"""Amplification: sample the difference, not the organism.

Logit-diff amplification draws replies from `l_org + alpha (l_org - l_base)`; weight amplification from the organism
with weights `theta_base + w (theta_org - theta_base)` (`diffgame.models.amplified`). Each strength of a grid replies
to the same neutral prompts as `blackbox`; the strongest whose replies stay coherent (their perplexity under the base
within `coherence_factor` of the organism's own replies', the rule steering keeps its strength by) is kept, and the
words its replies over-use against the base's replies are the evidence, ranked as `blackbox` ranks the organism's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from diffgame.errors import ConfigError
from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest
from diffgame.methods.plots import profile
from diffgame.methods.sampling import SamplingConfig, overused, prompts
from diffgame.models.amplified import amplified_weights
from diffgame.models.generation import Replies, sample
from diffgame.records.ranges import bounded, ge, gt

KINDS = ("logit", "weight")


@dataclass
class AmplifyConfig(SamplingConfig):
    """The neutral prompts and sampling of `blackbox`, and the amplification strengths tried."""

    SECTION = "method.amplify"

    alphas: list[float] = bounded(gt(0), default_factory=lambda: [1.0, 2.0, 4.0])
    """Logit-diff strengths tried: tokens drawn from `l_org + alpha (l_org - l_base)`; empty skips it."""
    weights: list[float] = bounded(gt(1), default_factory=lambda: [2.0, 4.0])
    """Weight amplification factors tried: weights `theta_base + w (theta_org - theta_base)`; empty skips it."""
    coherence_factor: float = bounded(ge(1), 2.0)
    """A strength is coherent while its replies' perplexity under the base stays within this factor of the
    organism's own replies'; the strongest coherent one is kept (the weakest tried when none is)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.alphas and not self.weights:
            raise ConfigError("method.amplify.alphas and method.amplify.weights must not both be empty; give at "
                              "least one strength (e.g. method.amplify.alphas=[1,2,4])")


@dataclass
class Sweep:
    """The strengths of one kind tried on one prompt source, and the one kept."""

    rows: list[dict] = field(default_factory=list)
    """Per strength: `kind, strength, perplexity, ppl_ratio, coherent`."""
    replies: list[Replies] = field(default_factory=list)

    def chosen(self) -> int:
        """The index of the strongest coherent strength, else of the weakest."""
        coherent = [i for i, r in enumerate(self.rows) if r["coherent"]]
        return coherent[-1] if coherent else 0


class AmplifyMethod(Method):
    """Words the amplified organism writes more than the base, at the strongest amplification that stays coherent."""

    needs_store = False
    needs_models = True
    headline: ClassVar[tuple[str, ...]] = ("amplify/*/strength", "amplify/*/top_z")
    main_plot: ClassVar[str | None] = "coherence"

    def texts(self) -> dict[str, TextRequest]:
        return self.config.texts()

    def run(self, ctx: MethodContext) -> MethodResult:
        c, tok = self.config, ctx.tokenizer
        seed = int(ctx.seed if c.seed is None else c.seed)
        base, org = ctx.base.model, ctx.organism.model

        def replies(model, alpha: float = 0.0, scored: bool = True) -> Replies:
            return sample(base if scored else None, model, tok, ids, alpha, c.replies_per_prompt, c.max_new_tokens,
                          c.temperature, seed, c.batch_size)

        result, curves = MethodResult(), []
        for source, (texts, ids) in prompts(c, ctx.texts, tok).items():
            reference = replies(base, scored=False).texts  # the base's own replies: what amplified words stand out from
            plain = replies(org)  # the organism's own, scored under the base: the coherence yardstick
            ppl_plain = plain.perplexity()
            for kind, grid in (("logit", c.alphas), ("weight", c.weights)):
                if not grid:
                    continue
                sweep = Sweep()
                for strength in sorted(grid):
                    if kind == "logit":
                        amplified = replies(org, strength)
                    else:
                        with amplified_weights(base, org, strength) as model:
                            amplified = replies(model)
                    ppl = amplified.perplexity()
                    ratio = ppl / ppl_plain
                    sweep.rows.append({"source": source, "kind": kind, "strength": float(strength),
                                       "perplexity": ppl, "ppl_ratio": ratio,
                                       "coherent": bool(ratio <= c.coherence_factor)})
                    sweep.replies.append(amplified)
                best = sweep.chosen()
                kept, row = sweep.replies[best], sweep.rows[best]
                table, ranked = overused(kept.texts, reference, c, tok)
                key = f"amplify/{kind}/{source}"
                result.ranked_tokens[key] = result.ranked_words[key] = ranked
                result.tables[f"words_{kind}_{source}"] = table.head(max(c.top_k, 200)).reset_index(drop=True)
                result.samples[f"{kind}_{source}"] = [
                    {"prompt": p, "sample": j, "strength": row["strength"], "base": b, "organism": o, "amplified": a}
                    for p, bs, os_, as_ in zip(texts, reference, plain.texts, kept.texts)
                    for j, (b, o, a) in enumerate(zip(bs, os_, as_))]
                result.metrics.update({f"{key}/strength": row["strength"], f"{key}/ppl_ratio": row["ppl_ratio"],
                                       f"{key}/coherent": float(row["coherent"]),
                                       f"{key}/top_z": float(table["z"].iloc[0]) if len(table) else 0.0})
                curves += [{**r, "chosen": i == best} for i, r in enumerate(sweep.rows)]
            result.metrics[f"amplify/{source}/organism_perplexity"] = ppl_plain
        coherence = pd.DataFrame(curves)
        result.tables["coherence"] = coherence
        result.figures["coherence"] = profile(coherence.assign(curve=coherence["kind"] + " / " + coherence["source"]),
                                              "strength", "ppl_ratio", "curve", "perplexity under the base ÷ organism's",
                                              f"Coherence of amplified replies (bound {c.coherence_factor:g})")
        return result
