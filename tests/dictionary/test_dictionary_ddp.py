"""Dictionaries on several devices: the lane-split stream joins into the one-process batches, each rank reads its own
blocks, and two gloo ranks (Lightning's ddp_spawn) train the dictionary one process trains on the same batches,
resumable from their checkpoint; `devices` stays out of the run's fingerprint, `stream_lanes` (the batches) does not."""

from __future__ import annotations

import pytest
import torch

from diffgame.dictionary.data import ShuffledStream
from diffgame.dictionary.train import TrainConfig, train_dictionary
from diffgame.errors import ConfigError
from diffgame.methods.sae import SAEConfig
from diffgame.records.ranges import identity

from _paired_store import write_store

D, N = 16, 6000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A pair store whose organism adds a direction on a fifth of the tokens, over sparse shared features."""
    g = torch.Generator().manual_seed(11)
    feats = torch.randn(8, D, generator=g)
    shared = ((torch.rand(N, 8, generator=g) < 0.1).float() * torch.rand(N, 8, generator=g)) @ feats
    ids = torch.randint(0, 40, (N,), generator=g)
    v = torch.randn(D, generator=g)
    org = shared + (ids < 8).float()[:, None] * v + 0.02 * torch.randn(N, D, generator=g)
    seqs = [(ids[i:i + 50].tolist(), [0] * 50) for i in range(0, N, 50)]
    return write_store(tmp_path_factory.mktemp("ddp"), {"text": {"sequences": seqs, "base": {1: shared},
                                                                 "organism": {1: org}}}, [1])


def test_lane_shares_join_into_the_lanes_batches_and_read_disjoint_blocks(store):
    kw = dict(seed=4, block_tokens=250, buffer_blocks=4, lanes=2, raw=True)
    whole = list(ShuffledStream(store, 1, ["text"], "pair", 200, 50, **kw))
    shares = [list(ShuffledStream(store, 1, ["text"], "pair", 200, 50, only_lanes=[r], **kw)) for r in (0, 1)]
    assert len(whole) == 50 and all(b.shape == (200, 2, D) for b in whole)
    assert all(a.shape == (100, 2, D) for a in shares[0] + shares[1])
    assert all(torch.equal(torch.cat([a, b]), w) for a, b, w in zip(*shares, whole))
    # within an epoch (6000 tokens = 30 batches) the two ranks never read the same row
    rows = [{tuple(x.tolist()) for b in share[:25] for x in b[:, 1, :3]} for share in shares]
    assert len(rows[0]) == len(rows[1]) == 2500 and not rows[0] & rows[1]
    # resumed at step 17, each lane continues where it was
    later = list(ShuffledStream(store, 1, ["text"], "pair", 200, 50, start_step=17, **kw))
    assert all(torch.equal(a, b) for a, b in zip(whole[17:], later))
    # one lane is today's stream (runs trained before lanes existed keep their batches)
    one = ShuffledStream(store, 1, ["text"], "pair", 200, 5, **{**kw, "lanes": 1})
    default = ShuffledStream(store, 1, ["text"], "pair", 200, 5, seed=4, block_tokens=250, buffer_blocks=4, raw=True)
    assert all(torch.equal(a, b) for a, b in zip(one, default))


@pytest.mark.slow
@pytest.mark.parametrize("topk", ["batch", "token"])
def test_two_gloo_ranks_train_the_one_process_dictionary(store, tmp_path, topk):
    """Same global batch (2 lanes), same seed: 2 spawned CPU ranks of 128 rows each against 1 process of 256. Dead
    latents (dead_steps=5) make the auxiliary loss and its batch-wide normaliser part of the steps."""
    cfg = dict(n_latents=48, k=3, steps=60, batch_size=256, block_tokens=250, buffer_blocks=4, dead_steps=5,
               accelerator="cpu", topk=topk, checkpoint_every=25)
    one = train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg, stream_lanes=2), seed=3,
                           workdir=tmp_path / "one")
    two = train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg, devices=2), seed=3,
                           workdir=tmp_path / "two")
    ref = train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg), seed=3)  # one lane: other batches
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=2e-5, rtol=1e-4, msg=name)
    assert float(two.threshold) > 0 and int(two.since_fired.max()) > 5  # some latents were dead on the way
    assert not torch.allclose(ref.W_dec, one.W_dec, atol=1e-3)  # the lanes are what made the batches equal
    assert (tmp_path / "two" / "layer1" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_ranks_resume_from_the_checkpoint_to_the_uninterrupted_dictionary(store, tmp_path):
    """A two-rank training stopped after its step-20 checkpoint (here: ended there) and resumed to step 40 equals an
    uninterrupted two-rank training of 40 steps."""
    cfg = dict(n_latents=32, k=3, batch_size=256, block_tokens=250, buffer_blocks=4, accelerator="cpu",
               checkpoint_every=20, devices=2)
    whole = train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg, steps=40), seed=1,
                             workdir=tmp_path / "a")
    train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg, steps=20), seed=1, workdir=tmp_path / "b")
    (tmp_path / "b" / "layer1" / "dictionary.safetensors").unlink()  # as if stopped right after the checkpoint
    resumed = train_dictionary(store, 1, ["text"], "pair", TrainConfig(**cfg, steps=40), seed=1,
                               workdir=tmp_path / "b")
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_devices_stay_out_of_the_fingerprint_and_lanes_go_in():
    assert identity(SAEConfig()) == identity(SAEConfig(devices=1, stream_lanes=1))
    assert "devices" not in identity(SAEConfig()) and "stream_lanes" not in identity(SAEConfig())
    two = SAEConfig(devices=2)
    assert two.stream_lanes == 2 and identity(two) == identity(SAEConfig(stream_lanes=2))
    assert identity(two) != identity(SAEConfig())
    with pytest.raises(ConfigError, match=r"stream_lanes \(3\) must be a multiple of devices \(2\)"):
        TrainConfig(devices=2, stream_lanes=3)
    with pytest.raises(ConfigError, match=r"batch_size \(100\) must be a multiple of stream_lanes \(3\)"):
        TrainConfig(batch_size=100, stream_lanes=3)


@pytest.mark.slow
def test_a_two_device_sae_run_logs_from_rank_zero_and_is_the_lanes_run(micro_cfg):
    """Through the runner on the micro zoo: rank 0 writes the training curves into the diff run (its logger crossed
    into the spawned ranks), and a one-process run on the same lanes is that run (reused: same fingerprint)."""
    from diffgame import tracking
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    small = ("organism=caps", "method=sae", "dataset.sources.generic_text.max_samples=24",
             "dataset.sources.generic_chat.max_samples=12", "dataset.sources.organism.max_samples=24",
             "preprocessing.dtype=float32", "method.sae.n_latents=64", "method.sae.k=4", "method.sae.steps=40",
             "method.sae.batch_size=128", "method.sae.block_tokens=128", "method.sae.steering_prompts=0",
             "method.sae.evidence=2", "method.sae.accelerator=cpu")
    (row,) = run_one(micro_cfg(*small, "method.sae.devices=2"))
    run = tracking.client().get_run(row.run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.devices"] == "2"
    layer = int(run.data.params["layers"].strip("[]").split(",")[0])
    curve = tracking.client().get_metric_history(row.run_id, f"sae/layer{layer}/fvu")
    assert len(curve) >= 3 and len({m.step for m in curve}) == len(curve)  # one value per step: rank 0's
    assert float(artifacts.load_weights(row.run_id, f"layer{layer}")["threshold"]) > 0
    (same,) = run_one(micro_cfg(*small, "method.sae.stream_lanes=2"))
    assert (same.run_id, same.reused) == (row.run_id, True)
