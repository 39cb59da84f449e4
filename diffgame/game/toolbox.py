"""What an LLM agent may do in `diffgame play` (the `chat_agent.Toolbox` protocol) on real runs and models: list and
drill into the evidence of finished diff runs, ask both models a prompt, steer the organism with a logged vector, and
ask the organism with its difference from the base amplified.

The models are loaded on the first question (a play that only reads evidence never loads them). Nothing here names
the organism: readouts, examples and vectors are keyed by method and readout name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffgame.data.sequences import render_chat
from diffgame.errors import ConfigError
from diffgame.game.probes import Interactions
from diffgame.models.generation import continue_ids, sample
from diffgame.models.steering import steer, vector_layer
from diffgame.records.schema import RootConfig
from diffgame.tracking import artifacts

SUMMARY_WORDS = 8
"""Words per readout in `summaries`."""
MAX_ALPHA = 16.0
"""The largest logit-diff amplification `amplified` takes (far past where replies stay coherent on the zoo)."""


@dataclass
class EvidenceToolbox:
    """Evidence of diff runs (method -> run id) and, on demand, the pair's models from config `cfg`."""

    runs: dict[str, str]
    cfg: RootConfig | None = None
    """The typed config of the pair (to load the models); None: `ask` and `steer` are unavailable."""
    max_new_tokens: int = 48
    interactions: Interactions | None = None
    """The play's budget of model interactions (`ask`, `steer` and `amplified` spend one each); None: no limit."""
    _pair: tuple | None = field(default=None, repr=False)
    _readouts: dict = field(default_factory=dict, repr=False)

    def readouts(self, method: str) -> dict:
        """A method's ranked words (its ranked tokens for runs made before words), by readout name."""
        if method not in self.runs:
            raise KeyError(f"no evidence from method '{method}'; available: {', '.join(sorted(self.runs))}")
        if method not in self._readouts:
            run_id = self.runs[method]
            paths = artifacts.list_artifacts(run_id, "evidence")
            self._readouts[method] = artifacts.ranked_words(run_id, paths) or artifacts.ranked_tokens(run_id, paths)
        return self._readouts[method]

    def summaries(self) -> dict[str, dict[str, list[str]]]:
        return {m: {name: [w.strip() for w in r.tokens[:SUMMARY_WORDS]] for name, r in self.readouts(m).items()}
                for m in sorted(self.runs)}

    def drill(self, method: str, readout: str, n: int = 20) -> dict:
        lists = self.readouts(method)
        if readout not in lists:
            raise KeyError(f"method '{method}' has no readout '{readout}'; available: {', '.join(sorted(lists))}")
        n = max(1, min(int(n), 100))
        run_id = self.runs[method]
        tokens = artifacts.ranked_tokens(run_id, artifacts.list_artifacts(run_id, "evidence")).get(readout)
        found = artifacts.names(artifacts.list_artifacts(run_id, "examples"), "examples")
        examples = artifacts.load_examples(run_id, found[0])[:3] if found else []
        return {"words": [w.strip() for w in lists[readout].tokens[:n]],
                "tokens": list(tokens.tokens[:n]) if tokens else [],
                "examples": ["".join(e.tokens)[:400] for e in examples]}

    def _models(self):
        if self.cfg is None:
            raise ValueError("this play may not load the models")
        if self._pair is None:
            from diffgame.models.loading import load_pair
            from diffgame.zoo.pairs import resolve_pair

            self._pair = load_pair(resolve_pair(self.cfg))
        return self._pair

    def _reply(self, handle, prompt: str, seed: int | None = None) -> str:
        ids, _ = render_chat([{"role": "user", "content": prompt}], handle.tokenizer, add_generation_prompt=True)
        return continue_ids(handle.model, handle.tokenizer, list(ids), self.max_new_tokens, do_sample=seed is not None,
                            seed=seed or 0)

    def ask(self, prompt: str, seed: int | None = None) -> dict[str, str]:
        """Both models' replies to `prompt`: greedy, or sampled with `seed` (the probe agent's repeats differ)."""
        self._spend(f"ask: {prompt}")
        base, org = self._models()
        return {"base": self._reply(base, prompt, seed), "organism": self._reply(org, prompt, seed)}

    def ask_many(self, prompts: list[str], seed: int) -> list[dict[str, str]]:
        """Both models' sampled replies to each of `prompts` (batched, seeded), one interaction a prompt: the probe
        agents' questions."""
        self._spend(*(f"ask: {p}" for p in prompts))
        replies = {}
        for handle in self._models():
            ids = [render_chat([{"role": "user", "content": p}], handle.tokenizer, add_generation_prompt=True)[0]
                   for p in prompts]
            out = sample(None, handle.model, handle.tokenizer, ids, max_new_tokens=self.max_new_tokens, seed=seed)
            replies[handle.role] = [row[0] for row in out.texts]
        return [{"base": b, "organism": o} for b, o in zip(replies["base"], replies["organism"])]

    def _spend(self, *whats: str) -> None:
        if self.interactions is not None:
            self.interactions.spend(*whats)

    def vectors(self) -> list[str]:
        out = []
        for method, run_id in sorted(self.runs.items()):
            if artifacts.has_vectors(artifacts.list_artifacts(run_id)):
                out += [f"{method}:{name}" for name in sorted(artifacts.load_vectors(run_id))]
        return out

    def steer(self, vector: str, scale: float, prompt: str) -> dict[str, str]:
        method, _, name = vector.partition(":")
        run_id = self.runs.get(method)
        logged = run_id is not None and artifacts.has_vectors(artifacts.list_artifacts(run_id))
        vectors = artifacts.load_vectors(run_id) if logged else {}
        if name not in vectors:
            raise KeyError(f"unknown vector '{vector}'; list them with list_vectors")
        self._spend(f"steer: {vector} x {scale:g}: {prompt}")
        _, org = self._models()
        layer = vector_layer(name, org.n_layers)
        unsteered = self._reply(org, prompt)
        with steer(org.model, vectors[name], layer, float(scale)):
            steered = self._reply(org, prompt)
        return {"unsteered": unsteered, "steered": steered, "layer": str(layer)}

    def amplified(self, prompt: str, alpha: float) -> dict[str, str]:
        if not 0 <= alpha <= MAX_ALPHA:
            raise ConfigError(f"alpha must be in [0, {MAX_ALPHA:g}], got {alpha:g}")
        self._spend(f"amplified x {alpha:g}: {prompt}")
        base, org = self._models()
        ids, _ = render_chat([{"role": "user", "content": prompt}], org.tokenizer, add_generation_prompt=True)
        # the base runs only where it amplifies (the plain reply needs no base scores)
        replies = {name: sample(base.model if a else None, org.model, org.tokenizer, [list(ids)], a, 1,
                                self.max_new_tokens, 0.0)
                   for name, a in (("organism", 0.0), ("amplified", float(alpha)))}
        return {name: r.texts[0][0] for name, r in replies.items()} | {"alpha": str(alpha)}
