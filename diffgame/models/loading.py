"""Load a base model and its organism from resolved sources (`diffgame.records.plan.ModelSource`), and reach their parts.

`decoder_layers`, `final_norm` and `unembedding` give one accessor across Llama, Gemma 2/3, Qwen2/3,
Mistral and GPT-2, so methods never branch on architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffgame.errors import ConfigError, ModelError
from diffgame.records.plan import ModelSource, PairSources
from diffgame.records.schema import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelHandle:
    """A loaded causal LM with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    role: str
    """`base` or `organism`."""
    name: str
    """Config name (`toy`, `gemma3_1B`) or organism name."""
    identity: dict = field(default_factory=dict)
    """What the fingerprint covers: source, revision, adapter, zoo run id."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))


# --- architecture accessors -----------------------------------------------------------------------
def _core(model: nn.Module) -> nn.Module:
    """The transformer body under any LM head / peft wrapper."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    for path in ("model.language_model", "model", "transformer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if hasattr(obj, "layers") or hasattr(obj, "h"):
            return obj
    raise ModelError(f"unsupported architecture {type(model).__name__}: no decoder layers found")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order; block i's output is the residual stream after layer i."""
    core = _core(model)
    return core.layers if hasattr(core, "layers") else core.h


def final_norm(model: nn.Module) -> nn.Module:
    core = _core(model)
    for name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(core, name):
            return getattr(core, name)
    raise ModelError(f"unsupported architecture {type(model).__name__}: no final norm found")


def unembedding(model: nn.Module) -> nn.Module:
    """The LM head (a Linear from d_model to vocab)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    head = model.get_output_embeddings()
    if head is None:
        raise ModelError(f"{type(model).__name__} has no LM head")
    return head


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final (already normed) hidden states [n, D] -> [n, V], with Gemma's final logit
    soft-capping when the model's config sets it."""
    logits = unembedding(model)(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def logits_from_residual(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logit lens: final norm then the (soft-capped) LM head."""
    return lm_logits(model, final_norm(model)(h))


# --- loading ---------------------------------------------------------------------------------------
def pick_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def _load_kwargs(mcfg: ModelConfig) -> dict:
    kw: dict[str, Any] = {"dtype": DTYPES[mcfg.dtype], "trust_remote_code": bool(mcfg.trust_remote_code)}
    if mcfg.attn_implementation:
        kw["attn_implementation"] = mcfg.attn_implementation
    if mcfg.device_map:
        kw["device_map"] = mcfg.device_map
    return kw


def _from_pretrained(source: str, mcfg: ModelConfig, revision: str | None = None, subfolder: str | None = None):
    from transformers import AutoModelForCausalLM

    kw = _load_kwargs(mcfg)
    if revision:
        kw["revision"] = revision
    if subfolder:
        kw["subfolder"] = subfolder
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kw)
    except OSError as e:
        raise ModelError(_not_found_message(source, e)) from None
    if not mcfg.device_map:
        model = model.to(pick_device(mcfg.device))
    return model.eval()


def _not_found_message(source: str, err: Exception) -> str:
    if Path(source).exists():
        return f"cannot load model from {source}: {str(err).splitlines()[0]}"
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        return (f"model path '{source}' does not exist; set model.id (or the organism's "
                f"finetuned.<model>.<variant>.id) to an existing directory or a hub id like owner/name")
    return (f"model '{source}' is not a local directory and is not in the Hugging Face cache (offline?); "
            f"download it where the hub is reachable, or set model.id=/path/to/local/dir "
            f"(or the organism's finetuned.<model>.<variant>.id)")


def _load_tokenizer(source: str, mcfg: ModelConfig, revision: str | None = None, subfolder: str | None = None):
    from transformers import AutoTokenizer

    kw = {"subfolder": subfolder} if subfolder else {}
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=bool(mcfg.trust_remote_code),
                                            **kw)
    except OSError as e:
        raise ModelError(_not_found_message(source, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    end = mcfg.end_of_turn
    if end and tok.convert_tokens_to_ids(end) in (None, tok.unk_token_id):
        raise ConfigError(f"model.end_of_turn={end!r} is not a token of {source}'s tokenizer; special tokens: "
                          f"{', '.join(tok.all_special_tokens[:12])}")
    # what render_chat and generation read off the tokenizer (it travels where the config does not)
    tok.diffgame_template_kwargs = dict(mcfg.chat_template_kwargs or {})
    tok.diffgame_end_of_turn = tok.convert_tokens_to_ids(end) if end else None
    return tok


def end_ids(tokenizer) -> list[int]:
    """Token ids that end a generated reply: end of sequence, and the model's end-of-turn token when configured."""
    return sorted({i for i in (tokenizer.eos_token_id, getattr(tokenizer, "diffgame_end_of_turn", None))
                   if i is not None})


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end a sampled reply: every special token (an end of turn, a new turn) and `end_ids`."""
    return (set(getattr(tokenizer, "all_special_ids", [])) | set(end_ids(tokenizer))) - {None}


def load_model(source: ModelSource, mcfg: ModelConfig, base: ModelSource | None = None):
    """A causal LM from a resolved source: a full model, or a LoRA adapter merged into a fresh copy of `base`."""
    if source.kind != "lora":
        return _from_pretrained(source.path, mcfg, revision=source.revision, subfolder=source.subfolder)
    from peft import PeftModel

    if base is None:
        raise ModelError(f"LoRA adapter {source.path} needs its base model")
    model = _from_pretrained(base.path, mcfg, revision=base.revision, subfolder=base.subfolder)
    kw = {k: v for k, v in (("revision", source.revision), ("subfolder", source.subfolder)) if v}
    try:
        return PeftModel.from_pretrained(model, source.path, **kw).merge_and_unload().eval()
    except OSError as e:
        raise ModelError(_not_found_message(source.path, e)) from None
    except (ValueError, RuntimeError, KeyError) as e:  # target modules or shapes of another base
        raise ModelError(f"LoRA adapter {source.path} does not fit base model {base.path} ({mcfg.name}): "
                         f"{str(e).strip().splitlines()[0][:300]}; pick the adapter trained on this base") from None


def load_tokenizer(source: ModelSource, mcfg: ModelConfig, fallback: ModelSource | None = None):
    """The source's tokenizer; a LoRA adapter or a checkpoint saved without tokenizer files uses `fallback`'s."""
    if source.kind == "lora" and fallback is not None:
        source = fallback
    try:
        return _load_tokenizer(source.path, mcfg, revision=source.revision, subfolder=source.subfolder)
    except (ModelError, ValueError):
        if fallback is None or fallback == source:
            raise
        return _load_tokenizer(fallback.path, mcfg, revision=fallback.revision, subfolder=fallback.subfolder)


def load_base(pair: PairSources) -> ModelHandle:
    return load_handle(pair.base, pair.model, "base", pair.base_name)


def load_handle(source: ModelSource, mcfg: ModelConfig, role: str = "base", name: str | None = None) -> ModelHandle:
    """One full model and its tokenizer, e.g. a base model alone."""
    model = load_model(source, mcfg)
    return ModelHandle(model, load_tokenizer(source, mcfg), role, name or str(mcfg.name), source.identity)


def load_organism(pair: PairSources) -> ModelHandle:
    """The organism: a full model (with its own tokenizer, so `check_compatible` can refuse one finetuned from
    another base) or a LoRA adapter merged into a fresh copy of the base."""
    model = load_model(pair.organism, pair.model, base=pair.base)
    tok = load_tokenizer(pair.organism, pair.model, fallback=pair.base)
    return ModelHandle(model, tok, "organism", pair.organism_name, pair.organism.identity)


def load_pair(pair: PairSources) -> tuple[ModelHandle, ModelHandle]:
    """Base and organism, checked to share one vocabulary."""
    base = load_base(pair)
    org = load_organism(pair)
    check_compatible(base, org)
    return base, org


def resolve_layers(layers: list[float | int], n_layers: int, key: str = "preprocessing.layers") -> list[int]:
    """Map layers given as fractions of depth (0.5) or indices (6, -1) to sorted unique indices; `key` is the
    config key an error names."""
    out = set()
    for layer in layers:
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise ConfigError(f"layer fraction {layer} is outside [0, 1]; fix {key}")
            idx = min(int(layer * n_layers), n_layers - 1)
        else:
            idx = int(layer)
            if idx < 0:
                idx += n_layers
            if not 0 <= idx < n_layers:
                raise ConfigError(
                    f"layer {int(layer)} is out of range for a model with {n_layers} layers "
                    f"(valid: 0..{n_layers - 1}, or fractions like 0.5); fix {key}")
        out.add(idx)
    return sorted(out)


def vocab_extends(base_vocab: dict[str, int], org_vocab: dict[str, int]) -> bool:
    """The organism's vocabulary is the base's (same id for every base token) plus tokens appended after it, as
    `add_tokens` + `resize_token_embeddings` make; such a pair is compared on the shared vocabulary."""
    top = max(base_vocab.values(), default=-1)
    return (all(org_vocab.get(t) == i for t, i in base_vocab.items())
            and all(i > top for t, i in org_vocab.items() if t not in base_vocab))


def check_compatible(base: ModelHandle, org: ModelHandle) -> None:
    """Refuse a pair whose tokenizers differ: diffing needs the same token stream through both. An organism whose
    vocabulary extends the base's is accepted: its extra output rows are left out of every comparison."""
    vb, vo = base.tokenizer.get_vocab(), org.tokenizer.get_vocab()
    if vb != vo and not vocab_extends(vb, vo):
        only_b = len(set(vb) - set(vo))
        only_o = len(set(vo) - set(vb))
        raise ModelError(
            f"tokenizers differ between base '{base.name}' ({len(vb)} tokens) and organism '{org.name}' "
            f"({len(vo)} tokens; {only_b} only in base, {only_o} only in organism); "
            f"pick an organism finetuned from this base model")
    eb = unembedding(base.model).weight.shape[0]
    eo = unembedding(org.model).weight.shape[0]
    if eo < eb:
        raise ModelError(f"the organism '{org.name}' has fewer output rows ({eo}) than base '{base.name}' ({eb}); "
                         f"pick an organism finetuned from this base model")
