"""Tiny random-initialised Llama pairs with a trained BPE tokenizer and a chat template, for store/extract tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORDS = ("the cat sat on a mat while roman concrete set in seawater and the dog ran far away hello there how are "
         "you today i am fine thanks volcanic ash lime mortar harbor crystals").split()


def texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 40, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


def chats(n: int, seed: int = 1) -> list[dict]:
    t = texts(2 * n, seed)
    return [{"messages": [{"role": "user", "content": t[2 * i]}, {"role": "assistant", "content": t[2 * i + 1]}]}
            for i in range(n)]


def make_tokenizer(vocab_size: int = 120):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts(200) + [" ".join(WORDS)],
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_pair(root: Path, n_layers: int = 4, d_model: int = 32, vocab_size: int = 400, noise: float = 0.05,
              organism_vocab_size: int | None = None) -> tuple[Path, Path]:
    """Save a base Llama and an organism (base weights + noise) with the same tokenizer; return both dirs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(vocab_size)
    dirs = []
    for role, vocab in (("base", len(tok)), ("organism", organism_vocab_size or len(tok))):
        torch.manual_seed(0)
        conf = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model,
                           num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(conf)
        if role == "organism":
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(noise * torch.randn(p.shape, generator=g))
        d = root / role
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    return dirs[0], dirs[1]


def write_data(root: Path, n_text: int = 30, n_chat: int = 20) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {"text": root / "text.jsonl", "chat": root / "chat.jsonl", "organism": root / "organism.jsonl"}
    paths["text"].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(n_text, seed=5)))
    paths["chat"].write_text("".join(json.dumps(c) + "\n" for c in chats(n_chat, seed=6)))
    paths["organism"].write_text("".join(json.dumps(c) + "\n" for c in chats(n_chat, seed=7)))  # chat organism
    return paths


def tiny_cfg(base: Path, organism: Path, data: dict[str, Path], tracking_db: Path, **pp):
    """A composed config pointing at the tiny pair and local data files, with a tmp SQLite tracking store."""
    from omegaconf import OmegaConf

    from diffgame import tracking
    from diffgame.config.compose import compose, validate

    cfg = compose([])
    cfg.model = OmegaConf.merge(cfg.model, {"name": "tiny", "id": str(base), "dtype": "float32", "device": "cpu"})
    cfg.organism.finetuned = {"tiny": {"default": {"kind": "full", "id": str(organism)}}}
    cfg.organism.zoo.data = None
    cfg.organism.zoo.format = "chat"
    cfg.organism.training_data = str(data["organism"])
    cfg.dataset.sources = {
        "text": {"source": str(data["text"]), "kind": "text", "split": "train", "text_column": "text",
                 "messages_column": "messages", "max_samples": 200, "max_tokens": None},
        "chat": {"source": str(data["chat"]), "kind": "chat", "split": "train", "text_column": "text",
                 "messages_column": "messages", "max_samples": 200, "max_tokens": None},
        "organism": {"source": "organism", "kind": "text", "split": "train", "text_column": "text",
                     "messages_column": "messages", "max_samples": 100, "max_tokens": None}}
    cfg.preprocessing = OmegaConf.merge(cfg.preprocessing, {"layers": [1, 3], "context_length": 64, "batch_size": 4,
                                                            "accelerator": "cpu", **pp})
    validate(cfg)  # fills schema defaults of the nodes set above
    tracking.set_uri(f"sqlite:///{tracking_db}")
    return cfg


def write_config_dir(root: Path, n_organisms: int = 4, n_text: int = 40, n_chat: int = 24) -> tuple[Path, list[str]]:
    """A user config folder (`--config-dir`) as a researcher would write one: `model=tiny` (a tiny random base saved
    hub-style), `dataset=tiny` (local files) and `n_organisms` organisms `tiny_<i>` (the base plus noise of their
    own); returns the folder and the organism names."""
    import yaml

    data = write_data(root / "data", n_text=n_text, n_chat=n_chat)
    conf = root / "configs"
    for group in ("model", "dataset", "organism"):
        (conf / group).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_organisms):
        base, org = make_pair(root / f"pair{i}", noise=0.05 * (i + 1))
        name = f"tiny_{i}"
        names.append(name)
        (conf / "organism" / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "description": f"tiny random organism {i}", "type": "custom",
            "finetuned": {"tiny": {"default": {"kind": "full", "id": str(org)}}},
            "training_data": str(data["organism"]), "zoo": {"data": None, "format": "chat"}}))
    (conf / "model" / "tiny.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "id": str(root / "pair0" / "base"), "dtype": "float32", "device": "cpu"}))
    source = {"split": "train", "text_column": "text", "messages_column": "messages", "max_tokens": None}
    (conf / "dataset" / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", "sources": {
        "text": {"source": str(data["text"]), "kind": "text", "max_samples": 200, **source},
        "chat": {"source": str(data["chat"]), "kind": "chat", "max_samples": 200, **source},
        "organism": {"source": "organism", "kind": "text", "max_samples": 100, **source}}}))
    return conf, names


TINY_OVERRIDES = ["model=tiny", "dataset=tiny", "preprocessing.layers=[1,3]", "preprocessing.context_length=64",
                  "preprocessing.batch_size=4", "preprocessing.accelerator=cpu"]
"""What a run on `write_config_dir`'s folder sets beside its organism and methods."""
