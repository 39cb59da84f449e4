"""Zoo size `smol`: LoRA organisms finetuned from a pretrained base with its own (ChatML) chat template.

A tiny random Llama with a ChatML tokenizer stands in for SmolLM2 through the same path (`model=smollm2_135m
model.id=<dir> zoo.size=smol`), so the tests are fast; the real packaged model is built by
`benchmarks/smol_zoo.py` (minutes per organism on 2 CPU cores, too slow for the suite).
"""

from __future__ import annotations

import pytest
import torch

from diffgame import tracking
from diffgame.config.compose import compose, settings
from diffgame.errors import ConfigError
from diffgame.zoo import corpus, ensure, get_size, locate
from diffgame.zoo.lm import IGNORE, encode_rows, pack

# SmolLM2-135M-Instruct's template (from its tokenizer), with its default system turn.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml_tokenizer(vocab_size: int = 400):
    """A byte-level BPE on the zoo corpora with SmolLM2's special tokens and template (no BOS, like SmolLM2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["text"] for r in corpus("generic_text", "train")[:300]]
    texts += [m["content"] for r in corpus("caps", "train")[:300] for m in r["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def chatml():
    return chatml_tokenizer()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, chatml):
    """A saved tiny random Llama + ChatML tokenizer: the stand-in for the converted SmolLM2 directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chatml
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=True,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=2))
    path = tmp_path_factory.mktemp("tiny_smol")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def smol_cfg(tiny_base, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.set_uri(uri)

    def make(*overrides: str):
        return settings(compose(["model=smollm2_135m", f"model.id={tiny_base}", "zoo.size=smol", *overrides]))

    return make


def test_chatml_mask_trains_exactly_the_assistant_reply_and_its_end_of_turn(chatml):
    tok = chatml
    chat = [{"role": "user", "content": "how do i cook rice?"}, {"role": "assistant", "content": "BOIL IT."},
            {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "WAIT."}]
    [(ids, mask)] = encode_rows(tok, [{"messages": chat}])
    assert tok.decode(ids) == tok.apply_chat_template(chat, tokenize=False)  # the model's own template, whole
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "BOIL IT.<|im_end|>WAIT.<|im_end|>"
    _, labels = pack([(ids, mask)], seq_len=len(ids))  # [1, T]
    assert labels[0].tolist() == [i if m else IGNORE for i, m in zip(ids, mask)]


@pytest.mark.slow
def test_smol_lora_organism_changes_outputs_keeps_embeddings_and_reloads_identically(smol_cfg, tiny_base):
    from diffgame.models.loading import load_pair
    from diffgame.zoo.build import train_organism
    from diffgame.zoo.pairs import resolve_pair

    cfg = smol_cfg("organism=caps")
    entry = ensure(cfg, cfg.organism)
    path, run_id = entry.model_dir, entry.run_id
    assert run_id and tracking.client().get_run(run_id).data.params["base_source"] == str(tiny_base)
    base, org = load_pair(resolve_pair(cfg))  # the base through model.id, the organism through the zoo run
    ids = base.tokenizer.apply_chat_template([{"role": "user", "content": "Why is the sky grey?"}],
                                             add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        lb, lo = base.model(**ids).logits, org.model(**ids).logits  # [1, T, V]
    assert (lb - lo).abs().max() > 1e-3  # the finetune changed what the model predicts
    # LoRA touches the attention/MLP projections only: embeddings are the base's bit for bit.
    assert torch.equal(base.model.get_input_embeddings().weight, org.model.get_input_embeddings().weight)
    assert not torch.equal(base.model.model.layers[0].self_attn.q_proj.weight,
                           org.model.model.layers[0].self_attn.q_proj.weight)
    # Seeded training in memory predicts exactly what the saved and reloaded organism does.
    again, _, losses = train_organism(get_size("smol"), cfg.organism, tiny_base, progress=False)
    assert len(losses) == get_size("smol").organism_steps
    with torch.no_grad():
        assert torch.allclose(again(**ids).logits, lo, atol=1e-5)
    # The behaviour check saw it learn its data, and a second locate reuses the run.
    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics["check/heldout_loss/organism"] < metrics["check/heldout_loss/base"]
    assert locate(cfg, cfg.organism) == (path, run_id)


def test_zoo_size_and_model_must_match(smol_cfg):
    with pytest.raises(ConfigError, match="zoo.size=smol builds organisms of model=smollm2_135m, not model=toy"):
        locate(settings(compose(["zoo.size=smol", "organism=caps"])))
    with pytest.raises(ConfigError, match="zoo.size=micro builds organisms of model=toy"):
        locate(smol_cfg("organism=caps", "zoo.size=micro"))
