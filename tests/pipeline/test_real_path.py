"""The researcher's real command, offline (#17): `diffgame run model=qwen3_1_7B organism=cake_bake dataset=standard`
through the shipped configs, with local stand-ins where the hub would be: a tiny random Qwen3 saved with
`save_pretrained` (a tokenizer with Qwen's ChatML specials and a template that honours `enable_thinking`), a LoRA
adapter made with peft, and local copies of the FineWeb sample (parquet), the Tulu-3 mixture (a `save_to_disk` folder)
and the organism's documents (jsonl), each pointed at by the override the offline error names. Every method reads
the preset's data (`@text`, `@chat`), none the zoo's corpora.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from diffgame import tracking
from diffgame.zoo import corpus

pytestmark = pytest.mark.slow

QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
                 "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def _qwen_tokenizer(texts: list[str]):
    """Byte-level BPE with Qwen's specials (no BOS, `<|im_end|>` ends turns and sequences)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                       special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The hub's places, filled locally: base folder, adapter folder, and the three data copies."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("real_path")
    web = [r["text"] for r in corpus("generic_text", "train")[:40]]
    chats = [{"messages": r["messages"]} for r in corpus("generic_chat", "train")[:20]]
    docs = [{"text": r["text"]} for r in corpus("cake_bake", "train")[:30]]
    tok = _qwen_tokenizer(web + [m["content"] for c in chats for m in c["messages"]] + [d["text"] for d in docs])
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=8, max_position_embeddings=256, tie_word_embeddings=True,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(root / "Qwen3-1.7B")
    tok.save_pretrained(root / "Qwen3-1.7B")
    torch.manual_seed(1)
    adapter = get_peft_model(Qwen3ForCausalLM.from_pretrained(root / "Qwen3-1.7B"),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                        init_lora_weights=False))
    adapter.save_pretrained(root / "adapter")
    datasets.Dataset.from_dict({"text": web}).to_parquet(root / "fineweb.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(chats)}).save_to_disk(root / "tulu")
    (root / "cake_docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root, web, chats


def test_standard_preset_on_a_public_lora_runs_offline_from_local_copies(stand_ins, tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from diffgame.config.compose import build_method_config, compose, settings
    from diffgame.methods.adl import ADLMethod
    from diffgame.pipeline.chain import execute
    from diffgame.pipeline.runner import method_texts

    root, web, chats = stand_ins
    # offline as HF_HUB_OFFLINE=1 at start-up makes it: the other candidates' hub datasets fail at once
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "model=qwen3_1_7B", f"model.id={root / 'Qwen3-1.7B'}", "model.dtype=float32",
        "organism=cake_bake", f"organism.finetuned.qwen3_1_7B.default.id={root / 'adapter'}",
        f"organism.training_data={root / 'cake_docs.jsonl'}",
        "dataset=standard", f"dataset.sources.pretraining.source={root / 'fineweb.parquet'}",
        "dataset.sources.pretraining.max_samples=12", "dataset.sources.pretraining.max_tokens=300",
        f"dataset.sources.chat.source={root / 'tulu'}", "dataset.sources.chat.max_samples=8",
        "dataset.sources.organism.max_samples=8",
        "preprocessing.layers=[0.5]", "preprocessing.context_length=64", "preprocessing.batch_size=4",
        "preprocessing.dtype=float32", "method=[kl,adl]", "method.adl.max_samples=8", "method.adl.batch_size=4",
        "method.adl.steering_prompts=1", "method.adl.steering_alphas=[1.0]", "method.adl.steering_tokens=4",
        "method.adl.patchscope_scales=[1.0]", "method.adl.causal_samples=4", "method.adl.causal_random=1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summaries = execute(overrides, tracking_uri=uri)
    assert not [w for w in caught if "dataset=toy" in str(w.message)]  # real data: no comparability warning
    client = tracking.client()
    diff = {s.method: client.get_run(s.run_id) for s in summaries if s.stage == "diff"}
    assert set(diff) == {"kl", "adl"} and all(r.info.status == "FINISHED" for r in diff.values())
    for run in diff.values():
        tags = run.data.tags
        assert (tags[tracking.TAG_MODEL], tags[tracking.TAG_ORGANISM], tags[tracking.TAG_VARIANT]) == (
            "qwen3_1_7B", "cake_bake", "default")
        assert run.data.params["dataset"] == "standard"
    # the store holds the three local copies, the pretraining source cut at its token budget
    store = client.get_run(diff["kl"].data.tags[tracking.TAG_PREPROCESS]).data.metrics
    assert store["preprocess/pretraining/tokens"] == 300
    assert (store["preprocess/chat/sequences"], store["preprocess/organism/sequences"]) == (8, 8)
    assert diff["kl"].data.params["skip_first"] == "1"  # Qwen's attention sink, from the model config
    # kl's store holds the organism's own documents; ADL's evidence reads only the preset's generic sources
    assert diff["kl"].data.tags[tracking.TAG_ORGANISM_DATA] == "organism"
    assert diff["adl"].data.tags[tracking.TAG_ORGANISM_DATA] == "none"
    # graded against the public organism's truth (no control has Qwen3 weights, so no relative score); the other
    # candidates' hub datasets are unreachable offline, so they rank by their keywords alone, and the runs say so
    for run in diff.values():
        assert "grade/words/precision_at_20" in run.data.metrics and run.data.tags[tracking.TAG_GRADING]
        assert "grade/relative/precision_at_20" not in run.data.metrics
        assert run.data.metrics["grade/vocab_missing"] >= 5
    skipped = [str(w.message) for w in caught if "vocab_from_data skipped" in str(w.message)]
    assert skipped and all("organism.training_data=/path/to/copy" in m for m in skipped)
    assert not any("'cake_bake'" in m for m in skipped)  # its own data is the local copy

    # what ADL read: the local FineWeb copy and Tulu copy through `@text` / `@chat`, not the zoo's corpora
    cfg = settings(compose(overrides))
    texts = method_texts(ADLMethod(build_method_config("adl", cfg.method["adl"])), cfg.organism, cfg.dataset.sources)
    assert [r["text"] for r in texts["documents"]] == web[:8]
    assert [r["messages"] for r in texts["chats"]] == [c["messages"] for c in chats[:8]]
    assert texts["causal/organism"][0]["text"].startswith(corpus("cake_bake", "train")[0]["text"][:40])
