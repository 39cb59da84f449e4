"""An organism whose vocabulary extends the base's (8 tokens appended, 8 more output rows, as `add_tokens` +
`resize_token_embeddings` make) is diffed on the shared vocabulary: kl runs, says so in a tag, and its per-token KL
equals a direct computation on the base's rows; a tokenizer that renumbers base tokens is still refused."""

from __future__ import annotations

import pytest
import torch

from diffgame import tracking
from diffgame.models.loading import vocab_extends
from diffgame.pipeline.chain import run_one
from diffgame.tracking import artifacts


def test_vocab_extends_accepts_appended_tokens_only():
    base = {"a": 0, "b": 1, "<s>": 2}
    assert vocab_extends(base, base) and vocab_extends(base, {**base, "new": 3, "other": 4})
    assert not vocab_extends(base, {"a": 1, "b": 0, "<s>": 2})  # renumbered
    assert not vocab_extends(base, {"a": 0, "<s>": 2, "new": 3})  # a base token missing
    assert not vocab_extends({"a": 0, "b": 5}, {"a": 0, "b": 5, "new": 3})  # a new token inside the base's range


def test_kl_on_an_organism_with_eight_extra_vocabulary_rows(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _tiny_models import make_pair, tiny_cfg, write_data

    base_dir, org_dir = make_pair(tmp_path / "models", noise=0.2)
    data = write_data(tmp_path / "data", n_text=10, n_chat=6)
    tok = AutoTokenizer.from_pretrained(org_dir)
    org = AutoModelForCausalLM.from_pretrained(org_dir)
    rows = org.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    tok.add_tokens([f"<new_{i}>" for i in range(8)])
    org.resize_token_embeddings(rows + 8, mean_resizing=False)
    wide = tmp_path / "models" / "wide"
    org.save_pretrained(wide)
    tok.save_pretrained(wide)

    cfg = tiny_cfg(base_dir, wide, data, tmp_path / "mlflow.db", dtype="float32")
    cfg.method = {"kl": {"top_k_examples": 3}}
    [row] = run_one(cfg)
    run = tracking.client().get_run(row.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_SHARED_VOCAB] == f"{rows} of {rows + 8}"
    promoted = artifacts.load_table(row.run_id, "promoted")
    assert promoted["token_id"].max() < rows  # only shared rows are ranked

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    org = AutoModelForCausalLM.from_pretrained(wide).eval()
    ex = artifacts.load_examples(row.run_id, "max_kl")[0]
    with torch.no_grad():
        ids = torch.tensor([ex.token_ids])
        lo, lb = org(ids).logits[0], base(ids).logits[0]
    shared = (lo[:, :rows].log_softmax(-1).exp() * (lo[:, :rows].log_softmax(-1) - lb.log_softmax(-1))).sum(-1)
    assert ex.token_scores == pytest.approx(shared.tolist(), rel=1e-3, abs=1e-5)
    whole = lo.log_softmax(-1)[:, :rows]  # normalising over all 408 rows instead gives other numbers
    assert not torch.allclose((whole.exp() * (whole - lb.log_softmax(-1))).sum(-1), shared, atol=1e-4)
