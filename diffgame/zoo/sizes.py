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
    """`model` config whose (pretrained) base the organisms finetune, with LoRA, instead of training one (smol).

    The base resolves like `load_base` does (hub id, else its GGUF fallback; `model.id=/dir` overrides it)."""
    organism_rows: int | None = None
    """Organism training rows used (None: all); a CPU budget for big bases, whose steps see few rows anyway."""
    check_rows: int | None = None
    """Held-out and generic rows per behaviour-check loss (None: every held-out row and 100 generic ones)."""


SIZES: dict[str, ZooSize] = {
    "micro": ZooSize("micro", vocab_size=2048, n_layers=4, d_model=64, n_heads=4, d_ff=192, seq_len=64,
                     batch_size=32, base_steps=200, base_lr=5e-3, organism_steps=160, organism_lr=2e-3),
    "small": ZooSize("small", vocab_size=2560, n_layers=4, d_model=128, n_heads=4, d_ff=384, seq_len=128,
                     batch_size=16, base_steps=240, base_lr=3e-3, organism_steps=120, organism_lr=2e-3),
    # LoRA organisms on SmolLM2-135M-Instruct; the architecture fields restate that model (nothing is built from
    # them). `smol` fits a 2-core CPU in minutes per organism; `smol_gpu` is the budget for an accelerator.
    "smol": ZooSize("smol", vocab_size=49152, n_layers=30, d_model=576, n_heads=9, d_ff=1536, seq_len=64,
                    batch_size=4, base_steps=0, base_lr=0.0, organism_steps=30, organism_lr=1e-4, lora_lr=2e-3,
                    check_samples=8, check_new_tokens=24, pretrained_base="smollm2_135m", organism_rows=256,
                    check_rows=16),
    "smol_gpu": ZooSize("smol_gpu", vocab_size=49152, n_layers=30, d_model=576, n_heads=9, d_ff=1536, seq_len=256,
                        batch_size=16, base_steps=0, base_lr=0.0, organism_steps=400, organism_lr=1e-4, lora_lr=1e-3,
                        check_samples=48, check_new_tokens=48, pretrained_base="smollm2_135m"),
}


def model_bytes(size: ZooSize) -> int:
    """Bytes of a from-scratch base of `size` as saved (`new_model`'s tied Llama in fp32) plus 1 MB for its tokenizer
    and config files: what the zoo checks the disk for before training one."""
    d, f = size.d_model, size.d_ff
    params = size.vocab_size * d + size.n_layers * (4 * d * d + 3 * d * f + 2 * d) + d
    return 4 * params + (1 << 20)


def get_size(name: str) -> ZooSize:
    """The size table entry, or a ConfigError naming the sizes that exist."""
    if name not in SIZES:
        raise ConfigError(f"unknown zoo size '{name}'; valid: {', '.join(SIZES)}; set zoo.size or --size")
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
