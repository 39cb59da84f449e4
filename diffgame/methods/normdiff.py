"""Activation norm differences (placeholder until the method lands)."""
from dataclasses import dataclass

from diffgame.methods.base import Method


@dataclass
class NormDiffConfig:
    top_k_examples: int = 20


class NormDiffMethod(Method):
    pass
