"""Paired activation extraction into the activation store (the `preprocess` stage)."""

from diffgame.extract.capture import capture_residuals
from diffgame.extract.preprocess import PreprocessResult, find_store, preprocess, preprocess_fingerprint

__all__ = ["PreprocessResult", "capture_residuals", "find_store", "preprocess", "preprocess_fingerprint"]
