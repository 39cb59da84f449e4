"""Read a diff run's logged result back by run id: examples, tables, vectors, ranked tokens, samples.

The inverse of `runner.log_result`. Local artifact stores are read in place; remote ones are downloaded
once per file through MLflow. The app and grading use these, never the file layout directly.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffgame import tracking
from diffgame.errors import TrackingError


def artifact_file(run_id: str, relpath: str) -> Path:
    """Local path of artifact `relpath` of run `run_id` (downloaded if the store is remote)."""
    c = tracking.client()
    try:
        run = c.get_run(run_id)
    except Exception:
        raise TrackingError(f"no run '{run_id}' in {tracking.resolve_uri()}; list runs with `diffgame runs`") from None
    local = tracking.local_artifact_dir(run)
    if local is not None:
        path = local / relpath
        if path.exists():
            return path
    else:
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=relpath,
                                                            tracking_uri=tracking.resolve_uri()))
        except Exception:
            pass
    known = ", ".join(list_artifacts(run_id)) or "none"
    raise TrackingError(f"run '{run_id}' has no artifact '{relpath}'; it has: {known}")


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of the run (recursively), sorted."""
    c = tracking.client()
    out: list[str] = []
    for info in c.list_artifacts(run_id, path):
        out.extend(list_artifacts(run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def load_examples(run_id: str, name: str):
    """`examples/<name>.json` as a list of `diffgame.evidence.Example`, best first."""
    from diffgame import examples

    return examples.load(artifact_file(run_id, f"examples/{name}.json"))


def load_table(run_id: str, name: str):
    """`tables/<name>.parquet` as a pandas DataFrame."""
    import pandas as pd

    return pd.read_parquet(artifact_file(run_id, f"tables/{name}.parquet"))


def load_vectors(run_id: str) -> dict:
    """`vectors.safetensors` as {name: [D] tensor}."""
    from safetensors.torch import load_file

    return load_file(str(artifact_file(run_id, "vectors.safetensors")))


def load_ranked_tokens(run_id: str) -> dict:
    """`evidence/ranked_tokens.json` as {name: RankedTokens}."""
    from diffgame.evidence import RankedTokens

    data = json.loads(artifact_file(run_id, "evidence/ranked_tokens.json").read_text())
    return {k: RankedTokens.from_dict(v) for k, v in data.items()}


def load_samples(run_id: str, name: str) -> list[dict]:
    """`samples/<name>.json`: generated texts as a list of dicts."""
    return json.loads(artifact_file(run_id, f"samples/{name}.json").read_text())
