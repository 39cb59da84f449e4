"""Zoo sizes: one typed table of architecture and training budgets per size (`zoo.size`)."""

from __future__ import annotations

from dataclasses import dataclass

from diffgame.errors import ConfigError


@dataclass(frozen=True)
class ZooSize:
    """Architecture and training budget of one zoo size; zoo fingerprints cover every field."""

    name: str
    vocab_size: int
    """BPE vocabulary including special tokens."""
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    seq_len: int
    """Tokens per packed training block."""
    batch_size: int
    base_steps: int
    base_lr: float
    organism_steps: int
    organism_lr: float
    lora_lr: float = 3e-3
    """Learning rate when an organism trains a LoRA adapter (`zoo.lora: true`)."""
    seed: int = 0
    check_samples: int = 24
    """Sampled replies per behaviour check."""
    check_new_tokens: int = 40
    pretrained_base: str | None = None
    """A pretrained base (hub id or local dir) to finetune organisms from instead of training one (e.g. smol)."""


SIZES: dict[str, ZooSize] = {
    "micro": ZooSize("micro", vocab_size=1536, n_layers=4, d_model=64, n_heads=4, d_ff=192, seq_len=64,
                     batch_size=32, base_steps=200, base_lr=5e-3, organism_steps=50, organism_lr=3e-3),
    "small": ZooSize("small", vocab_size=2560, n_layers=4, d_model=128, n_heads=4, d_ff=384, seq_len=128,
                     batch_size=16, base_steps=240, base_lr=3e-3, organism_steps=40, organism_lr=2e-3),
}


def get_size(name: str) -> ZooSize:
    """The size table entry, or a ConfigError naming the sizes that exist."""
    if name not in SIZES:
        later = " ('smol', LoRA organisms on SmolLM2, is not available yet)" if name == "smol" else ""
        raise ConfigError(f"unknown zoo size '{name}'{later}; valid: {', '.join(SIZES)}; set zoo.size or --size")
    return SIZES[name]


def new_model(size: ZooSize, tokenizer):
    """A freshly initialised Llama for `size`, with tied embeddings, seeded by `size.seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size.d_model, intermediate_size=size.d_ff,
                      num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads,
                      num_key_value_heads=size.n_heads, max_position_embeddings=4 * size.seq_len,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(size.seed)
    return LlamaForCausalLM(cfg)
