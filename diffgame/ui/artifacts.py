"""What the app reads of a run: the readers of the one artifact layout (`diffgame.tracking.artifacts`) and the names
directions have in it (`diffgame.records.evidence`), so its pages reach the tracking store only through `diffgame.ui`."""

from diffgame.records.evidence import COMPONENTS, LATENTS, DirectionNames

from diffgame.tracking.artifacts import (has_table, lens_table, list_artifacts, load_examples, load_samples, load_table,
                                         load_vectors, names, plot_file, ranked_tokens, ranked_words, runs_with_vectors,
                                         steering_samples)

__all__ = ["COMPONENTS", "LATENTS", "DirectionNames", "has_table", "lens_table", "list_artifacts", "load_examples", "load_samples", "load_table", "load_vectors",
           "names", "plot_file", "ranked_tokens", "ranked_words", "runs_with_vectors", "steering_samples"]
