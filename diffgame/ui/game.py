"""The guessing game, without Streamlit: draw an organism among those with runs, grade a free-text guess."""

from __future__ import annotations

import random

import pandas as pd

from diffgame.config import compose
from diffgame.errors import TrackingError
from diffgame.guesses import GENERIC_WORDS, UPPERCASE_WORDS, GuessGrade, grade_guess, guess_hits  # noqa: F401
from diffgame.ui.runs import NO_RUNS_HINT


def draw_organism(runs: pd.DataFrame, seed: int | None = None) -> tuple[str, str]:
    """A random (model, organism) among those with diff runs, for the blind game."""
    pairs = sorted(set(zip(runs["model"], runs["organism"])))
    if not pairs:
        raise TrackingError(f"no diff runs to play with; {NO_RUNS_HINT}")
    return random.Random(seed).choice(pairs)


def organism_node(model: str, organism: str):
    """An organism's composed config (ground truth, description) as paired with `model`."""
    return compose([f"model={model}", f"organism={organism}"]).organism
