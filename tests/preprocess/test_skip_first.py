"""`model.skip_first`: a planted huge-norm first token dominates normdiff's max with skip_first=0; with skip_first=1
every statistic (normdiff, kl, the dictionaries' training rows) leaves out exactly the position-0 tokens, and the
diff runs' fingerprints differ."""

import pytest
import torch
from _paired_store import word_tokenizer, write_store

from diffgame.data.sequences import TEXT, USER
from diffgame.dictionary.data import ShuffledStream, blocks, read_inputs
from diffgame.errors import ConfigError
from diffgame.methods.base import MethodContext
from diffgame.methods.kl import KLConfig, KLMethod
from diffgame.methods.normdiff import NormDiffConfig, NormDiffMethod
from diffgame.models.loading import ModelHandle
from diffgame.records.schema import ModelConfig
from diffgame.store import ActivationStore

D, V, SINK = 8, 40, 100.0
LENGTHS = {"text": (9, 4, 12), "chat": (6, 10)}


@pytest.fixture
def sink_store(tmp_path):
    """Organism = base + a random delta, whose position-0 rows are scaled to norm `SINK` (an attention sink)."""
    gen = torch.Generator().manual_seed(0)
    spec = {}
    for name, lengths in LENGTHS.items():
        role = TEXT if name == "text" else USER
        seqs = [(torch.randint(1, V, (n,), generator=gen).tolist(), [role] * n) for n in lengths]
        n = sum(lengths)
        delta = torch.randn(n, D, generator=gen)
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        delta[starts] *= SINK / delta[starts].norm(dim=-1, keepdim=True)
        base = torch.randn(n, D, generator=gen)
        spec[name] = {"sequences": seqs, "base": {2: base}, "organism": {2: base + delta}}
    write_store(tmp_path / "store", spec, [2])
    return tmp_path / "store", spec


def _normdiff(path, skip_first):
    store = ActivationStore.open(path, skip_first=skip_first)
    handle = ModelHandle(model=None, tokenizer=word_tokenizer(V), role="base", name="words")
    ctx = MethodContext(config=NormDiffConfig(batch_tokens=5), store=store, tokenizer=handle.tokenizer)
    return store, NormDiffMethod(ctx.config).run(ctx)


def test_normdiff_leaves_out_the_first_positions(sink_store):
    path, spec = sink_store
    _, full = _normdiff(path, 0)
    store, skipped = _normdiff(path, 1)
    assert full.metrics["normdiff/all/max"] == pytest.approx(SINK, rel=1e-5)  # the sink dominates
    deltas = {d: spec[d]["organism"][2] - spec[d]["base"][2] for d in spec}
    kept = {d: store.keep(d) for d in spec}
    assert [int((~k).sum()) for k in kept.values()] == [len(LENGTHS[d]) for d in spec]  # one token per sequence
    norms = {d: deltas[d][kept[d]].norm(dim=-1) for d in spec}
    pooled = torch.cat(list(norms.values()))
    assert skipped.metrics["normdiff/all/max"] == pytest.approx(float(pooled.max()), rel=1e-5)
    assert skipped.metrics["normdiff/all/max"] < 10
    assert skipped.metrics["normdiff/all/mean"] == pytest.approx(float(pooled.mean()), rel=1e-5)
    for d in spec:
        assert skipped.metrics[f"normdiff/{d}/mean"] == pytest.approx(float(norms[d].mean()), rel=1e-5)

    stats = skipped.tables["stats"]
    counts = stats[(stats.group == "all") & (stats.measure == "norm")].set_index("dataset")["count"]
    full_counts = full.tables["stats"]
    full_counts = full_counts[(full_counts.group == "all") & (full_counts.measure == "norm")].set_index("dataset")["count"]
    for d in spec:
        assert counts[d] == full_counts[d] - len(LENGTHS[d]) == sum(LENGTHS[d]) - len(LENGTHS[d])
    assert not stats.group.eq("pos/0").any() and full.tables["stats"].group.eq("pos/0").any()
    assert 0 not in set(skipped.tables["positions"].position) and 0 in set(full.tables["positions"].position)
    # the mean vector and examples' ranking skip the sink too
    mean = torch.cat([deltas[d][kept[d]] for d in spec]).mean(0)
    torch.testing.assert_close(skipped.vectors["normdiff/layer2/mean"], mean, atol=1e-5, rtol=0)
    assert "normdiff/layer2/pos0" not in skipped.vectors and "normdiff/layer2/pos0" in full.vectors
    assert skipped.examples["layer2_max_norm"][0].score == pytest.approx(float(pooled.max()), rel=1e-5)
    assert full.examples["layer2_max_norm"][0].score == pytest.approx(SINK, rel=1e-5)


def test_kl_positions_table_has_no_skipped_rows(sink_store):
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(seed):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, vocab_size=V,
                                            max_position_embeddings=32)).eval()

    path, spec = sink_store
    tok = word_tokenizer(V)
    base, org = (ModelHandle(model=llama(s), tokenizer=tok, role=r, name=r) for s, r in ((0, "base"), (1, "organism")))
    results = {}
    for skip in (0, 1):
        store = ActivationStore.open(path, skip_first=skip)
        ctx = MethodContext(config=KLConfig(compile="off", min_token_count=1), store=store, base=base, organism=org,
                            tokenizer=tok)
        results[skip] = KLMethod(ctx.config).run(ctx)
    full, skipped = results[0].tables, results[1].tables
    assert 0 in set(full["positions"].position) and 0 not in set(skipped["positions"].position)
    # the kept positions' numbers are unchanged: the models still read the first token
    merged = full["positions"].merge(skipped["positions"], on=["dataset", "position"], suffixes=("", "_skip"))
    assert len(merged) == len(skipped["positions"]) == len(full["positions"]) - 2
    assert merged["mean"].tolist() == pytest.approx(merged["mean_skip"].tolist())
    counts = {t: s[(s.group == "all")].set_index("dataset")["count"] for t, s in (("full", full["stats"]),
                                                                                  ("skip", skipped["stats"]))}
    for d in spec:
        assert counts["skip"][d] == counts["full"][d] - len(LENGTHS[d])
    assert int(skipped["tokens"]["count"].sum()) == sum(sum(n) - len(n) for n in LENGTHS.values())


def test_dictionaries_train_on_kept_rows_only(sink_store):
    path, spec = sink_store
    store = ActivationStore.open(path, skip_first=1)
    for block_tokens in (3, 64):
        got = torch.cat([read_inputs(store, b, 2, "delta")[:, 0] for b in blocks(store, ["text", "chat"], block_tokens)])
        want = torch.cat([(spec[d]["organism"][2] - spec[d]["base"][2])[store.keep(d)] for d in ("text", "chat")])
        torch.testing.assert_close(got, want)
    stream = ShuffledStream(store, 2, ["text", "chat"], "delta", batch_size=4, steps=None, block_tokens=3)
    assert stream.n_tokens == sum(sum(n) - len(n) for n in LENGTHS.values())
    assert float(torch.cat([next(iter(stream)) for _ in range(3)]).norm(dim=-1).max()) < 10


def test_skip_first_is_validated_fingerprinted_and_logged(cfg):
    from omegaconf import OmegaConf

    from diffgame import tracking
    from diffgame.config.compose import validate
    from diffgame.pipeline.chain import run_one
    from diffgame.pipeline.planner import make_plan

    with pytest.raises(ConfigError, match="skip_first"):
        ModelConfig(skip_first=-1)
    cfg.method = {"normdiff": {"top_k_examples": 2}}
    plans, runs = {}, {}
    for skip in (0, 1):
        c = cfg.copy()
        c.model = OmegaConf.merge(c.model, {"skip_first": skip})
        validate(c)
        plans[skip] = make_plan(c)
        (row,) = run_one(c)
        runs[skip] = tracking.client().get_run(row.run_id)
    assert plans[0].diff_fingerprints["normdiff"] != plans[1].diff_fingerprints["normdiff"]
    assert plans[0].store_fingerprint == plans[1].store_fingerprint  # one store serves both
    assert {runs[s].data.params["skip_first"] for s in runs} == {"0", "1"}
    assert len({runs[s].data.tags[tracking.TAG_PREPROCESS] for s in runs}) == 1
    nd = {s: r.data.metrics for s, r in runs.items()}
    assert "normdiff/all/pos/0/mean" in nd[0] and "normdiff/all/pos/0/mean" not in nd[1]
