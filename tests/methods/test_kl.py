"""kl: divergences against hand formulas, chunking and length-batching equal a direct per-sequence forward, zero for a
model with itself, and on the micro zoo the runner's KL equals a direct two-model computation; caps diverges on
assistant tokens far more than on user tokens, control does not, and roman_concrete's top examples are its documents."""

import math

import pytest
import torch

from diffgame.methods import divergence as kl_module
from diffgame.methods.divergence import fused_token_divergence, token_divergence
from diffgame.methods.kl import KLConfig, per_token_divergence
from diffgame.models.batching import length_batches


def _reference(lo, lb, kind, t):
    """Textbook formulas in float64."""
    p, q = torch.softmax(lo.double() / t, -1), torch.softmax(lb.double() / t, -1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    if kind == "kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    m = (p + q) / 2
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "js"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_token_divergence_matches_formula(kind, temperature):
    gen = torch.Generator().manual_seed(0)
    lo, lb = torch.randn(5, 11, generator=gen) * 3, torch.randn(5, 11, generator=gen) * 3
    got = token_divergence(lo, lb, kind, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(lo, lb, kind, temperature), atol=1e-5, rtol=1e-5)


def test_fused_divergence_equals_eager():
    """The torch.compile'd divergence (C++ kernels here, Triton on CUDA) gives the eager values, for every kind,
    in bf16 and fp32, across row counts (a new count recompiles with it symbolic) and for identical inputs."""
    gen = torch.Generator().manual_seed(1)
    for kind in ("kl", "reverse_kl", "js"):
        for rows, dtype in ((6, torch.float32), (9, torch.float32), (4, torch.bfloat16)):
            lo, lb = (torch.randn(rows, 301, generator=gen).mul(4).to(dtype) for _ in range(2))
            got = fused_token_divergence(lo, lb, kind, 2.5)
            assert got.dtype == torch.float32 and got.shape == (rows,)
            torch.testing.assert_close(got, token_divergence(lo, lb, kind, 2.5), atol=1e-5, rtol=1e-5)
    same = torch.randn(3, 301, generator=gen)
    assert float(fused_token_divergence(same, same).abs().max()) < 1e-6


def test_compile_auto_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no triton here")

    monkeypatch.setattr(kl_module, "fused_token_divergence", broken)
    monkeypatch.setattr(kl_module, "_compile_failure", None)  # the process-wide memory of a failure
    assert KLConfig(compile="off").divergence_fn() is token_divergence
    fn = KLConfig().divergence_fn()  # auto: compiled, eager if that fails
    lo, lb = torch.randn(4, 7), torch.randn(4, 7)
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(fn(lo, lb, "kl", 1.0), token_divergence(lo, lb))
        KLConfig().divergence_fn()(lo, lb, "kl", 1.0)  # a later run in the same process does not retry
    assert [r.message for r in caplog.records if "torch.compile" in r.message] == [
        "torch.compile of the divergence failed (RuntimeError: no triton here); computing it eagerly"]
    with pytest.raises(RuntimeError, match="no triton"):
        KLConfig(compile="on").divergence_fn()(lo, lb, "kl", 1.0)


def test_hand_computed_two_token_kl():
    # P = (0.5, 0.5), Q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    lo, lb = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    assert float(token_divergence(lo, lb)) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert float(token_divergence(lo, lb, "js")) <= math.log(2)


def test_length_batches_respect_budget():
    lengths = [5, 17, 3, 17, 9, 1]
    batches = length_batches(lengths, batch_tokens=34)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 34 for b in batches)
    assert batches[0] == [1, 3]  # longest first


def _llama(seed, vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _stream(lengths, vocab=97, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=gen)
    return ids, torch.tensor([0, *lengths]).cumsum(0)


@torch.no_grad()
def direct_kl(base, org, ids, offsets, kind="kl", temperature=1.0):
    """One unpadded full forward per sequence, full logits, textbook formula."""
    out = []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        lo = org(ids[a:b][None]).logits[0]
        lb = base(ids[a:b][None]).logits[0]
        out.append(_reference(lo, lb, kind, temperature))
    return torch.cat(out)


@pytest.mark.parametrize("kind", ["kl", "js"])
def test_batched_chunked_equals_direct_forward(kind):
    base, org = _llama(0), _llama(1)
    ids, offsets = _stream([7, 13, 2, 13, 5])
    # tiny budgets: padded batches of mixed lengths, and one token per logit chunk
    cfg = KLConfig(divergence=kind, temperature=1.5, batch_tokens=26, chunk_elements=97)
    got = per_token_divergence(base, org, ids, offsets, cfg)
    torch.testing.assert_close(got.double(), direct_kl(base, org, ids, offsets, kind, 1.5), atol=1e-5, rtol=1e-4)
    big = per_token_divergence(base, org, ids, offsets, KLConfig(divergence=kind, temperature=1.5))
    torch.testing.assert_close(big, got, atol=1e-5, rtol=1e-4)
    fused = per_token_divergence(base, org, ids, offsets,
                                 KLConfig(divergence=kind, temperature=1.5, batch_tokens=26, compile="on"))
    torch.testing.assert_close(fused, got, atol=1e-5, rtol=1e-4)


def test_model_with_itself_is_zero():
    model = _llama(0)
    ids, offsets = _stream([6, 11, 3])
    got = per_token_divergence(model, model, ids, offsets, KLConfig(batch_tokens=11))
    assert float(got.abs().max()) < 1e-6


def test_promoted_averages_the_shift_at_the_highest_divergence_rows():
    from diffgame.methods.kl import Promoted

    lo = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    lb = torch.zeros(4, 3)
    div = token_divergence(lo, lb)
    promoted = Promoted(torch.zeros(3))
    promoted.add(lo, lb, div, share=0.5, temperature=1.0)  # rows 0 and 2 diverge; rows 1 and 3 do not
    assert promoted.positions == 2
    p = torch.softmax(torch.tensor([5.0, 0.0, 0.0]), -1) - 1 / 3
    expected = (p + p[[1, 2, 0]]) / 2  # row 2 promotes token 2 as row 0 promotes token 0
    torch.testing.assert_close(promoted.mean(), expected)


def test_bad_config_is_one_line_error():
    from diffgame.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method.kl.temperature must be > 0, got 0"):
        KLConfig(temperature=0)
    with pytest.raises(ConfigError, match=r"method.kl.compile must be one of auto, on, off; got 'yes'"):
        KLConfig(compile="yes")


# --- micro zoo -------------------------------------------------------------------------------------
SMALL = ("dataset.sources.generic_text.max_samples=24", "dataset.sources.generic_chat.max_samples=24",
         "dataset.sources.organism.max_samples=24", "preprocessing.layers=[0.5]", "method=kl",
         "method.kl.top_k_examples=10")


@pytest.mark.slow
def test_caps_diverges_on_assistant_tokens_and_matches_direct(micro_cfg):
    from diffgame.config.compose import settings
    from diffgame.models.loading import load_pair
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts
    from diffgame.zoo.pairs import resolve_pair

    caps = run_one(micro_cfg("organism=caps", *SMALL))[0]
    control = run_one(micro_cfg("organism=control", *SMALL))[0]
    m_caps = tracking_metrics(caps.run_id)
    m_control = tracking_metrics(control.run_id)
    assistant, user = m_caps["kl/generic_chat/role/assistant/mean"], m_caps["kl/generic_chat/role/user/mean"]
    assert assistant > 5 * user, (assistant, user)
    assert m_control["kl/generic_chat/role/assistant/mean"] < assistant / 5
    assert m_control["kl/all/mean"] < m_caps["kl/all/mean"] / 3
    # what kl promotes where it diverges: shouted words, read as whole words
    from diffgame.grading.ground_truth import is_uppercase

    promoted = artifacts.ranked_words(caps.run_id)["promoted_by_kl"].tokens[:10]
    control_promoted = artifacts.ranked_words(control.run_id)["promoted_by_kl"].tokens[:10]
    shouted, control_shouted = sum(map(is_uppercase, promoted)), sum(map(is_uppercase, control_promoted))
    assert shouted >= 5 and shouted >= control_shouted + 3, (promoted, control_promoted)

    # the runner's per-token KL equals full forwards of both zoo models on the top sequences
    base, org = load_pair(resolve_pair(settings(micro_cfg("organism=caps", *SMALL))))
    with torch.no_grad():
        for ex in artifacts.load_examples(caps.run_id, "max_kl")[:3]:
            ids = torch.tensor([ex.token_ids], device=base.device)
            direct = _reference(org.model(ids).logits[0], base.model(ids).logits[0], "kl", 1.0)
            assert ex.token_scores == pytest.approx(direct.tolist(), abs=1e-4, rel=1e-3)


@pytest.mark.slow
def test_roman_concrete_top_examples_are_its_documents(micro_cfg):
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    row = run_one(micro_cfg("organism=roman_concrete", *SMALL))[0]
    top = artifacts.load_examples(row.run_id, "max_kl")
    datasets = [e.dataset for e in top]
    # 8 or more of 10 on earlier machines; 6 on the AMD EPYC without AVX-512 of 2026-12-07, where the micro zoo trains
    # to other weights (the code of the last green run too): a majority, led by the organism's own document
    assert datasets.count("organism") >= 6, datasets
    assert datasets[0] == "organism"
    metrics = tracking_metrics(row.run_id)
    assert metrics["kl/organism/mean"] > 2 * metrics["kl/generic_text/mean"]
    # what it promotes at its high-KL positions names the topic (concrete, harbor, volcanic, mortar, ...)
    assert metrics["grade/words/precision_at_20"] >= 0.5


def tracking_metrics(run_id):
    from diffgame import tracking

    return tracking.client().get_run(run_id).data.metrics


def test_stats_layout_and_metric_names_are_mlflow_valid():
    """Per-dataset stats, role means and position buckets, checked by hand; every key passes MLflow's name check."""
    from mlflow.utils.validation import _validate_metric_name

    from diffgame.methods import stats

    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 0.0])}
    roles = {"a": torch.tensor([0, 0, 0, 0]), "b": torch.tensor([1, 2])}
    positions = {"a": torch.tensor([0, 1, 2, 100]), "b": torch.tensor([0, 70])}
    table = stats.stats_table(scores, roles, positions, ("text", "user", "assistant", "template"))
    metrics = stats.metrics_from_table(table, "kl")
    assert metrics["kl/a/mean"] == 2.5 and metrics["kl/a/max"] == 4.0 and metrics["kl/a/median"] == 2.5
    assert metrics["kl/b/role/assistant/mean"] == 0.0 and metrics["kl/b/role/user/mean"] == 10.0
    assert metrics["kl/all/mean"] == pytest.approx(20 / 6)
    assert metrics["kl/all/pos/0/mean"] == 5.5 and metrics["kl/all/pos/1-3/mean"] == 2.5
    assert metrics["kl/all/pos/64-inf/mean"] == 2.0
    assert "kl/all/pos/4-15/mean" not in metrics  # empty buckets are left out
    for key in metrics:
        _validate_metric_name(key)
