"""Trust in a shared deployment (issue 35): nothing in a shared folder is unpickled, and a stage that would fill the
disk refuses before its work, naming the size it needs."""

from __future__ import annotations

import ast
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from diffgame import tracking
from diffgame.dictionary.train import TrainConfig, load_checkpoint, train_dictionary
from diffgame.errors import SpaceError

from _paired_store import write_store

REPO = Path(__file__).resolve().parents[2]
Usage = namedtuple("Usage", "total used free")


# --- 1. no pickle from shared folders ------------------------------------------------------------------------------
class _Planted:
    """Unpickling this creates `path`: what a crafted checkpoint in a shared folder would do on resume."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 16
    base = torch.randn(n, d, generator=g)
    org = base + 0.3 * torch.randn(n, d, generator=g)
    seqs = [(torch.randint(0, 40, (50,), generator=g).tolist(), [0] * 50) for _ in range(n // 50)]
    return write_store(tmp_path_factory.mktemp("store"), {"text": {"sequences": seqs, "base": {1: base},
                                                                    "organism": {1: org}}}, [1])


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_the_layer_trains_anew(small_store, tmp_path, capfd):
    cfg = TrainConfig(n_latents=16, k=2, steps=30, batch_size=200, checkpoint_every=10, block_tokens=200,
                      buffer_blocks=2)
    clean = train_dictionary(small_store, 1, ["text"], "delta", cfg, seed=3, workdir=tmp_path / "clean")

    folder = tmp_path / "shared" / "layer1"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"global_step": 20, "state_dict": {}, "payload": _Planted(marker)}, folder / "last.ckpt")
    assert not marker.exists()

    trained = train_dictionary(small_store, 1, ["text"], "delta", cfg, seed=3, workdir=tmp_path / "shared")
    assert not marker.exists()  # the pickle never ran
    err = capfd.readouterr().err  # the file descriptor: what a user sees, whatever replaced sys.stderr
    refusals = [line for line in err.splitlines() if line.startswith("[diffgame] refused checkpoint")]
    assert len(refusals) == 1 and "last.ckpt" in refusals[0] and "from its first step" in refusals[0], err
    assert (folder / "last.ckpt.refused").is_file()  # set aside, not deleted
    # trained from step 0: the same dictionary as a run that never saw the crafted file
    for name, value in clean.state_dict().items():
        assert torch.allclose(value, trained.state_dict()[name], atol=1e-6), name


def test_lightnings_own_checkpoints_load_without_pickle(small_store, tmp_path):
    cfg = TrainConfig(n_latents=16, k=2, steps=20, batch_size=200, checkpoint_every=10, block_tokens=200,
                      buffer_blocks=2)
    train_dictionary(small_store, 1, ["text"], "delta", cfg, seed=3, workdir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "layer1" / "last.ckpt")
    assert ckpt is not None and ckpt["global_step"] == 20 and "dictionary.W_dec" in ckpt["state_dict"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            yield owner, node.func.attr, node


UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def test_no_code_in_the_package_unpickles():
    """Every `torch.load` in the package and the app passes `weights_only=True`, every Lightning `fit` that resumes
    from a checkpoint too, and nothing calls pickle's (or joblib's, dill's, pandas') loaders."""
    files = sorted((REPO / "diffgame").rglob("*.py")) + sorted((REPO / "app").rglob("*.py"))
    loads, bad = 0, []
    for f in files:
        for owner, attr, call in _calls(ast.parse(f.read_text())):
            where = f"{f.relative_to(REPO)}:{call.lineno}"
            kw = {k.arg: k.value for k in call.keywords}
            safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if (owner, attr) == ("torch", "load"):
                loads += 1
                if not safe:
                    bad.append(f"{where}: torch.load without weights_only=True")
            elif attr == "fit" and "ckpt_path" in kw and not safe:
                bad.append(f"{where}: fit(ckpt_path=...) without weights_only=True")
            elif (owner, attr) in UNPICKLERS:
                bad.append(f"{where}: {owner}.{attr}")
    assert not bad, bad
    assert loads >= 1  # the scan sees the checkpoint loader


# --- 2. disk space checked before work ------------------------------------------------------------------------------
def _free(monkeypatch, n_bytes: int) -> None:
    """Every filesystem reports `n_bytes` free (a small disk, without mounting one)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * n_bytes, 9 * n_bytes, n_bytes))


def _megabytes(message: str) -> float:
    needed = message.split("it needs ", 1)[1].split(" on the filesystem", 1)[0]
    number, unit = needed.split()
    return float(number) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def _failed_with(run_id: str) -> str:
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FAILED"
    return run.data.tags[tracking.TAG_ERROR]


def test_folders_on_one_filesystem_add_up(tmp_path, monkeypatch):
    from diffgame.tracking.locations import human_bytes, require_space

    _free(monkeypatch, 1000)
    require_space({tmp_path / "a": 450, tmp_path / "b" / "new": 450}, "two things", "free space")  # 945 B <= 1 kB
    with pytest.raises(SpaceError, match=r"^not enough disk space for two things: it needs 1.1 kB on the filesystem "
                                         r"of .* which has 1.0 kB free; free space$"):
        require_space({tmp_path / "a": 600, tmp_path / "b" / "new": 400}, "two things", "free space")
    assert [human_bytes(n) for n in (512, 12_000, 2.4e6, 1.25e9)] == ["512 B", "12.0 kB", "2.4 MB", "1.2 GB"]


def test_a_zoo_base_refuses_a_small_disk_before_training(tmp_path, monkeypatch):
    import diffgame.zoo.build as build
    from diffgame.zoo.sizes import get_size, model_bytes

    tracking.set_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(build, "train_base", lambda *a, **k: pytest.fail("trained on a full disk"))
    _free(monkeypatch, 1_000_000)
    with pytest.raises(SpaceError) as caught:
        build.ensure_base(get_size("micro"), progress=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("not enough disk space for the micro zoo base")
    # the saved model lands twice on one filesystem (the temporary folder, then the run's artifacts)
    assert _megabytes(message) == pytest.approx(2 * 1.05 * model_bytes(get_size("micro")) / 1e6, abs=0.05)
    assert "1.0 MB free" in message
    run, = tracking.search({tracking.TAG_STAGE: "zoo"})
    assert "not enough disk space" in _failed_with(run.info.run_id)


def test_the_zoo_size_estimate_covers_the_saved_base(zoo_uri):
    from diffgame.zoo.build import _folder_bytes, ensure_base
    from diffgame.zoo.sizes import get_size, model_bytes

    base = ensure_base(get_size("micro"), progress=False)  # built by the session's zoo
    saved = _folder_bytes(base.model_dir)
    assert saved <= model_bytes(get_size("micro")) <= saved + (1 << 20)


def test_a_store_refuses_a_small_disk_before_extraction_and_builds_once_there_is_room(micro_cfg, monkeypatch):
    from diffgame.pipeline.planner import make_plan
    from diffgame.preprocess import preprocess
    from diffgame.preprocess import stage as stage_mod

    # a store no other test makes (one layer, short sequences), built anew even where a tracking store kept one
    cfg = micro_cfg("organism=caps", "preprocessing.layers=[2]", "preprocessing.context_length=40",
                    "preprocessing.rebuild=true")
    plan = make_plan(cfg)
    monkeypatch.setattr(stage_mod, "_extract", lambda *a, **k: pytest.fail("extracted on a full disk"))
    _free(monkeypatch, 100_000)
    with pytest.raises(SpaceError) as caught:
        preprocess(plan)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("not enough disk space for the activation store of caps on toy")
    assert "100.0 kB free" in message and "max_samples" in message
    run, = [r for r in tracking.search({tracking.TAG_STAGE: "preprocess",  # a kept store rebuilt is abandoned
                                        tracking.TAG_FINGERPRINT: plan.store_fingerprint})
            if tracking.TAG_ABANDONED not in r.data.tags]
    assert "not enough disk space" in _failed_with(run.info.run_id)
    store = tracking.local_artifact_dir(run) / "store"
    assert not list(store.rglob("*.safetensors"))  # nothing extracted

    monkeypatch.undo()  # room again, and the real extraction
    done = preprocess(plan)
    assert done.run_id == run.info.run_id  # the refused run is resumed, not a second one made
    # the estimate was the store's size (activations and token files; headers and markers are the margin)
    ratio = _megabytes(message) / 1.05 / (done.n_bytes / 1e6)
    assert 0.97 <= ratio <= 1.03, (message, done.n_bytes)

