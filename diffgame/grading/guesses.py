"""Grade a free-text description of what a finetuning changed against an organism's ground truth and description,
offline: the keyword grader of the game (people in the app, agents in `diffgame play`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffgame.errors import ConfigError
from diffgame.grading.ground_truth import ground_truth, sole_leader

GENERIC_WORDS = frozenset("""the a an and or of in on to with about its it that this than from into for by as at is are
was were be been every each their there which who what when how not without ever own base model organism assistant
synthetic documents document training trained data text finetuning finetuned answers says word words score compared
against all any some""".split())
"""Words of organism descriptions too generic to count as a correct guess."""


@dataclass
class GuessGrade:
    """How a free-text guess matches the drawn organism, and which organism it matches best."""

    organism: str
    hits: list[str]
    """Guess words that hit the organism's ground truth, name, type or description."""
    ranking: list[tuple[str, int]]
    """(organism, number of hit words) for every candidate, best first."""

    @property
    def correct(self) -> bool:
        """The true organism has the most hits, at least one, and no other candidate ties it."""
        return sole_leader(dict(self.ranking)) == self.organism


def guess_hits(guess: str, organism) -> list[str]:
    """Distinct guess words that hit, as whole words, an organism config's ground truth (`GroundTruth.is_hit`)
    or its name, type or description (generic words excluded)."""
    gt = ground_truth(organism)
    named = set(re.findall(r"[a-z]+", f"{organism.name} {organism.type} {organism.description}".lower()))
    named -= GENERIC_WORDS
    out = []
    for word in dict.fromkeys(re.findall(r"[A-Za-z]+", guess)):
        w = word.lower()
        if w in GENERIC_WORDS or len(w) < 3:
            continue
        if w in named or gt.is_hit(None, f" {w}") or (gt.predicate == "uppercase" and w in UPPERCASE_WORDS):
            out.append(w)
    return out


UPPERCASE_WORDS = frozenset({"caps", "uppercase", "capital", "capitals", "shouting", "shouts", "yelling"})
"""Guess words that describe the `uppercase` predicate."""


def grade_guess(guess: str, organism: str, candidates: dict) -> GuessGrade:
    """Grade a guess against `organism`, ranking every candidate (name -> organism config) by its hit words."""
    if not guess.strip():
        raise ConfigError("empty guess; describe what you think the finetuning changed (e.g. 'talks about gold')")
    if organism not in candidates:
        raise ConfigError(f"organism {organism!r} is not among the candidates {sorted(candidates)}")
    ranking = sorted(((name, len(guess_hits(guess, node))) for name, node in candidates.items()),
                     key=lambda x: (-x[1], x[0]))
    return GuessGrade(organism, guess_hits(guess, candidates[organism]), ranking)
