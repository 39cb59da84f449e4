"""Reliability (issue 21): no empty store finishes, broken stores are rebuilt, interrupted runs are named, live runs
are never shared, bring-your-own data is checked before any run, and real processes (kill -9, two at once)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from diffgame import tracking
from diffgame.errors import DataError, StoreError
from diffgame.pipeline.planner import make_plan
from diffgame.pipeline.runner import find_store
from diffgame.preprocess import preprocess as _preprocess
from diffgame.preprocess import stage as stage_mod
from diffgame.store import ActivationStore, StoreWriter
from diffgame.tracking import claims


def preprocess(cfg, **kw):
    return _preprocess(make_plan(cfg), **kw)


def _runs(stage: str, fp: str) -> list:
    return tracking.search({tracking.TAG_STAGE: stage, tracking.TAG_FINGERPRINT: fp})


def _store_bytes(root) -> dict[str, bytes]:
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


# --- 1. a store with no tokens never finishes ------------------------------------------------------------------
def test_a_store_with_no_tokens_never_finalizes(tmp_path):
    plan = {"shards": {"text": [{"name": "s00000", "n_tokens": 0, "n_sequences": 0}]}}
    writer = StoreWriter(tmp_path)
    for part in ("tokens", "base", "organism"):
        writer.write_part("text", "s00000", part, {}, {})
    with pytest.raises(StoreError, match=r"would hold no tokens \(datasets: text\); check the dataset sources"):
        writer.finalize(plan, {})
    assert not (tmp_path / "manifest.json").exists()


# --- 2. a finished run whose store is gone or broken is marked FAILED and rebuilt -------------------------------
@pytest.mark.parametrize("damage", ["manifest", "folder", "byte"])
def test_a_finished_run_with_a_broken_store_is_failed_and_rebuilt(cfg, damage):
    first = preprocess(cfg)
    reference = _store_bytes(first.store_path)
    root = Path(first.store_path)
    if damage == "manifest":
        (root / "manifest.json").unlink()
    elif damage == "folder":
        shutil.rmtree(root)
    else:
        victim = sorted(root.rglob("*.safetensors"))[-1]
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
    again = preprocess(cfg)
    assert not again.reused and again.run_id != first.run_id
    old = tracking.client().get_run(first.run_id)
    assert old.info.status == "FAILED" and old.data.tags[tracking.TAG_ERROR].startswith("store unusable: ")
    fp = make_plan(cfg).store_fingerprint
    assert tracking.find_resumable("preprocess", fp) is None  # never resumed either
    assert [r.info.run_id for r in _runs("preprocess", fp) if r.info.status == "FINISHED"] == [again.run_id]
    assert _store_bytes(again.store_path) == reference
    assert preprocess(cfg).reused  # and the rebuilt one is reused from now on


def test_diffing_mode_marks_a_broken_store_failed_and_names_the_command(cfg):
    cfg.overrides = ["zoo.size=micro"]
    first = preprocess(cfg)
    (Path(first.store_path) / "manifest.json").unlink()
    with pytest.raises(StoreError, match=rf"the store of preprocess run {first.run_id} "
                                         r"is unusable \(.*\); the run is now marked FAILED; run `diffgame preprocess "
                                         r"model=tiny .* zoo.size=micro` to build it again"):
        find_store(make_plan(cfg))
    assert tracking.client().get_run(first.run_id).info.status == "FAILED"
    assert not preprocess(cfg).reused


def test_rebuild_flag_rebuilds_a_store_made_before_this_process_only(cfg, monkeypatch):
    first = preprocess(cfg)
    monkeypatch.setattr(stage_mod, "_STARTED_MS", int(time.time() * 1000) + 1)  # "this process" starts now
    cfg.preprocessing.rebuild = True
    rebuilt = preprocess(cfg)
    assert not rebuilt.reused and rebuilt.run_id != first.run_id
    old = tracking.client().get_run(first.run_id)
    assert old.info.status == "FAILED" and "rebuilt on request" in old.data.tags[tracking.TAG_ERROR]
    assert preprocess(cfg).run_id == rebuilt.run_id  # made by this process: reused, not rebuilt again
    assert _store_bytes(rebuilt.store_path) == _store_bytes(first.store_path)
    assert "preprocessing.rebuild" not in make_plan(cfg).command()


# --- 3. an interrupted run is named, with the command that resumes it ----------------------------------------------
def test_diffing_mode_names_an_interrupted_preprocess_run(cfg, monkeypatch):
    import diffgame.store.writer as store_mod

    real = store_mod.write_file
    calls = [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "write_file", flaky)
    with pytest.raises((KeyboardInterrupt, SystemExit)):  # Lightning ends a Ctrl-C with sys.exit(1)
        preprocess(cfg, shard_tokens=300)
    monkeypatch.undo()
    killed = tracking.find_resumable("preprocess", make_plan(cfg).store_fingerprint)
    assert killed.info.status == "KILLED"
    with pytest.raises(StoreError, match=rf"preprocess run {killed.info.run_id} for this store did not finish "
                                         r"\(KILLED\); run `diffgame preprocess model=tiny .*` to resume it"):
        find_store(make_plan(cfg))


# --- 4. a run a live process holds is never shared --------------------------------------------------------------
def _lease(run_id: str, host: str, pid: int, seconds: float) -> None:
    tracking.client().set_tag(run_id, tracking.TAG_LEASE, f"{host}:{pid}:{time.time() + seconds:.0f}")


def _open_run(fp: str) -> str:
    """A RUNNING preprocess run with fingerprint `fp`, as another process would leave it."""
    c = tracking.client()
    exp = tracking.experiment_id("diffgame-test")
    return c.create_run(exp, tags={tracking.TAG_STAGE: "preprocess", tracking.TAG_FINGERPRINT: fp}).info.run_id


def test_leases_tell_live_runs_from_abandoned_ones(cfg):
    import socket

    fp = make_plan(cfg).store_fingerprint
    run_id = _open_run(fp)
    assert tracking.find_resumable("preprocess", fp).info.run_id == run_id  # no lease: an older version's run
    _lease(run_id, "elsewhere", 1, 60)
    assert tracking.find_live("preprocess", fp).info.run_id == run_id
    assert tracking.find_resumable("preprocess", fp) is None
    with pytest.raises(StoreError, match=rf"preprocess run {run_id} for this store is still running in another "
                                         r"process; wait for it to finish"):
        find_store(make_plan(cfg))
    _lease(run_id, "elsewhere", 1, -1)  # expired: its process stopped refreshing it
    assert tracking.find_live("preprocess", fp) is None
    assert tracking.find_resumable("preprocess", fp).info.run_id == run_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease(run_id, socket.gethostname(), dead.pid, 60)  # unexpired, but its process on this host is gone
    assert tracking.find_live("preprocess", fp) is None


def test_a_waiting_process_reuses_what_the_live_one_finished(cfg):
    plan = make_plan(cfg)
    fp = plan.store_fingerprint
    run_id = _open_run(fp)
    _lease(run_id, "elsewhere", 1, 60)

    finished = threading.Event()

    def finish():  # the other machine's process finishes a moment later
        time.sleep(0.5)
        tracking.client().set_terminated(run_id, "FINISHED")
        finished.set()

    threading.Thread(target=finish).start()
    assert tracking.find_live("preprocess", fp) is not None  # so the wait below has something to wait for
    claims.wait_for_live("preprocess", fp, "preprocess", poll=0.1)
    assert finished.is_set()  # it returned only once the live run had finished
    assert tracking.find_finished("preprocess", fp).info.run_id == run_id


def test_a_stage_run_holds_a_lease_while_it_runs(cfg):
    fp = tracking.fingerprint({"lease": time.time()})
    with tracking.stage_run("diff", fp=fp, tags={}, experiment="diffgame-test") as run:
        held = tracking.client().get_run(run.run_id).data.tags[tracking.TAG_LEASE]
        host, pid, until = held.rsplit(":", 2)
        assert int(pid) == os.getpid() and float(until) > time.time() + tracking.LEASE_S / 2
    assert tracking.find_live("diff", fp) is None


# --- 9. bring-your-own data is checked before any run --------------------------------------------------------------
@pytest.mark.parametrize("row, message", [
    ({"text": None}, r"bad.jsonl:2: 'text' must be a non-empty string, got 'None'"),
    ({"messages": "a string"}, r"bad.jsonl:2: 'messages' must be a non-empty list of .* got 'a string'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"bad.jsonl:2: each message must be an object with a string "
                                                     r"'content'"),
])
def test_bad_organism_data_fails_before_any_zoo_run(micro_cfg, tmp_path, row, message):
    from diffgame.config.compose import settings
    from diffgame.zoo.build import ensure_organism
    from diffgame.zoo.sizes import get_size

    fmt = "documents" if "text" in row else "chat"
    good = {"text": "fine"} if fmt == "documents" else {"messages": [{"role": "user", "content": "hi"},
                                                                     {"role": "assistant", "content": "yo"}]}
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    cfg = settings(micro_cfg("organism=tea_lover", f"organism.zoo.data={data}", f"organism.zoo.format={fmt}"))
    before = len(tracking.search({tracking.TAG_STAGE: "zoo"}))
    with pytest.raises(DataError, match=message):
        ensure_organism(get_size("micro"), cfg.organism, progress=False)
    assert len(tracking.search({tracking.TAG_STAGE: "zoo"})) == before


# --- 10. a resumed run's rate counts only what it extracted --------------------------------------------------------
def test_resumed_tokens_are_not_counted_in_the_rate(cfg, monkeypatch):
    import diffgame.store.writer as store_mod

    real, calls = store_mod.write_file, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 6:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "write_file", flaky)
    with pytest.raises(RuntimeError):
        preprocess(cfg, shard_tokens=300)
    monkeypatch.undo()
    done = preprocess(cfg, shard_tokens=300)
    metrics = tracking.client().get_run(done.run_id).data.metrics
    assert 0 < metrics["preprocess/resumed_tokens"] < metrics["preprocess/tokens"] == done.n_tokens
    assert metrics["preprocess/tokens_per_s"] == pytest.approx(
        (metrics["preprocess/tokens"] - metrics["preprocess/resumed_tokens"]) / metrics["preprocess/seconds"])


# --- real processes ------------------------------------------------------------------------------------------------
def _copy_zoo_store(zoo_uri: str, dst: Path) -> str:
    """A copy of the session's micro-zoo database (its zoo runs' artifacts stay where they are)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(zoo_uri.removeprefix("sqlite:///"), dst / "mlflow.db")
    return f"sqlite:///{dst / 'mlflow.db'}"


KILL_SCRIPT = """
import sys
from diffgame import tracking
from diffgame.config.compose import compose
from diffgame.pipeline.planner import make_plan
from diffgame.preprocess import preprocess
tracking.set_uri(sys.argv[1])
overrides = ["zoo.size=micro", "organism=caps", "preprocessing.layers=[1]", "preprocessing.context_length=48"]
r = preprocess(make_plan(compose(overrides)), shard_tokens=64)  # a store no other test makes
print(r.run_id, r.store_path)
"""


def _extracting(uri: str, env: dict) -> subprocess.Popen:
    """`KILL_SCRIPT` in a new process, returned once its first two shards are on disk."""
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    tracking.set_uri(uri)
    deadline, parts = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        if parts is None:
            running = tracking.search({tracking.TAG_STAGE: "preprocess"}, statuses=("RUNNING",))
            parts = tracking.local_artifact_dir(running[0]) / "store" / "_parts" if running else None
        elif len(list(parts.glob("*.organism.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the extraction finished before it could be stopped"
    return proc


def _resumes(uri: str, env: dict, run_id: str) -> str:
    """`KILL_SCRIPT` run again finishes the interrupted run `run_id`, resuming its shards; the store, verified."""
    again = subprocess.run([sys.executable, "-c", KILL_SCRIPT, uri], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed, store = again.stdout.split()[-2:]
    assert resumed == run_id
    finished = tracking.client().get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["preprocess/resumed_tokens"] > 0
    ActivationStore.open(store)  # verifies every checksum
    return store


@pytest.mark.slow
def test_kill_9_mid_extraction_resumes_into_the_uninterrupted_store(zoo_uri, tmp_path):
    """A real process killed with SIGKILL once its first shards are on disk: the next call resumes its run (its
    lease died with it) and the store equals an uninterrupted one, byte for byte."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_uri = _copy_zoo_store(zoo_uri, tmp_path / "ref")
    ref = subprocess.run([sys.executable, "-c", KILL_SCRIPT, ref_uri], capture_output=True, text=True, env=env,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_store = ref.stdout.split()[-1]

    uri = _copy_zoo_store(zoo_uri, tmp_path / "killed")
    proc = _extracting(uri, env)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = tracking.search({tracking.TAG_STAGE: "preprocess"}, statuses=("RUNNING",))[0]
    assert tracking.find_resumable("preprocess", run.data.tags[tracking.TAG_FINGERPRINT]).info.run_id == \
        run.info.run_id  # RUNNING, but its holder is dead

    store = _resumes(uri, env, run.info.run_id)
    assert _store_bytes(store) == _store_bytes(ref_store)


@pytest.mark.slow
def test_two_processes_at_once_share_one_run_per_stage(zoo_uri, tmp_path):
    """Two identical `diffgame run`s started together on one SQLite store: both exit 0, one preprocess run and one
    diff run per organism (caps and its control), the store verifies, and a log file gets few progress repaints."""
    uri = _copy_zoo_store(zoo_uri, tmp_path / "db")
    cmd = [sys.executable, "-m", "diffgame.cli", "run", "zoo.size=micro", "organism=caps", "method=[kl]",
           "preprocessing.layers=[1]", "preprocessing.context_length=40", "--tracking-uri", uri]  # a store of its own
    t0 = int(time.time() * 1000)
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), cwd=tmp_path, text=True)
             for log in logs]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    tracking.set_uri(uri)
    for stage in ("preprocess", "diff"):
        runs = [r for r in tracking.search({tracking.TAG_STAGE: stage}) if r.info.start_time >= t0]
        per_fp: dict[str, list] = {}
        for r in runs:
            per_fp.setdefault(r.data.tags[tracking.TAG_FINGERPRINT], []).append(r.info.status)
        assert len(per_fp) == 2 and all(v == ["FINISHED"] for v in per_fp.values()), (stage, per_fp)
    assert any("waiting for it" in e for e in errs), errs  # one of them waited for the other
    store_run = next(r for r in tracking.search({tracking.TAG_STAGE: "preprocess", tracking.TAG_ORGANISM: "caps"})
                     if r.info.start_time >= t0)
    ActivationStore.open(tracking.local_artifact_dir(store_run) / "store")
    assert all(e.count("\r") < 20 for e in errs), [e.count("\r") for e in errs]
    assert all("kl" in o for o in outs)


def test_a_sigterm_inside_lightning_marks_the_run_killed(tmp_path):
    """A preempted cluster job: Lightning turns SIGTERM into its SIGTERMException at the next step."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    fp = tracking.fingerprint({"sigterm": 1})
    with pytest.raises(SIGTERMException):
        with tracking.stage_run("zoo", fp=fp, tags={}, experiment="diffgame-test") as run:
            raise SIGTERMException()
    killed = tracking.client().get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[tracking.TAG_ERROR] == "SIGTERM: interrupted; run the same command again to resume"
    assert tracking.find_resumable("zoo", fp).info.run_id == run.run_id


@pytest.mark.slow
def test_a_sigterm_mid_extraction_marks_the_run_killed_and_the_next_call_resumes_it(zoo_uri, tmp_path):
    """A preempted job during preprocessing: Lightning's predict loop never checks for SIGTERM (its handler only
    sets a flag), so our handler, which Lightning calls after its own, stops it; the run closes KILLED, not RUNNING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    uri = _copy_zoo_store(zoo_uri, tmp_path / "terminated")
    proc = _extracting(uri, env)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Terminated" in err.decode(), err.decode()[-2000:]
    run = tracking.search({tracking.TAG_STAGE: "preprocess"}, statuses=("KILLED",))[0]
    assert run.data.tags[tracking.TAG_ERROR] == "SIGTERM: interrupted; run the same command again to resume"
    assert tracking.find_resumable("preprocess", run.data.tags[tracking.TAG_FINGERPRINT]).info.run_id == \
        run.info.run_id

    _resumes(uri, env, run.info.run_id)


SLEEPING_COMMAND = """
import sys, time
from diffgame import tracking
from diffgame.cli import app, main
tracking.set_uri(sys.argv[1])

@app.command()
def sleepy() -> None:
    with tracking.stage_run("diff", fp=tracking.fingerprint({"sleepy": 1}), tags={}, experiment="t") as run:
        print(run.run_id, flush=True)
        while True:  # a stage outside any Lightning loop, e.g. amplify sampling
            time.sleep(0.05)

sys.argv = ["diffgame", "sleepy"]
main()
"""


def test_a_sigterm_outside_lightning_ends_the_command_with_143_and_marks_the_run_killed(tmp_path):
    """Python's default for SIGTERM ends the process at once, leaving the run RUNNING in the UI; a stage run turns it
    into `Terminated`, the run closes KILLED (resumable) and the command says so in one line and exits 143."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-c", SLEEPING_COMMAND, uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.communicate(timeout=60)[1][-2000:]
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "marked KILLED; run the same command again to resume" in err
    tracking.set_uri(uri)
    run = tracking.client().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.TAG_ERROR] == "SIGTERM: interrupted; run the same command again to resume"
    assert tracking.find_resumable("diff", tracking.fingerprint({"sleepy": 1})).info.run_id == run_id


def test_a_stage_run_gives_back_the_sigterm_handler_it_found(tmp_path):
    """Only the open run's main thread raises on SIGTERM: after it, and around a handler someone else installed (an
    outer stage run, Lightning, the user), the process keeps what it had."""
    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = signal.getsignal(signal.SIGTERM)
    fp = tracking.fingerprint({"handler": 1})
    with tracking.stage_run("diff", fp=fp, tags={}, experiment="t"):
        assert (signal.getsignal(signal.SIGTERM) is not before) == (before is signal.SIG_DFL)
    assert signal.getsignal(signal.SIGTERM) is before

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        with tracking.stage_run("diff", fp=fp, tags={}, experiment="t"):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


# --- 7. an uncached hub id offline: one line at once -------------------------------------------------------------
@pytest.mark.timeout(60)  # a hang guard: the hub client alone retried for about a minute
def test_an_uncached_hub_id_offline_is_one_line_at_once(monkeypatch):
    from huggingface_hub import constants
    from omegaconf import OmegaConf

    from diffgame.errors import ModelError
    from diffgame.models import sources

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a refused connection: no network
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    sources.hub_reachable.cache_clear()
    try:
        mcfg = OmegaConf.create({"id": "nobody/not-a-model", "revision": None, "gguf_fallback": None, "dtype": "float32"})
        with pytest.raises(ModelError, match=r"'nobody/not-a-model' is not in the local Hugging Face cache and the hub "
                                             r"is unreachable \(offline\); .* or point model.id at a local folder"):
            sources.resolve_model(mcfg)
        assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"  # cached models: no retries either
    finally:
        sources.hub_reachable.cache_clear()
