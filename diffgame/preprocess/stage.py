"""The `preprocess` stage: tokenize the datasets, run base and organism, and write the activation store.

One MLflow run per fingerprint (models, data, limits, layers, dtype, context length, chat template).
A FINISHED match is reused; an unfinished one is resumed from its completed shards, which gives the
same bytes as an uninterrupted run because the shard plan (batches, shard boundaries) is fixed first.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from diffgame import tracking
from diffgame.data.sequences import load_sequences
from diffgame.errors import ModelError, StoreError
from diffgame.models.loading import DTYPES, load_base, load_organism, load_pair, unembedding, vocab_extends
from diffgame.preprocess.module import PairedExtraction, PlannedBatches, TokenProgress
from diffgame.preprocess.shards import shard_plan
from diffgame.preprocess.writer import PendingParts, ShardWriter
from diffgame.records.plan import Plan
from diffgame.records.schema import PreprocessingConfig
from diffgame.store import PARTS, ActivationStore, StoreWriter
from diffgame.tracking import claims
from diffgame.tracking.artifacts import STORE, store_source
from diffgame.tracking.locations import require_space

STAGE = "preprocess"
SHARD_BYTES = 64 << 20
"""Target size of one activation shard file; sets how many tokens a shard holds for a given d_model."""
_ENV_RUN, _ENV_STORE = "DIFFGAME_PREPROCESS_RUN", "DIFFGAME_PREPROCESS_STORE"
_STARTED_MS = int(time.time() * 1000)
"""`preprocessing.rebuild=true` rebuilds stores finished before this process started, not the ones it made."""


@dataclass
class PreprocessResult:
    """What `preprocess` made or reused."""

    run_id: str
    store_path: str
    n_tokens: int
    reused: bool
    fingerprint: str
    n_bytes: int = 0


def _check_organism_tokenizer(plan: Plan) -> None:
    """A full organism shipping its own tokenizer must share the base's vocabulary."""
    org = plan.pair.organism
    if org.kind != "full" or not Path(org.path).is_dir():
        return
    if not any((Path(org.path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(org.path)
    if not vocab_extends(plan.tokenizer.get_vocab(), other.get_vocab()):  # appended tokens are fine
        raise ModelError(f"tokenizer mismatch: organism '{plan.organism_name}' ({org.path}, {len(other)} tokens) and "
                         f"base '{plan.model_name}' ({len(plan.tokenizer)} tokens) tokenize differently; diffing needs "
                         f"one token stream: pick an organism finetuned from this base model")


def _trainer(pp: PreprocessingConfig, callbacks: list) -> L.Trainer:
    return L.Trainer(accelerator=pp.accelerator, devices=pp.devices, strategy=pp.strategy, num_nodes=pp.num_nodes,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, callbacks=callbacks)


def preprocess(plan: Plan, parent_run_id: str | None = None, *, shard_tokens: int | None = None,
               upload: bool | None = None) -> PreprocessResult:
    """Build (or reuse, or resume) the activation store of `plan`; one `preprocess` run.

    `shard_tokens` overrides the shard size (tests); `upload` forces uploading shards as artifacts even
    when the artifact store is local (default: upload only when it is remote).
    """
    if os.environ.get(_ENV_RUN) and world_rank_from_env() > 0:  # a re-launched DDP rank: extract only
        return _extract_only(plan)
    if launched_world(plan.cfg.preprocessing) > 1:  # torchrun (or srun) started every rank: rank 0 leads
        return _preprocess_launched(plan, parent_run_id, shard_tokens, upload)
    return _claim_and_build(plan, parent_run_id, shard_tokens, upload)


def _claim_and_build(plan: Plan, parent_run_id: str | None, shard_tokens: int | None, upload: bool | None,
                     announce=None) -> PreprocessResult:
    """Reuse the plan's finished store, else build it (or resume it) under the claim; `announce(message)` tells the
    other ranks of a launched world what rank 0 decided, before any extraction."""
    with claims.claim(STAGE, plan.store_fingerprint, f"preprocess of {plan.model_name}/{plan.organism_name}"):
        reused = reuse_store(plan)
        if reused is not None:
            if announce:
                announce({"result": reused})
            return reused
        return _build(plan, parent_run_id, shard_tokens, upload, announce)


def launched_world(pp: PreprocessingConfig) -> int:
    """The world size when a launcher outside Lightning (torchrun, or srun with torchrun's variables) started
    every rank of a DDP extraction, else 1."""
    if not pp.strategy.startswith("ddp") or pp.strategy.startswith("ddp_spawn") or os.environ.get(_ENV_RUN):
        return 1
    return int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get("MASTER_ADDR") else 1


def _preprocess_launched(plan: Plan, parent_run_id: str | None, shard_tokens: int | None,
                         upload: bool | None) -> PreprocessResult:
    """One rank of a DDP world started from outside: rank 0 claims, reuses or plans the store and opens the run, then
    tells the others (a broadcast) where to write; every rank extracts its shards (shard k to rank k % world), and
    rank 0 writes the manifest last, once every rank's shards are on disk."""
    import torch.distributed as dist

    if not dist.is_initialized():  # Lightning's DDP strategy then uses this process group as it is
        dist.init_process_group("nccl" if plan.cfg.preprocessing.accelerator == "gpu" else "gloo")
    said: list[dict] = []

    def announce(message: dict) -> None:
        dist.broadcast_object_list([message], src=0)
        said.append(message)

    if dist.get_rank() == 0:
        try:
            result = _claim_and_build(plan, parent_run_id, shard_tokens, upload, announce)
        except BaseException as e:
            if not said:  # the others wait for a word from rank 0: the error, so they stop too
                announce({"error": f"{type(e).__name__}: {e}"})
            raise
        if "result" not in said[0]:  # built: the others wait for the finished store's result
            dist.broadcast_object_list([result], src=0)
        return result
    message: list = [None]
    dist.broadcast_object_list(message, src=0)
    if "error" in message[0]:
        raise StoreError(f"rank 0 could not preprocess: {message[0]['error']}")
    if "result" in message[0]:
        return message[0]["result"]
    root = Path(message[0]["root"])
    run = tracking.StageRun(message[0]["run_id"])
    _run_passes(plan, StoreWriter(root).read_plan(), load_sequences(plan.cfg, plan.tokenizer), root,
                _uploader(run, root) if message[0]["upload"] else None, run.run_id)
    final: list = [None]
    dist.broadcast_object_list(final, src=0)  # rank 0's result, once its manifest is written
    return final[0]


def reuse_store(plan: Plan) -> PreprocessResult | None:
    """The plan's FINISHED store, verified; a run whose store is missing or broken (or older than this process
    under `preprocessing.rebuild=true`) is marked FAILED with the reason and never reused or resumed again."""
    fp = plan.store_fingerprint
    while (done := tracking.find_finished(STAGE, fp)) is not None:
        if plan.cfg.preprocessing.rebuild and done.info.start_time < _STARTED_MS:
            tracking.abandon(done.info.run_id, "rebuilt on request (preprocessing.rebuild=true)")
            _say(f"preprocess run {done.info.run_id} marked FAILED: rebuilding its store on request")
            continue
        try:
            folder, fetch = store_source(done.info.run_id)
            store = ActivationStore.open(folder, fetch=fetch)
        except StoreError as e:
            tracking.abandon(done.info.run_id, f"store unusable: {e}")
            _say(f"preprocess run {done.info.run_id} marked FAILED (its store is unusable: {str(e)[:200]}); "
                 f"building the store again")
            continue
        return PreprocessResult(done.info.run_id, str(store.root), sum(store.n_tokens(d) for d in store.datasets),
                                True, fp, _store_bytes(store.manifest))
    return None


def _say(msg: str) -> None:
    print(f"[diffgame] {msg}", file=sys.stderr, flush=True)


def _build(plan: Plan, parent_run_id: str | None, shard_tokens: int | None, upload: bool | None,
           announce=None) -> PreprocessResult:
    """A new (or resumed) preprocess run that writes the store."""
    cfg, fp, layers, tokenizer = plan.cfg, plan.store_fingerprint, plan.layers, plan.tokenizer
    _check_organism_tokenizer(plan)
    skipped: dict[str, int] = {}
    sequences = load_sequences(cfg, tokenizer, skipped)
    if skipped:
        print(f"skipped chats the chat template refuses: {skipped}", file=sys.stderr)
    resumable = tracking.find_resumable(STAGE, fp)
    tags = {tracking.TAG_MODEL: cfg.model.name, tracking.TAG_ORGANISM: cfg.organism.name,
            tracking.TAG_VARIANT: cfg.organism.variant}
    params = {"layers": layers, "dtype": cfg.preprocessing.dtype, "context_length": cfg.preprocessing.context_length,
              "batch_size": cfg.preprocessing.batch_size, "datasets": ",".join(sequences),
              "sequential": cfg.preprocessing.sequential, "devices": cfg.preprocessing.devices,
              **{f"skipped_chats.{name}": n for name, n in skipped.items()}}
    with tracking.stage_run(STAGE, fp=fp, tags=tags, experiment=cfg.tracking.experiment,
                            run_name=f"preprocess-{cfg.model.name}-{cfg.organism.name}", params=params,
                            parent_run_id=parent_run_id,
                            resume_run_id=resumable.info.run_id if resumable else None) as run:
        local = run.artifact_dir
        upload = local is None if upload is None else upload
        root = _working_root(run, local, upload)
        itemsize = torch.finfo(DTYPES[cfg.preprocessing.dtype]).bits // 8
        shards = shard_plan(plan, root, sequences, shard_tokens or max(256, SHARD_BYTES // (plan.d_model * itemsize)))
        pending = _pending_parts(shards, root)
        require_space({root: _pending_bytes(pending, len(layers), plan.d_model, itemsize)},
                      f"the activation store of {cfg.organism.name} on {cfg.model.name}",
                      "free space there, point the artifacts at a larger disk (a tracking store whose artifact root "
                      "is elsewhere), or store fewer tokens (dataset.sources.<name>.max_samples, "
                      "preprocessing.layers)")
        uploader = _uploader(run, root) if upload else None
        todo = sum(n for n, parts in pending if parts)  # a resumed run's rate counts only what this attempt extracts
        if announce:
            announce({"run_id": run.run_id, "root": str(root), "upload": uploader is not None})
        t0 = time.perf_counter()
        _run_passes(plan, shards, sequences, root, uploader, run.run_id)
        seconds = time.perf_counter() - t0
        manifest = StoreWriter(root).finalize(shards, {"run_id": run.run_id})
        if uploader is not None:
            uploader(["plan.json", "manifest.json"])  # the manifest goes last
        n_tokens = sum(d["n_tokens"] for d in manifest["datasets"].values())
        n_bytes = _store_bytes(manifest)
        metrics = {"preprocess/tokens": n_tokens, "preprocess/bytes": n_bytes, "preprocess/seconds": seconds,
                   "preprocess/tokens_per_s": todo / max(seconds, 1e-9), "preprocess/resumed_tokens": n_tokens - todo}
        for name, d in manifest["datasets"].items():
            metrics[f"preprocess/{name}/tokens"] = d["n_tokens"]
            metrics[f"preprocess/{name}/sequences"] = d["n_sequences"]
        run.log_metrics(metrics)
        run.log_params({"store": str(root) if not upload else "artifacts:store"})
        store_path = str(root) if not upload else _settle_staging(run.run_id, root, local)
    return PreprocessResult(run.run_id, store_path, n_tokens, False, fp, n_bytes)


def _settle_staging(run_id: str, root: Path, local: Path | None) -> str:
    """The uploaded store's local path once its staging folder is dealt with: gone when the artifacts are local (they
    hold it), else moved into this machine's store cache as the run's cached copy (left in place if one is there)."""
    from diffgame.tracking.shardcache import ShardCache

    if local is not None:
        shutil.rmtree(root.parent, ignore_errors=True)
        return str(local / STORE)
    cached = ShardCache(run_id, STORE).adopt(root)
    if cached is None:
        return str(root)
    shutil.rmtree(root.parent, ignore_errors=True)
    return str(cached)


TOKEN_BYTES = 4 + 4 + 1 + 8
"""Bytes per token of a shard's token file: input_ids and positions (int32), roles (uint8), sequence_ids (int64)."""


def _pending_parts(shards: dict, root: Path) -> list[tuple[int, list[str]]]:
    """Each planned shard's token count and the parts (tokens, base, organism) it still misses on disk."""
    pending = PendingParts(root, list(PARTS))
    return [(sh["n_tokens"], pending(name, sh["name"])) for name, entries in shards["shards"].items()
            for sh in entries]


def _pending_bytes(pending: list[tuple[int, list[str]]], n_layers: int, d_model: int, itemsize: int) -> int:
    """Bytes the missing parts will write: token files, or one model's activations at every layer."""
    per_token = {"tokens": TOKEN_BYTES, **{role: n_layers * d_model * itemsize for role in PARTS if role != "tokens"}}
    return sum(n * per_token[part] for n, parts in pending for part in parts)


def world_rank_from_env() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def _store_bytes(manifest: dict) -> int:
    return sum(f["bytes"] for d in manifest["datasets"].values() for s in d["shards"] for f in s["files"].values())


def _working_root(run, local: Path | None, upload: bool) -> Path:
    """Where shards are written: the run's artifact dir in place, or a staging dir that is uploaded."""
    if not upload:
        return local / STORE
    root = Path(tempfile.mkdtemp(prefix="diffgame-store-")) / STORE
    if run.resumed:  # bring back the shards an interrupted run already uploaded
        import mlflow

        try:
            mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path=STORE, dst_path=str(root.parent),
                                                tracking_uri=tracking.resolve_uri())
        except Exception:
            pass  # nothing uploaded yet
    root.mkdir(parents=True, exist_ok=True)
    return root


def _uploader(run, root: Path):
    def upload(rels: list[str]) -> None:
        for rel in rels:
            parent = str(Path(STORE, rel).parent)
            run.log_artifact(root / rel, parent)

    return upload


def _run_passes(plan: Plan, shards: dict, sequences, root: Path, uploader, run_id: str) -> None:
    """Paired: one pass with both models. Sequential: base (and tokens) first, then organism."""
    os.environ[_ENV_RUN], os.environ[_ENV_STORE] = run_id, str(root)  # for ranks Lightning re-launches
    try:
        if plan.cfg.preprocessing.sequential:
            base = load_base(plan.pair)
            rows = unembedding(base.model).weight.shape[0]
            _extract(plan, shards, sequences, root, {"base": base.model}, ["tokens", "base"], uploader)
            del base
            org = load_organism(plan.pair)
            if unembedding(org.model).weight.shape[0] < rows:  # appended organism tokens are fine
                raise ModelError(f"the organism has fewer output rows ({unembedding(org.model).weight.shape[0]}) "
                                 f"than the base ({rows}); pick an organism finetuned from this base model")
            _extract(plan, shards, sequences, root, {"organism": org.model}, ["organism"], uploader)
        else:
            base, org = load_pair(plan.pair)
            _extract(plan, shards, sequences, root, {"base": base.model, "organism": org.model}, list(PARTS),
                     uploader)
    finally:
        os.environ.pop(_ENV_RUN, None)
        os.environ.pop(_ENV_STORE, None)


def _extract(plan: Plan, shards: dict, sequences, root: Path, models: dict, parts: list[str], uploader) -> None:
    cfg = plan.cfg
    pending_parts = PendingParts(root, parts)
    batches = PlannedBatches(shards, sequences, plan.tokenizer.pad_token_id or 0, pending_parts)
    writer = ShardWriter(root, pending_parts, uploader, command=plan.command())
    progress = TokenProgress(batches, desc=f"preprocess {'+'.join(models)}")
    module = PairedExtraction(models, plan.layers, DTYPES[cfg.preprocessing.dtype],
                              move_models=not cfg.model.device_map)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infer the batch indices|LeafSpec|litlogger).*")
        _trainer(cfg.preprocessing, [writer, progress]).predict(module, dataloaders=loader, return_predictions=False)


def _extract_only(plan: Plan) -> PreprocessResult:
    """A DDP rank that Lightning re-launched: write this rank's shards into the store rank 0 planned."""
    root = Path(os.environ[_ENV_STORE])
    shards = StoreWriter(root).read_plan()
    sequences = load_sequences(plan.cfg, plan.tokenizer)
    _run_passes(plan, shards, sequences, root, None, os.environ[_ENV_RUN])
    return PreprocessResult(os.environ[_ENV_RUN], str(root), 0, False, plan.store_fingerprint)
