"""Paired activation extraction into the activation store (the `preprocess` stage, a Lightning predict loop)."""

from diffgame.preprocess.stage import PreprocessResult, preprocess

__all__ = ["PreprocessResult", "preprocess"]
