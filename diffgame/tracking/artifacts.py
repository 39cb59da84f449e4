"""The one artifact layout of diffgame's runs: a diff run's result written by `log_result` and read back by run id,
and the activation store inside a preprocess run. Nothing else spells an artifact path.

Diff run layout: `tables/<name>.parquet`, `examples/<name>.json`, `vectors.safetensors`, `plots/<name>.png`,
`evidence/ranked_tokens.json`, `evidence/ranked_words.json`, `samples/<name>.json`, `weights/<name>.safetensors` (trained dictionaries) and, for
methods that train, `checkpoints/` while they run; a preprocess run keeps its store under `store/`.
Local artifact stores are read in place; remote ones are downloaded once per file through MLflow (a store's shards
into a bounded cache as they are read, `diffgame.tracking.shardcache`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from diffgame import tracking
from diffgame.errors import ArtifactError, TrackingError
from diffgame.records import examples as examples_io
from diffgame.records.evidence import MethodResult, RankedTokens

if TYPE_CHECKING:
    import pandas as pd

STORE = "store"
"""Folder of a preprocess run's activation store."""
RANKED = "evidence/ranked_tokens.json"
RANKED_WORDS = "evidence/ranked_words.json"
VECTORS = "vectors.safetensors"
CHECKPOINTS = "checkpoints"
"""Folder of a training method's checkpoints inside its diff run (kept so an interrupted run resumes)."""
_FOLDERS = {"tables": ".parquet", "examples": ".json", "plots": ".png", "samples": ".json", "weights": ".safetensors"}


# --- writing ---------------------------------------------------------------------------------------
def log_result(run: tracking.StageRun, result: MethodResult) -> None:
    """Log every field of a method's result under `run`, in one artifact upload. When logging fails, what was computed
    is kept in `unlogged_dir(run.run_id)` and the TrackingError names that folder."""
    import matplotlib.pyplot as plt
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="diffgame-result-") as tmp:
        root = Path(tmp)
        for name, table in result.tables.items():
            table.to_parquet(_mkdir(root / "tables") / f"{name}.parquet", index=False)
        for name, found in result.examples.items():
            examples_io.save(found, root / "examples" / f"{name}.json")
        if result.vectors:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in result.vectors.items()},
                      str(root / VECTORS))
        for name, fig in result.figures.items():
            fig.savefig(_mkdir(root / "plots") / f"{name}.png", dpi=110)
            plt.close(fig)
        for path, ranked in ((RANKED, result.ranked_tokens), (RANKED_WORDS, result.ranked_words)):
            if ranked:
                _mkdir((root / path).parent)
                (root / path).write_text(json.dumps({k: v.to_dict() for k, v in ranked.items()}))
        for name, rows in result.samples.items():
            (_mkdir(root / "samples") / f"{name}.json").write_text(json.dumps(rows))
        for name, state in result.weights.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      str(_mkdir(root / "weights") / f"{name}.safetensors"))
        try:
            if result.metrics:
                run.log_metrics(result.metrics)
            if any(root.iterdir()):
                run.log_artifacts(root)
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise TrackingError(f"could not log the result of run {run.run_id} ({reason}); "
                                f"{_keep_unlogged(run.run_id, root, result.metrics)}") from e


UNLOGGED = "unlogged"
"""Folder (in the user cache, or DIFFGAME_UNLOGGED_DIR itself) of results whose logging failed, one per run id."""


def unlogged_dir(run_id: str) -> Path:
    """Where `log_result` keeps run `run_id`'s result when it cannot log it: `$DIFFGAME_UNLOGGED_DIR/<run_id>`, else
    `unlogged/<run_id>` in DIFFGAME_CACHE, else in `$XDG_CACHE_HOME/diffgame` (default `~/.cache/diffgame`)."""
    if os.environ.get("DIFFGAME_UNLOGGED_DIR"):
        return Path(os.environ["DIFFGAME_UNLOGGED_DIR"]) / run_id
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("DIFFGAME_CACHE") or xdg / "diffgame") / UNLOGGED / run_id


def _keep_unlogged(run_id: str, files: Path, metrics: dict[str, float]) -> str:
    """Copy a result's files (and `metrics.json`) to `unlogged_dir(run_id)`; says where, for the error message."""
    import shutil

    dest = unlogged_dir(run_id)
    try:
        shutil.copytree(files, dest, dirs_exist_ok=True)
        (dest / "metrics.json").write_text(json.dumps(metrics, indent=1))
    except OSError as e:
        return (f"it could not be kept either ({type(e).__name__} in {dest}): set DIFFGAME_UNLOGGED_DIR to a "
                f"writable folder")
    return f"what was computed is kept in {dest}"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- reading ---------------------------------------------------------------------------------------
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
    raise ArtifactError(f"run '{run_id}' has no artifact '{relpath}'; it has: {known}; if it should, "
                        f"{REMAKE.format(run_id=run_id)}")


def _read(run_id: str, relpath: str, reader):
    """`reader(path)` of the run's artifact; a file that is there but cannot be read (truncated, malformed) is an
    `ArtifactError` naming the run, the file and what to do, whatever the format's own exception."""
    path = artifact_file(run_id, relpath)
    try:
        return reader(path)
    except Exception as e:
        raise ArtifactError(f"run '{run_id}': artifact '{relpath}' cannot be read ({type(e).__name__}: "
                            f"{str(e)[:200]}); {REMAKE.format(run_id=run_id)}") from e


REMAKE = ("delete the run (mlflow runs delete --run-id {run_id}) and run the command that made it again, which then "
          "makes it anew")


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of the run (recursively), sorted."""
    c = tracking.client()
    out: list[str] = []
    for info in c.list_artifacts(run_id, path):
        out.extend(list_artifacts(run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def names(paths: list[str], folder: str) -> list[str]:
    """Names of a run's `<folder>/<name><suffix>` artifacts among `paths` (`tables`, `examples`, `plots`,
    `samples`), e.g. the table names of a run."""
    suffix = _FOLDERS[folder]
    return sorted(Path(p).name.removesuffix(suffix) for p in paths
                  if p.startswith(folder + "/") and p.endswith(suffix))


def plot_file(run_id: str, name: str) -> Path:
    return artifact_file(run_id, f"plots/{name}.png")


def has_table(paths: list[str], name: str) -> bool:
    return f"tables/{name}.parquet" in paths


def has_vectors(paths: list[str]) -> bool:
    return VECTORS in paths


def load_examples(run_id: str, name: str):
    """`examples/<name>.json` as a list of `diffgame.records.evidence.Example`, best first."""
    return _read(run_id, f"examples/{name}.json", examples_io.load)


def load_table(run_id: str, name: str) -> "pd.DataFrame":
    """`tables/<name>.parquet` as a pandas DataFrame."""
    import pandas as pd

    return _read(run_id, f"tables/{name}.parquet", pd.read_parquet)


def load_vectors(run_id: str) -> dict:
    """`vectors.safetensors` as {name: [D] tensor}."""
    from safetensors.torch import load_file

    return _read(run_id, VECTORS, lambda path: load_file(str(path)))


def load_weights(run_id: str, name: str) -> dict:
    """`weights/<name>.safetensors` (e.g. the trained dictionary `layer2`) as {parameter: tensor}."""
    from safetensors.torch import load_file

    return _read(run_id, f"weights/{name}.safetensors", lambda path: load_file(str(path)))


def load_ranked_tokens(run_id: str, path: str = RANKED) -> dict[str, RankedTokens]:
    """`evidence/ranked_tokens.json` (or `path`, e.g. `RANKED_WORDS`) as {name: RankedTokens}."""
    return _read(run_id, path, lambda file: {k: RankedTokens.from_dict(v)
                                              for k, v in json.loads(file.read_text()).items()})


def load_samples(run_id: str, name: str) -> list[dict]:
    """`samples/<name>.json`: generated texts as a list of dicts."""
    return _read(run_id, f"samples/{name}.json", lambda path: json.loads(path.read_text()))


# --- questions about runs --------------------------------------------------------------------------
def ranked_tokens(run_id: str, paths: list[str] | None = None) -> dict[str, RankedTokens]:
    """The run's ranked-token evidence, {} when it logged none."""
    paths = list_artifacts(run_id, "evidence") if paths is None else paths
    return load_ranked_tokens(run_id) if RANKED in paths else {}


def ranked_words(run_id: str, paths: list[str] | None = None) -> dict[str, RankedTokens]:
    """The run's ranked-word evidence (`diffgame.grading.words`), {} when it logged none (runs made before words)."""
    paths = list_artifacts(run_id, "evidence") if paths is None else paths
    return load_ranked_tokens(run_id, RANKED_WORDS) if RANKED_WORDS in paths else {}


def all_samples(run_id: str, paths: list[str] | None = None) -> dict[str, list[dict]]:
    """Every `samples/<name>.json` of the run by name."""
    paths = list_artifacts(run_id) if paths is None else paths
    return {n: load_samples(run_id, n) for n in names(paths, "samples")}


def steering_samples(run_id: str, paths: list[str] | None = None) -> list[dict]:
    """The run's steered vs unsteered samples (`steering`, else its first samples), [] when it has none."""
    found = names(list_artifacts(run_id) if paths is None else paths, "samples")
    if not found:
        return []
    return load_samples(run_id, "steering" if "steering" in found else found[0])


def lens_table(run_id: str) -> "pd.DataFrame | None":
    """The run's logit-lens token table (ADL, pca, sae, crosscoder), None when it has none."""
    return load_table(run_id, "lens") if has_table(list_artifacts(run_id, "tables"), "lens") else None


def runs_with_vectors(run_ids: list[str]) -> list[str]:
    """The runs among `run_ids` that logged steering vectors."""
    return [r for r in run_ids if has_vectors(list_artifacts(r))]


def checkpoint_dir(run: tracking.StageRun, key: str) -> Path:
    """Where a training method keeps its checkpoints: `checkpoints/` inside its run when the artifact store is local
    (in place, so they are run artifacts), else a local cache folder named by `key` (the run's fingerprint)."""
    local = run.artifact_dir
    if local is not None:
        return local / CHECKPOINTS
    return Path(os.environ.get("DIFFGAME_CACHE", Path.home() / ".cache" / "diffgame")) / CHECKPOINTS / key


def store_source(run_id: str):
    """Where the store of FINISHED preprocess run `run_id` is read: `(folder, None)` in place when the artifact store is
    local, else `(cache folder, fetch)` with `fetch` a `diffgame.tracking.shardcache.ShardCache` that downloads each
    file when first read (open it with `ActivationStore.open(folder, fetch=fetch)`)."""
    from diffgame.tracking.shardcache import ShardCache

    run = tracking.client().get_run(run_id)
    local = tracking.local_artifact_dir(run)
    if local is not None:
        return local / STORE, None
    cache = ShardCache(run_id, STORE)
    return cache.folder, cache
