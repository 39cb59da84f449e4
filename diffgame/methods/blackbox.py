"""Black-box baseline: sample both models on neutral prompts and rank the words the organism uses more than the base.

Chat prompts and text prompts (`diffgame.methods.sampling`) are continued by both models with the same seeds, and the
words the organism over-uses are ranked by log-odds with an informative Dirichlet prior. It reads no activations:
a white-box method that does not beat it has not shown what the weights add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest
from diffgame.methods.sampling import SamplingConfig, overused, prompts, word_counts
from diffgame.models.generation import sample


@dataclass
class BlackboxConfig(SamplingConfig):
    """Which neutral prompts, how both models sample them, and how the organism's words are ranked."""

    SECTION = "method.blackbox"


class BlackboxMethod(Method):
    """Words the organism writes more than the base when both reply to the same neutral prompts."""

    needs_store = False
    needs_models = True
    version = 2  # 2: replies come from the one sampler both sampling methods share (`diffgame.models.generation`)
    headline: ClassVar[tuple[str, ...]] = ("blackbox/chat/top_z", "blackbox/text/top_z")

    def texts(self) -> dict[str, TextRequest]:
        return self.config.texts()

    def run(self, ctx: MethodContext) -> MethodResult:
        c, tok = self.config, ctx.tokenizer
        seed = int(ctx.seed if c.seed is None else c.seed)
        result = MethodResult()
        for source, (texts, ids) in prompts(c, ctx.texts, tok).items():
            replies = {role: sample(None, handle.model, tok, ids, 0.0, c.replies_per_prompt, c.max_new_tokens,
                                    c.temperature, seed, c.batch_size).texts
                       for role, handle in (("base", ctx.base), ("organism", ctx.organism))}
            table, ranked = overused(replies["organism"], replies["base"], c, tok)
            # the readout is already words: the same list is both the token and the word evidence
            result.ranked_tokens[f"blackbox/{source}"] = result.ranked_words[f"blackbox/{source}"] = ranked
            result.tables[f"words_{source}"] = table.head(max(c.top_k, 200)).reset_index(drop=True)
            result.samples[source] = [{"prompt": p, "sample": j, "base": b, "organism": o}
                                      for p, bs, os_ in zip(texts, replies["base"], replies["organism"])
                                      for j, (b, o) in enumerate(zip(bs, os_))]
            counts = {role: word_counts(rs, c.keep_caps) for role, rs in replies.items()}
            result.metrics.update({
                f"blackbox/{source}/prompts": float(len(texts)),
                f"blackbox/{source}/samples": float(len(texts) * c.replies_per_prompt),
                f"blackbox/{source}/organism_words": float(sum(counts["organism"].values())),
                f"blackbox/{source}/base_words": float(sum(counts["base"].values())),
                f"blackbox/{source}/distinct_words": float(len(counts["organism"] | counts["base"])),
                f"blackbox/{source}/top_z": float(table["z"].iloc[0]) if len(table) else 0.0})
        return result
