"""MLflow as the project's database: the tag vocabulary (`tags`), the client, fingerprints and the run lifecycle
(`runs`), live runs' leases (`leases`), one process per run (`claims`), usable locations and disk space
(`locations`), the one artifact layout (`artifacts`).
"""

# what every stage uses, as `tracking.<name>`; `claims`, `locations` and `artifacts` are imported by name
from diffgame.tracking.leases import LEASE_S, live
from diffgame.tracking.runs import (ERROR_FILE, StageRun, abandon, check_writable, client, experiment_id,
                                    find_finished, find_live, find_resumable, fingerprint, interrupted,
                                    lightning_logger, local_artifact_dir, resolve_uri, run_url, search, set_uri,
                                    stage_run, ui_url)
from diffgame.tracking.tags import (DEFAULT_VARIANT, STAGES, TAG_ABANDONED, TAG_ERROR, TAG_FINGERPRINT, TAG_GRADING,
                                    TAG_LEASE, TAG_MACHINE, TAG_METHOD, TAG_MODEL, TAG_ORGANISM, TAG_ORGANISM_DATA, TAG_PARENT,
                                    TAG_PREPROCESS, TAG_SHARED_VOCAB, TAG_STAGE, TAG_VARIANT, TAG_WORDS, variant_of)

__all__ = ["ERROR_FILE", "LEASE_S", "StageRun", "abandon", "check_writable", "client", "experiment_id",
           "find_finished", "find_live", "find_resumable", "fingerprint", "interrupted", "lightning_logger", "live",
           "local_artifact_dir", "resolve_uri", "run_url", "search", "set_uri", "stage_run", "ui_url",
           "DEFAULT_VARIANT", "STAGES", "TAG_ABANDONED", "TAG_ERROR", "TAG_FINGERPRINT", "TAG_GRADING", "TAG_LEASE",
           "TAG_MACHINE", "TAG_METHOD", "TAG_MODEL", "TAG_ORGANISM", "TAG_ORGANISM_DATA", "TAG_PARENT", "TAG_PREPROCESS",
           "TAG_SHARED_VOCAB", "TAG_STAGE", "TAG_VARIANT", "TAG_WORDS", "variant_of"]
