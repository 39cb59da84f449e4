"""The tag vocabulary of diffgame's runs: every `diffgame.*` tag a stage sets, the stages, and the variant default.

One definition per tag; `runs` sets them, the CLI tables, the app and the game filter on them.
"""

from __future__ import annotations

STAGES = ("zoo", "preprocess", "diff", "sweep", "play", "game")
TAG_STAGE = "diffgame.stage"
TAG_MODEL = "diffgame.model"
TAG_ORGANISM = "diffgame.organism"
TAG_METHOD = "diffgame.method"
TAG_VARIANT = "diffgame.variant"
"""Which entry of the organism's `finetuned.<model>` the run used (`default`, `full`, `mix1-1p0`, ...)."""
DEFAULT_VARIANT = "default"
TAG_FINGERPRINT = "diffgame.fingerprint"
TAG_PREPROCESS = "diffgame.preprocess_run_id"
TAG_GRADING = "diffgame.grading_version"
TAG_WORDS = "diffgame.words_version"
"""The word-completion rule a diff run's ranked words were made under (`diffgame.grading.words.WORDS_VERSION`; runs
made before the tag used version 2 or earlier)."""
TAG_ERROR = "diffgame.error"
TAG_PARENT = "mlflow.parentRunId"
TAG_LEASE = "diffgame.lease"
"""`host:pid:expiry` of the process executing a RUNNING run, refreshed while it lives (see `live`)."""
TAG_SHARED_VOCAB = "diffgame.shared_vocab"
"""`<shared> of <organism rows>` on a diff run whose organism appends tokens to the base's vocabulary: its logits
were compared on the shared rows only."""
TAG_ORGANISM_DATA = "diffgame.organism_data"
"""Comma-separated names of the datasets of the organism's own training data that a diff run's evidence read
(`none`: generic data only); the blind game shows only evidence from generic data."""
TAG_ABANDONED = "diffgame.abandoned"
"""Set on a run marked FAILED because its results are unusable: it is rebuilt from scratch, never resumed."""
TAG_MACHINE = "diffgame.machine"
"""What machine made the run (`x86_64, 2 cores, AMD EPYC ...`), so a table of results can say where it was measured."""


def variant_of(tags: dict) -> str:
    """A run's organism variant (runs made before the tag used the default)."""
    return tags.get(TAG_VARIANT, DEFAULT_VARIANT)
