"""The project's exceptions: bad input (`DiffgameError`, printed as one line, exit 1) and `Terminated`."""


class DiffgameError(Exception):
    """A problem with the user's input or environment that a message can explain."""


class ConfigError(DiffgameError):
    """An unknown group option, key or value, or an inconsistent configuration."""


class ModelError(DiffgameError):
    """A model or organism that cannot be resolved or loaded, or an incompatible pair."""


class StoreError(DiffgameError):
    """A missing, partial or corrupt activation store."""


class TrackingError(DiffgameError):
    """A tracking server or run that cannot be reached or is in the wrong state."""


class ArtifactError(TrackingError):
    """A run's artifact that is missing or cannot be read (truncated, malformed, deleted)."""


class DataError(DiffgameError):
    """A dataset that cannot be read, lacks a column, or is empty."""


class SpaceError(DiffgameError):
    """Too little free disk space for what a stage is about to write."""


class SweepError(DiffgameError):
    """Children of a fanned-out sweep that failed; `summaries` holds the rows of those that finished."""

    def __init__(self, message: str, summaries: list | None = None):
        super().__init__(message)
        self.summaries = summaries or []


class Terminated(BaseException):
    """SIGTERM (a preempted job, `kill`) while a stage run is open: raised in the main thread so the run closes KILLED
    and stays resumable instead of dying RUNNING; a BaseException, like KeyboardInterrupt, so no `except Exception`
    swallows it."""
