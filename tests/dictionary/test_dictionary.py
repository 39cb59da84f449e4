"""Dictionary methods on planted stores: BatchTopK by hand, the shuffled stream's determinism, PCA / SAE / crosscoder
recovering a planted direction (with Latent Scaling telling organism-only from shared latents), and an interrupted
training resumed from its checkpoint equal to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from diffgame.dictionary.data import ShuffledStream, blocks, to_inputs
from diffgame.dictionary.model import BatchTopK
from diffgame.dictionary.readout import scan
from diffgame.dictionary.train import TrainConfig, train_dictionary
from diffgame.errors import ConfigError
from diffgame.methods.crosscoder import CrosscoderConfig, LatentScaling, relative_norm, tag
from diffgame.methods.pca import TokenProjections, fit_pca
from diffgame.methods.sae import SAEConfig, store_pass

from _paired_store import write_store

D, N, G = 32, 16000, 16
PLANT_IDS = 3  # the planted direction fires on tokens with id < 3 (about 6% of tokens)


def _features(seed: int = 0):
    """Background: G sparse unit features (8% each, magnitude 0.5-1.5); ids: uniform over 50 tokens."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(G + 1, D, generator=g)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    acts = (torch.rand(N, G, generator=g) < 0.08).float() * torch.rand(N, G, generator=g).add(0.5)
    ids = torch.randint(0, 50, (N,), generator=g)
    plant = (ids < PLANT_IDS).float() * torch.rand(N, generator=g).add(0.5)
    return g, feats[:G], feats[G], acts, ids, plant


def _store(root: Path, base: torch.Tensor, org: torch.Tensor, ids: torch.Tensor):
    seqs = [(ids[i:i + 50].tolist(), [0] * 50) for i in range(0, N, 50)]
    return write_store(root, {"text": {"sequences": seqs, "base": {1: base}, "organism": {1: org}}}, [1])


@pytest.fixture(scope="module")
def delta_store(tmp_path_factory):
    """δ = sparse background features + v on the planted token subset; base is unrelated noise."""
    g, feats, v, acts, ids, plant = _features()
    base = torch.randn(N, D, generator=g)
    delta = acts @ feats + plant[:, None] * v + 0.02 * torch.randn(N, D, generator=g)
    return _store(tmp_path_factory.mktemp("delta"), base, base + delta, ids), v, ids < PLANT_IDS, plant, delta


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory):
    """Both models carry the same sparse features; only the organism adds v on the planted subset."""
    g, feats, v, acts, ids, plant = _features(1)
    shared = acts @ feats
    base = shared + 0.02 * torch.randn(N, D, generator=g)
    org = shared + plant[:, None] * v + 0.02 * torch.randn(N, D, generator=g)
    return _store(tmp_path_factory.mktemp("pair"), base, org, ids), v, feats, ids < PLANT_IDS


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# --- BatchTopK by hand -----------------------------------------------------------------------------
def test_batch_topk_keeps_k_per_token_on_average_and_token_topk_k_each():
    m = BatchTopK(1, 8, 16, k=2, seed=0)
    x = torch.randn(10, 1, 8)
    batch = m.encode(x, "batch")
    assert int((batch > 0).sum()) == 2 * 10
    token = m.encode(x, "token")
    assert ((token > 0).sum(-1) == 2).all()
    # the chosen entries are the largest pre-activations x decoder norm of the batch
    score = m.pre_activations(x) * m.decoder_norms().sum(-1)
    assert set(score.flatten().topk(20).indices.tolist()) == set((batch.flatten() > 0).nonzero().squeeze(1).tolist())


def test_normalize_decoder_keeps_the_function():
    m = BatchTopK(2, 8, 16, k=3, seed=1)
    with torch.no_grad():
        m.W_dec.mul_(torch.rand(16, 1, 1) * 3 + 0.1)
    x = torch.randn(12, 2, 8)
    before = m.decode(m.encode(x, "token"))
    m.normalize_decoder()
    assert torch.allclose(m.decoder_norms().sum(-1), torch.ones(16), atol=1e-6)
    assert torch.allclose(m.decode(m.encode(x, "token")), before, atol=1e-5)


# --- the stream --------------------------------------------------------------------------------------
def test_stream_resumed_at_a_step_yields_the_same_batches_and_covers_every_token(delta_store):
    store = delta_store[0]
    full = list(ShuffledStream(store, 1, ["text"], "delta", 1000, 40, seed=3, block_tokens=700, buffer_blocks=3))
    resumed = list(ShuffledStream(store, 1, ["text"], "delta", 1000, 40, seed=3, block_tokens=700, buffer_blocks=3,
                                  start_step=23))
    prefetched = list(ShuffledStream(store, 1, ["text"], "delta", 1000, 40, seed=3, block_tokens=700,
                                     buffer_blocks=3, prefetch=2))
    assert len(full) == 40 and len(resumed) == 17
    assert all(torch.equal(a, b) for a, b in zip(full[23:], resumed))
    assert all(torch.equal(a, b) for a, b in zip(full, prefetched))
    # the first epoch (16 batches of 1000 = all 16000 tokens) visits every token exactly once
    epoch = torch.cat(full[:16])[:, 0]
    every = store.activations("text", "organism", 1).float() - store.activations("text", "base", 1).float()
    assert torch.equal(torch.sort(epoch.sum(-1)).values, torch.sort(every.sum(-1)).values)
    assert not torch.equal(epoch, every)  # shuffled
    assert sum(len(b) for b in blocks(store, ["text"], 700)) == N


@pytest.mark.parametrize("inputs", ["delta", "pair"])
def test_raw_stream_through_to_inputs_is_the_fp32_stream(tmp_path, inputs):
    """What training feeds (raw bf16 rows, converted in the step) equals the fp32 stream batch for batch, across
    buffer and epoch boundaries (30 batches of 256 over 3000 tokens in buffers of 900)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3000, D, generator=g)
    seqs = [([1] * 50, [0] * 50)] * 60
    store = write_store(tmp_path, {"text": {"sequences": seqs, "base": {1: base},
                                            "organism": {1: base + 0.3 * torch.randn(3000, D, generator=g)}}},
                        [1], dtype="bfloat16")
    kw = dict(seed=2, block_tokens=300, buffer_blocks=3)
    fp32 = list(ShuffledStream(store, 1, ["text"], inputs, 256, 30, **kw))
    raw = list(ShuffledStream(store, 1, ["text"], inputs, 256, 30, raw=True, pin=True, **kw))
    assert len(raw) == len(fp32) == 30
    assert all(r.shape == (256, 2, D) and r.dtype == torch.bfloat16 for r in raw)
    assert all(torch.equal(to_inputs(r, inputs), x) for r, x in zip(raw, fp32))
    # pinned only with CUDA (pin_memory raises without it)
    assert all(r.is_pinned() == torch.cuda.is_available() for r in raw)


# --- planted directions ------------------------------------------------------------------------------
def test_pca_first_component_is_the_planted_direction(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (N,), generator=g)
    base = torch.randn(N, D, generator=g)
    v = _unit(torch.randn(D, generator=g))
    plant = (ids < 10).float() * torch.rand(N, generator=g).add(1.0)
    store = _store(tmp_path / "s", base, base + plant[:, None] * v + 0.1 * torch.randn(N, D, generator=g), ids)
    pca = fit_pca(store, 1, ["text"], 4, 3000)
    c0 = torch.as_tensor(pca.components_[0]).float()
    assert abs(float(c0 @ v)) > 0.95
    assert pca.explained_variance_ratio_[0] > 0.5
    # the input tokens projecting most on the planted side of pc0 are exactly the planted token ids
    signed, mean = torch.stack([c0, -c0]), torch.as_tensor(pca.mean_).float()
    by_token = TokenProjections(store.tokens("text").input_ids, 2)

    def project(x):
        scores = (x[:, 0] - mean) @ signed.T
        by_token.add(scores)
        return scores

    scan(store, 1, ["text"], "delta", project, 2, 0, _Tok(), 3000)
    rows = by_token.rows(_Tok(), 1, 1, top=10)
    planted_side = "+" if float(c0 @ v) > 0 else "-"
    assert {r["token_id"] for r in rows if r["sign"] == planted_side} == set(range(10))
    assert all(r["token_id"] >= 10 for r in rows if r["sign"] != planted_side)  # the other side: unplanted tokens


def _sae(store, **kw) -> BatchTopK:
    cfg = TrainConfig(**{"n_latents": 64, "k": 2, "steps": 1200, "batch_size": 1024, "checkpoint_every": 1000} | kw)
    return train_dictionary(store, 1, ["text"], "delta", cfg, seed=0)


def test_sae_has_a_latent_on_the_planted_direction_that_fires_on_its_tokens(delta_store):
    store, v, subset, plant, delta = delta_store
    sae = _sae(store)
    cos = _unit(sae.directions(0)) @ v
    j = int(cos.argmax())
    assert cos[j] > 0.9
    with torch.no_grad():
        f = sae.encode(sae.scale(store.activations("text", "organism", 1).float()[:, None]
                                 - store.activations("text", "base", 1).float()[:, None]))
    fires = f[:, j] > 0
    assert fires[subset].float().mean() > 0.95
    assert fires[~subset].float().mean() < 0.05


def test_token_topk_keeps_a_large_norm_direction_whole(tmp_path):
    """A direction carried with twice the others' norm: per-token TopK recovers it as one latent (BatchTopK tends to
    split it over co-firing latents: 0.71 on this store, the trade-off `TrainConfig.topk` documents)."""
    g, feats, v, acts, ids, plant = _features(2)
    base = torch.randn(N, D, generator=g)
    delta = acts @ feats + 2 * plant[:, None] * v
    store = _store(tmp_path / "s", base, base + delta, ids)
    sae = _sae(store, topk="token")
    assert float((_unit(sae.directions(0)) @ v).max()) > 0.95


def test_store_pass_ranks_the_planted_latent_and_finds_its_examples(delta_store):
    store, v, subset, plant, delta = delta_store
    sae = _sae(store)
    j = int((_unit(sae.directions(0)) @ v).argmax())
    stats, (examples,) = store_pass(store, 1, ["text"], sae, "delta", 5000, _Tok(), [j], 3)
    table = stats.table()
    assert table.frequency[j] == pytest.approx(float(subset.float().mean()), abs=0.03)  # fires on its subset
    # the planted latent carries the planted share of Σ‖δ‖ (magnitude times its unit direction)
    assert table.norm_share[j] == pytest.approx(float(plant.sum() / delta.norm(dim=-1).sum()), rel=0.15)
    assert stats.unexplained.value < 0.2
    ids = store.tokens("text").input_ids
    for ex in examples:  # the best sequences' top token is a planted one
        top = max(range(len(ex.token_scores)), key=ex.token_scores.__getitem__)
        assert ex.token_ids[top] < PLANT_IDS
    assert len(ids) == N


def test_crosscoder_tags_the_organism_only_feature_and_keeps_shared_ones_shared(pair_store):
    store, v, feats, subset = pair_store
    cfg = TrainConfig(n_latents=64, k=2, steps=1500, batch_size=1024, checkpoint_every=1000)
    cc = train_dictionary(store, 1, ["text"], "pair", cfg, seed=0)
    scaling = LatentScaling(cc)
    scan(store, 1, ["text"], "pair", lambda raw: scaling.add(raw)[:, :0], 0, 0, _Tok(), 4000)
    nu_r, nu_e = scaling.ratios()
    delta = relative_norm(cc.decoder_norms() / cc.input_scale)
    tags = tag(delta, CrosscoderConfig())
    org_dirs = _unit(cc.directions(1))
    j = int((org_dirs @ v).argmax())
    assert float(org_dirs[j] @ v) > 0.9
    assert tags[j] == "organism_only" and delta[j] > 0.95
    assert abs(float(nu_r[j])) < 0.1 and abs(float(nu_e[j])) < 0.1
    shared = [int((org_dirs @ f).argmax()) for f in feats]
    assert sum(tags[i] == "shared" for i in shared) >= 0.9 * len(shared)
    live_shared = [i for i in shared if tags[i] == "shared"]
    # shared latents: the base explains their direction as well as the organism (ν near 1, far from the planted 0)
    assert all(0.7 < float(nu_e[i]) < 1.3 and 0.9 < float(nu_r[i]) < 1.1 for i in live_shared)


class _Tok:
    """Decodes token i as `w<i>` (examples only need per-token strings)."""

    def batch_decode(self, ids, skip_special_tokens=False):
        return [f"w{i[0]}" for i in ids]

    def convert_ids_to_tokens(self, i):
        return f"w{i}"


# --- resume ------------------------------------------------------------------------------------------
class _Interrupt(pl.Callback):
    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            raise KeyboardInterrupt


def test_interrupted_training_resumes_to_the_uninterrupted_dictionary(pair_store, tmp_path, monkeypatch):
    store = pair_store[0]
    cfg = TrainConfig(n_latents=32, k=4, steps=90, batch_size=256, checkpoint_every=20, block_tokens=512,
                      buffer_blocks=4)
    whole = train_dictionary(store, 1, ["text"], "pair", cfg, seed=5, workdir=tmp_path / "a")
    init = pl.Trainer.__init__

    def interrupted(self, *a, **kw):
        init(self, *a, **{**kw, "callbacks": [*kw.get("callbacks", []), _Interrupt(50)]})

    monkeypatch.setattr(pl.Trainer, "__init__", interrupted)
    with pytest.raises(BaseException):  # Lightning turns the interrupt into SystemExit
        train_dictionary(store, 1, ["text"], "pair", cfg, seed=5, workdir=tmp_path / "b")
    monkeypatch.setattr(pl.Trainer, "__init__", init)
    ckpt = torch.load(tmp_path / "b" / "layer1" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 40  # the last checkpoint before the interrupt
    resumed = train_dictionary(store, 1, ["text"], "pair", cfg, seed=5, workdir=tmp_path / "b")
    for name, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[name].float(), atol=1e-6), name
    # a finished layer is loaded, not trained again
    again = train_dictionary(store, 1, ["text"], "pair", cfg, seed=5, workdir=tmp_path / "b")
    assert torch.equal(again.W_dec, resumed.W_dec)


def test_bad_training_values_are_config_errors():
    with pytest.raises(ConfigError, match="k .* must be <= n_latents"):
        TrainConfig(n_latents=4, k=8)
    with pytest.raises(ConfigError, match="steps must be > 0"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="organism_only_above"):
        CrosscoderConfig(organism_only_above=0.4)
    from diffgame.config.validate import build  # through the one validator, the message names the key's path

    with pytest.raises(ConfigError, match=r"invalid 'method.sae': k must be > 0, got 0"):
        build(SAEConfig, {"k": 0}, "method.sae")
    with pytest.raises(ConfigError, match=r"invalid value 'foo' for 'method.crosscoder.topk'; valid: batch, token"):
        build(CrosscoderConfig, {"topk": "foo"}, "method.crosscoder")


# --- through the runner on the micro zoo ---------------------------------------------------------------
SMALL = ("dataset.sources.generic_text.max_samples=24", "dataset.sources.generic_chat.max_samples=12",
         "dataset.sources.organism.max_samples=24", "preprocessing.dtype=float32")


def _small(method: str, steps: int = 60) -> tuple[str, ...]:
    m = f"method.{method}"
    return (f"method={method}", f"{m}.n_latents=64", f"{m}.k=4", f"{m}.steps={steps}", f"{m}.batch_size=128",
            f"{m}.checkpoint_every=20", f"{m}.steering_prompts=2", f"{m}.steering_tokens=6",
            f"{m}.steering_alphas=[1.0]", f"{m}.evidence=3")


def test_runner_logs_training_curves_weights_and_evidence_then_reuses(micro_cfg):
    from diffgame import tracking
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    cfg = micro_cfg("organism=caps", *SMALL, *_small("crosscoder"), "pipeline.mode=full")
    (row,) = run_one(cfg)
    run = tracking.client().get_run(row.run_id)
    assert run.info.status == "FINISHED"
    layer = int(run.data.params["layers"].strip("[]").split(",")[0])
    curve = tracking.client().get_metric_history(row.run_id, f"crosscoder/layer{layer}/fvu")
    assert len(curve) >= 5 and curve[-1].value < curve[0].value  # Lightning's logger wrote into this run, per step
    cc = BatchTopK.from_state(artifacts.load_weights(row.run_id, f"layer{layer}"))  # loadable by run id
    assert (cc.n_inputs, cc.n_latents) == (2, 64) and float(cc.threshold) > 0
    latents = artifacts.load_table(row.run_id, "latents")
    assert set(latents.tag) <= {"base_only", "shared", "organism_only", "other"}
    ranked = artifacts.ranked_tokens(row.run_id)
    assert len([k for k in ranked if k.startswith(f"layer{layer}/latent")]) == 3
    assert artifacts.steering_samples(row.run_id)
    assert "grade/relative/precision_at_20" in run.data.metrics  # graded beside the control, like every method
    (again,) = run_one(cfg)
    assert (again.run_id, again.reused) == (row.run_id, True)


def test_an_interrupted_diff_run_resumes_in_place_to_the_uninterrupted_dictionary(micro_cfg, monkeypatch):
    from diffgame import tracking
    from diffgame.dictionary import train
    from diffgame.pipeline.chain import run_one
    from diffgame.pipeline.planner import make_plan
    from diffgame.pipeline.runner import find_store
    from diffgame.tracking import artifacts

    cfg = micro_cfg("organism=caps", *SMALL, *_small("sae", steps=70), "method.sae.steering_prompts=0")
    step = train.DictionaryModule.training_step

    def failing(self, batch, i):
        if self.global_step == 50:
            raise RuntimeError("power cut")
        return step(self, batch, i)

    monkeypatch.setattr(train.DictionaryModule, "training_step", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        run_one(cfg)
    monkeypatch.setattr(train.DictionaryModule, "training_step", step)
    failed = tracking.find_resumable("diff", make_plan(cfg).diff_fingerprints["sae"])
    assert failed.info.status == "FAILED" and "power cut" in failed.data.tags[tracking.TAG_ERROR]
    (row,) = run_one(cfg)
    assert row.run_id == failed.info.run_id  # reopened, not duplicated
    run = tracking.client().get_run(row.run_id)
    assert run.info.status == "FINISHED" and tracking.TAG_ERROR not in run.data.tags
    # equal to training the same layer in one go on the same store and config
    plan = make_plan(cfg)
    _, store = find_store(plan)
    layer = store.layers[0]
    whole = train.train_dictionary(store, layer, store.datasets, "delta", plan.methods["sae"], seed=int(cfg.seed))
    resumed = artifacts.load_weights(row.run_id, f"layer{layer}")
    for name, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed[name].float(), atol=1e-6), name
