"""KL divergence between organism and base next-token distributions (placeholder until the method lands)."""
from dataclasses import dataclass
from typing import Literal

from diffgame.methods.base import Method


@dataclass
class KLConfig:
    divergence: Literal["kl", "reverse_kl", "js"] = "kl"
    temperature: float = 1.0


class KLMethod(Method):
    needs_models = True
