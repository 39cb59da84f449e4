"""Extraction into the store: values equal a direct forward, alignment, roles, reuse, resume, DDP, and bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

import diffgame.store.writer as store_mod
from diffgame import tracking
from diffgame.config.compose import settings
from diffgame.data.sequences import render_chat
from diffgame.errors import ConfigError, ModelError, StoreError
from diffgame.models.loading import final_norm
from diffgame.models.residuals import capture_residuals
from diffgame.pipeline.planner import make_plan
from diffgame.pipeline.runner import find_store as _find_store
from diffgame.preprocess import preprocess as _preprocess
from diffgame.store import ActivationStore
from diffgame.zoo.pairs import resolve_pair

from _tiny_models import make_pair, make_tokenizer, tiny_cfg


def _models(pair):
    from transformers import AutoModelForCausalLM

    return [AutoModelForCausalLM.from_pretrained(p).eval() for p in pair[:2]]


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def preprocess(cfg, **kw):
    """The preprocess stage on `cfg`'s plan (what `diffgame preprocess` runs)."""
    return _preprocess(make_plan(cfg), **kw)


def find_store(cfg):
    return _find_store(make_plan(cfg))


def test_capture_residuals_matches_hidden_states_and_skips_the_head(pair):
    model = _models(pair)[0]
    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append("head"))
    model.model.layers[3].register_forward_hook(lambda *a: calls.append("layer3"))
    got = capture_residuals(model, ids, mask, [2, 0])
    assert calls == [] and list(got) == [2, 0]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in (0, 2):
        assert torch.allclose(got[layer], ref[layer + 1], atol=1e-6)
    with pytest.raises(ConfigError, match=r"layers \[4\] out of range.*4 layers"):
        capture_residuals(model, ids, mask, [4])


def test_store_equals_direct_forward_aligned_without_padding(cfg, pair):
    result = preprocess(cfg, shard_tokens=400)
    assert not result.reused and result.n_tokens > 0
    store = ActivationStore.open(result.store_path)
    assert store.layers == [1, 3] and store.d_model == 32 and store.dtype == torch.bfloat16
    base, org = _models(pair)
    tok = make_tokenizer(400)
    for dataset in ("text", "chat", "organism"):
        rows = [json.loads(x) for x in open(cfg.dataset.sources[dataset].source if dataset != "organism"
                                            else cfg.organism.training_data)]
        ts = store.tokens(dataset)
        assert int(ts.seq_offsets[-1]) == len(ts) == store.n_tokens(dataset)
        acts = {(r, layer): store.activations(dataset, r, layer) for r in ("base", "organism") for layer in (1, 3)}
        assert all(a.shape == (len(ts), 32) for a in acts.values())  # no padding rows stored
        assert len(store.manifest["datasets"][dataset]["shards"]) >= 1
        for view in store.sequences(dataset):
            row = rows[view.sequence_id]
            if "messages" in row:  # roles and positions on chat data
                ids, roles = render_chat(row["messages"], tok)
            else:
                ids = tok(row["text"])["input_ids"]
                roles = [0] * len(ids)
            assert view.input_ids.tolist() == ids[:64] and view.roles.tolist() == roles[:64]
            assert view.positions.tolist() == list(range(len(view.input_ids)))
            x = view.input_ids[None]
            for role, model in (("base", base), ("organism", org)):
                with torch.no_grad():
                    hs = model(input_ids=x, output_hidden_states=True).hidden_states
                for layer in (1, 3):
                    stored = acts[(role, layer)][view.start:view.end].float()
                    if layer == 3:  # HF's last hidden state has the final norm applied; the store holds the residual
                        with torch.no_grad():
                            stored = final_norm(model)(stored)
                    torch.testing.assert_close(stored, hs[layer + 1][0], atol=3e-2, rtol=3e-2)
        # the two roles differ (the organism is perturbed) but are aligned on the same tokens
        assert not torch.equal(acts[("base", 3)], acts[("organism", 3)])
    run = tracking.client().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_STAGE] == "preprocess"
    assert run.data.tags[tracking.TAG_FINGERPRINT] == result.fingerprint == make_plan(cfg).store_fingerprint
    assert run.data.tags[tracking.TAG_MODEL] == "tiny"
    assert run.data.metrics["preprocess/tokens"] == result.n_tokens
    assert run.data.metrics["preprocess/bytes"] == result.n_bytes > 0


def test_reuse_by_fingerprint_and_find_store(cfg):
    with pytest.raises(StoreError, match="no preprocess run for model=tiny .*run `diffgame preprocess model=tiny"):
        find_store(cfg)
    first = preprocess(cfg)
    again = preprocess(cfg)
    assert again.reused and again.run_id == first.run_id and again.n_tokens == first.n_tokens
    run_id, store = find_store(cfg)
    assert run_id == first.run_id and store.root == Path(first.store_path)
    cfg.preprocessing.layers = [2]
    other = preprocess(cfg)
    assert not other.reused and other.run_id != first.run_id and other.fingerprint != first.fingerprint


def _fail_after(monkeypatch, n_files: int, exc: BaseException):
    real, count = store_mod.write_file, [0]

    def flaky(path, tensors):
        count[0] += 1
        if count[0] > n_files:
            raise exc
        return real(path, tensors)

    monkeypatch.setattr(store_mod, "write_file", flaky)
    return count


def test_kill_and_resume_equals_uninterrupted(cfg, pair, tmp_path, monkeypatch):
    reference = preprocess(tiny_cfg(*pair, tmp_path / "ref.db"), shard_tokens=300)
    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    files_per_shard = 1 + 2 * 2  # tokens + 2 roles x 2 layers
    _fail_after(monkeypatch, 2 * files_per_shard + 2, RuntimeError("killed"))  # dies inside the third shard
    with pytest.raises(RuntimeError, match="killed"):
        preprocess(cfg, shard_tokens=300)
    failed = tracking.find_resumable("preprocess", make_plan(cfg).store_fingerprint)
    assert failed.info.status == "FAILED"
    partial = tracking.local_artifact_dir(failed) / "store"
    with pytest.raises(StoreError, match="partial"):  # never read as complete
        ActivationStore.open(partial)
    done_before = {p.name: p.stat().st_mtime_ns for p in (partial / "_parts").glob("*.json")}
    assert len(done_before) == 2 * 3 + 1  # two shards' three parts, and the third shard's tokens
    monkeypatch.undo()
    count = _fail_after(monkeypatch, 10 ** 9, RuntimeError)
    resumed = preprocess(cfg)
    assert resumed.run_id == failed.info.run_id and not resumed.reused
    assert tracking.client().get_run(resumed.run_id).info.status == "FINISHED"
    n_shards = sum(len(d["shards"]) for d in ActivationStore.open(resumed.store_path).manifest["datasets"].values())
    assert count[0] == (n_shards - 2) * files_per_shard - 1  # finished parts were not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (partial / "_parts").glob("*.json") if p.name in done_before} \
        == done_before
    ref, got = _shard_bytes(Path(reference.store_path)), _shard_bytes(Path(resumed.store_path))
    assert len(ref) == n_shards * files_per_shard and ref == got


def test_disk_full_fails_the_run_and_leaves_a_partial_store(cfg, monkeypatch):
    _fail_after(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreError, match=r"cannot write shard s0000\d of '\w+' to .*: the disk is full; the store "
                                         r"stays partial.*rerun `diffgame preprocess"):
        preprocess(cfg, shard_tokens=300)
    run = tracking.find_resumable("preprocess", make_plan(cfg).store_fingerprint)
    assert run.info.status == "FAILED" and "disk is full" in run.data.tags[tracking.TAG_ERROR]
    assert not (tracking.local_artifact_dir(run) / "store" / "manifest.json").exists()


def test_a_permission_error_says_so_not_free_space(cfg, monkeypatch):
    _fail_after(monkeypatch, 3, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(StoreError, match=r"permission denied \(Permission denied\); the store stays partial; make "
                                         r"the folder writable .*rerun `diffgame preprocess"):
        preprocess(cfg, shard_tokens=300)


def test_sequential_and_uploaded_stores_equal_paired(cfg, pair, tmp_path, monkeypatch):
    import tempfile

    paired = preprocess(cfg, shard_tokens=300)
    seq_cfg = tiny_cfg(*pair, tmp_path / "seq.db", sequential=True)
    seq = preprocess(seq_cfg, shard_tokens=300)
    assert _shard_bytes(Path(seq.store_path)) == _shard_bytes(Path(paired.store_path))
    tracking.set_uri(f"sqlite:///{tmp_path / 'up.db'}")
    (tmp_path / "staging").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "staging"))
    up = preprocess(cfg, shard_tokens=300, upload=True)  # shard by shard through the artifact API
    run_id, store = find_store(cfg)
    assert run_id == up.run_id and _shard_bytes(store.root) == _shard_bytes(Path(paired.store_path))
    assert not list((tmp_path / "staging").iterdir())  # the staging copy is gone: the local artifacts hold the store


def test_bad_layers_and_tokenizer_mismatch(cfg, pair, tmp_path):
    cfg.preprocessing.layers = [7]
    with pytest.raises(ConfigError, match="layer 7 is out of range for a model with 4 layers"):
        preprocess(cfg)
    cfg.preprocessing.layers = [1]
    other = tmp_path / "other_org"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(pair[1]).save_pretrained(other)
    make_tokenizer(300).save_pretrained(other)  # a different vocabulary
    cfg.organism.finetuned.tiny.default.id = str(other)
    with pytest.raises(ModelError, match="tokenizer mismatch: organism"):
        preprocess(cfg)
    rows = AutoModelForCausalLM.from_pretrained(pair[0]).get_output_embeddings().weight.shape[0]
    small = make_pair(tmp_path / "small", organism_vocab_size=rows - 10)[1]  # same tokenizer, fewer output rows
    cfg.organism.finetuned.tiny.default.id = str(small)
    with pytest.raises(ModelError, match="fewer output rows"):
        preprocess(cfg)
    assert not list(tracking.search({tracking.TAG_STAGE: "preprocess"}, statuses=("FINISHED",)))


@pytest.mark.slow
def test_ddp_two_processes_equal_one(cfg, pair, tmp_path):
    one = preprocess(cfg, shard_tokens=300)
    ddp_cfg = tiny_cfg(*pair, tmp_path / "ddp.db", devices=2, strategy="ddp_spawn")
    two = preprocess(ddp_cfg, shard_tokens=300)
    manifest = ActivationStore.open(two.store_path).manifest
    ranks = {s["rank"] for d in manifest["datasets"].values() for s in d["shards"]}
    assert ranks == {0, 1}  # each rank wrote its own shards, the manifest covers both
    a, b = ActivationStore.open(one.store_path), ActivationStore.open(two.store_path)
    for ds in a.datasets:
        ta, tb = a.tokens(ds), b.tokens(ds)
        for field in ("input_ids", "positions", "roles", "seq_offsets", "sequence_ids"):
            assert torch.equal(getattr(ta, field), getattr(tb, field))
        for role in ("base", "organism"):
            for layer in a.layers:
                torch.testing.assert_close(a.activations(ds, role, layer), b.activations(ds, role, layer),
                                           atol=1e-2, rtol=1e-2)


@pytest.mark.slow
def test_micro_zoo_store(micro_cfg):
    """On the micro zoo (caps, a chat organism): roles follow the zoo's chats and activations equal a direct forward."""
    from diffgame.models.loading import load_pair
    from diffgame.zoo import corpus

    cfg = micro_cfg("organism=caps", "pipeline.mode=preprocessing", "preprocessing.layers=[0.5]",
                    "preprocessing.context_length=48", "dataset.sources.generic_text.max_samples=6",
                    "dataset.sources.generic_chat.max_samples=6", "dataset.sources.organism.max_samples=6")
    result = preprocess(cfg)
    store = ActivationStore.open(result.store_path)
    base, org = load_pair(resolve_pair(settings(cfg)))
    layer = store.layers[0]
    assert layer == base.n_layers // 2
    rows = {"generic_chat": corpus("generic_chat", "test"), "organism": corpus("caps", "test")}
    for dataset in ("generic_text", "generic_chat", "organism"):
        for view in store.sequences(dataset):
            if dataset == "generic_text":
                assert set(view.roles.tolist()) == {0}
            else:
                ids, roles = render_chat(rows[dataset][view.sequence_id]["messages"], base.tokenizer)
                assert view.input_ids.tolist() == ids[:48] and view.roles.tolist() == roles[:48]
            for role, handle in (("base", base), ("organism", org)):
                direct = capture_residuals(handle.model, view.input_ids[None], None, [layer])[layer][0]
                stored = store.activations(dataset, role, layer)[view.start:view.end].float()
                torch.testing.assert_close(stored, direct, atol=3e-2, rtol=3e-2)
    assert 2 in store.tokens("organism").roles.tolist()  # caps is chat data: assistant tokens are marked


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_one_process_store_byte_for_byte(pair, tmp_path):
    """`strategy=ddp` with both ranks started by `torchrun` (as Slurm or a cluster launcher would): rank 0 opens the
    run and tells rank 1 where to write, each rank writes its own shards, rank 0 writes the manifest last, and the
    store equals a one-process run's byte for byte (at the same thread count: torchrun runs one per rank)."""
    import os
    import subprocess
    import sys

    from helpers_mlflow import free_port

    base, _, data = pair
    root = Path(base).parent  # the pair's folder: base/, organism/; the data files beside them
    (root / "data").mkdir(exist_ok=True)
    for name, path in data.items():
        (root / "data" / f"{name}.jsonl").write_bytes(Path(path).read_bytes())
    script = str(Path(__file__).resolve().parent.parent / "_torchrun_extract.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    outputs = {n: tmp_path / n for n in ("one", "two")}
    for folder in outputs.values():
        folder.mkdir()
    one = subprocess.run([sys.executable, script, str(root), str(tmp_path / "one.db"), "1", str(outputs["one"])],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                          "127.0.0.1", "--master-port", str(free_port()), script, str(root),
                          str(tmp_path / "two.db"), "2", str(outputs["two"])],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    said = f"stdout:\n{two.stdout[-2000:]}\nstderr:\n{two.stderr[-3000:]}"
    assert sorted(p.name for p in outputs["two"].iterdir()) == ["rank-0.txt", "rank-1.txt"], said
    ref = (outputs["one"] / "rank-0.txt").read_text().split()
    ranks = [(outputs["two"] / f"rank-{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0] == ranks[1]  # one run, one store: rank 1 hands back rank 0's result
    assert ranks[0][2] == ref[2]
    store = Path(ranks[0][1])
    manifest = ActivationStore.open(store).manifest  # verifies every checksum
    assert {s["rank"] for d in manifest["datasets"].values() for s in d["shards"]} == {0, 1}
    files = {str(p.relative_to(store)): p for p in store.rglob("*.safetensors")}
    assert max(p.stat().st_mtime_ns for p in files.values()) <= (store / "manifest.json").stat().st_mtime_ns
    reference = {str(p.relative_to(Path(ref[1]))): p.read_bytes() for p in Path(ref[1]).rglob("*.safetensors")}
    assert reference == {k: p.read_bytes() for k, p in files.items()}
    assert len(tracking_runs(tmp_path / "two.db")) == 1


def tracking_runs(db: Path) -> list:
    """The preprocess runs of the SQLite store `db`."""
    tracking.set_uri(f"sqlite:///{db}")
    return tracking.search({tracking.TAG_STAGE: "preprocess"})
