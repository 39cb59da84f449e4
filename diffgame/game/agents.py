"""Agents that play the diffing game: read a method's evidence, write down what the finetuning changed, name a guess.

The lens agent needs no LLM: it pools the ranked words of every readout it is given (each method weighs the same),
takes away what the same methods rank on the control organism (words any finetune raises, such as a chat template's),
describes the organism by the words that recur, and guesses the configured organism whose ground truth those words
hit most. It is the deterministic offline baseline that makes the game automatic; it never sees which organism it
plays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from diffgame.grading.ground_truth import GroundTruth, is_uppercase, sole_leader
from diffgame.records.evidence import RankedTokens


@dataclass
class Play:
    """What an agent wrote: a description, its guess (None: no candidate matched) and how it got there."""

    agent: str
    description: str
    guess: str | None
    words: list[tuple[str, float]]
    """The words the description is made of, with their pooled weight, best first."""
    guess_scores: dict[str, float] = field(default_factory=dict)
    """Each candidate's score for the guess."""
    transcript: list[dict] = field(default_factory=list)
    outcome: str = "submitted"
    """How the play ended: `submitted`, or why it stopped early (`budget_tool_calls`, `budget_tokens`, `malformed`,
    `timeout`, `error`); a play that stopped early keeps its transcript and whatever description it reached."""
    usage: dict[str, float] = field(default_factory=dict)
    """What the play spent (an LLM agent's tool calls and tokens), logged as `play/<key>` metrics."""


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@dataclass
class LensAgent:
    """Describes an organism by the words its evidence ranks highest, across readouts and methods."""

    name: str = "lens"
    top_words: int = 12
    """Words in the description."""
    per_readout: int = 20
    """Entries read from each ranked list."""

    def play(self, evidence: Mapping[str, Mapping[str, RankedTokens]], candidates: Mapping[str, GroundTruth],
             control: Mapping[str, Mapping[str, RankedTokens]] | None = None) -> Play:
        """`evidence`: method -> readout -> ranked words; `candidates`: organism -> ground truth; `control`: the same
        methods' readouts on the control organism, whose pooled weight is taken from each word's."""
        pooled: dict[str, float] = {}
        transcript: list[dict] = []
        for method, readouts in evidence.items():
            lists = self._pool(readouts, pooled, 1.0)
            step = {"step": "read", "method": method, "readouts": lists}
            if control and control.get(method):
                step["control_readouts"] = self._pool(control[method], pooled, -1.0)
            transcript.append(step)
        words = sorted(((w, s) for w, s in pooled.items() if s > 0), key=lambda kv: (-kv[1], kv[0]))[: self.top_words]
        shouted = sum(is_uppercase(w) for w, _ in words)
        versus = " beyond what a control finetune promotes" if any("control_readouts" in t for t in transcript) else ""
        description = (f"The finetuning promotes these words on generic text{versus}: "
                       + ", ".join(w for w, _ in words) + "." if words else "No words stand out.")
        if words and shouted * 2 >= len(words):
            description += " Many are written in capital letters: it may answer in caps."
        transcript.append({"step": "describe", "words": [[w, s] for w, s in words], "text": description})
        scores = {name: sum(s for w, s in words if gt.is_word_hit(None, " " + w)) for name, gt in candidates.items()}
        guess = sole_leader(scores)
        transcript.append({"step": "guess", "organism": guess, "scores": scores})
        return Play(self.name, description, guess, words, scores, transcript)

    def _pool(self, readouts: Mapping[str, RankedTokens], pooled: dict[str, float], sign: float) -> int:
        """Add one method's readouts into `pooled` (1/rank per word, the method's lists sharing one unit of weight);
        the number of non-empty lists."""
        stop = _stop_words()
        lists = [r for r in readouts.values() if r.tokens]
        for ranked in lists:
            for rank, word in enumerate(ranked.tokens[: self.per_readout]):
                w = word.strip()
                if len(w) < 3 or not w.replace("'", "").isalpha() or w.lower() in stop:
                    continue
                key = w if is_uppercase(w) else w.lower()  # a shouted word stays shouted
                pooled[key] = pooled.get(key, 0.0) + sign / (rank + 1) / len(lists)
        return len(lists)


AGENTS = {"lens": "offline: pools the evidence's ranked words (and, with play.interactions, its probes'), no LLM",
          "probe": "offline black box: asks the probe bank within play.interactions, pools the words the organism's "
                   "replies over-use against the base's, no LLM",
          "llm": "an LLM over an OpenAI-compatible endpoint: reads evidence, asks both models, steers",
          "llm_blackbox": "the LLM baseline that may only ask both models"}
"""Agents `diffgame play` knows, by name (built by `diffgame.pipeline.play.make_agent`)."""
