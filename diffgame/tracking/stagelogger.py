"""Lightning's MLflow logger for a stage's own run (imported only where Lightning trains, as it imports Lightning)."""

from lightning.pytorch.loggers import MLFlowLogger


class StageLogger(MLFlowLogger):
    """Writes into an open stage run whose status stays the stage's: Lightning's own `finalize` would mark the run
    FINISHED when one `fit` ends, while the stage is still running. A module-level class, so DDP can hand it to
    spawned ranks (rank 0 logs)."""

    def finalize(self, status: str = "success") -> None:
        pass
