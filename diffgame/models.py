"""Load a base model and its organism (hub id, local dir, LoRA adapter, zoo run, GGUF), and reach their parts.

`decoder_layers`, `final_norm` and `unembedding` give one accessor across Llama, Gemma 2/3, Qwen2/3,
Mistral and GPT-2, so methods never branch on architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffgame.errors import ModelError

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


def logits_from_residual(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logit lens: final norm then unembedding, with Gemma's final logit soft-capping if configured."""
    logits = unembedding(model)(final_norm(model)(h))
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# --- loading ---------------------------------------------------------------------------------------
def pick_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def _load_kwargs(mcfg: DictConfig) -> dict:
    kw: dict[str, Any] = {"dtype": DTYPES[mcfg.dtype], "trust_remote_code": bool(mcfg.trust_remote_code)}
    if mcfg.attn_implementation:
        kw["attn_implementation"] = mcfg.attn_implementation
    if mcfg.device_map:
        kw["device_map"] = mcfg.device_map
    return kw


def _from_pretrained(source: str, mcfg: DictConfig, revision: str | None = None, subfolder: str | None = None):
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


def _load_tokenizer(source: str, mcfg: DictConfig, revision: str | None = None, subfolder: str | None = None):
    from transformers import AutoTokenizer

    kw = {"subfolder": subfolder} if subfolder else {}
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=bool(mcfg.trust_remote_code),
                                            **kw)
    except OSError as e:
        raise ModelError(_not_found_message(source, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_base_source(cfg: DictConfig) -> tuple[str, dict]:
    """Local path or hub id of the base model, and its identity for fingerprints."""
    mcfg = cfg.model
    if mcfg.id == "zoo:base":
        from diffgame.zoo import locate

        path, run_id = locate(cfg, organism=None)
        return str(path), {"source": "zoo:base", "zoo_run": run_id, "zoo_size": cfg.zoo.size}
    if mcfg.id.startswith("gguf:"):
        from diffgame.gguf import converted_dir

        path = converted_dir(mcfg.id.removeprefix("gguf:"), dtype=mcfg.dtype)
        return str(path), {"source": mcfg.id}
    if mcfg.gguf_fallback and not Path(mcfg.id).exists() and not _hub_cached(mcfg.id, mcfg.revision):
        from diffgame.gguf import converted_dir

        path = converted_dir(mcfg.gguf_fallback, dtype=mcfg.dtype)
        print(f"[diffgame] {mcfg.id} is not cached; using the GGUF fallback {mcfg.gguf_fallback} -> {path}")
        return str(path), {"source": f"gguf:{mcfg.gguf_fallback}"}
    return mcfg.id, {"source": mcfg.id, "revision": mcfg.revision}


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        return isinstance(hit, str)
    except Exception:
        return False


def finetuned_spec(cfg: DictConfig) -> DictConfig:
    """The organism's weights entry for this base model and variant, or a ConfigError listing what exists."""
    from diffgame.config import weights_spec

    return weights_spec(cfg)


def organism_identity(cfg: DictConfig) -> dict:
    """Identity of the organism's weights for fingerprints (resolving a zoo organism to its run)."""
    spec = finetuned_spec(cfg)
    ident = {"organism": cfg.organism.name, "variant": cfg.organism.variant, **OmegaConf.to_container(spec)}
    if spec.kind == "zoo":
        from diffgame.zoo import locate

        _, run_id = locate(cfg, organism=cfg.organism.name)
        ident["zoo_run"] = run_id
    return ident


def load_base(cfg: DictConfig) -> ModelHandle:
    source, ident = resolve_base_source(cfg)
    model = _from_pretrained(source, cfg.model, revision=cfg.model.revision if source == cfg.model.id else None)
    tok = _load_tokenizer(source, cfg.model, revision=cfg.model.revision if source == cfg.model.id else None)
    return ModelHandle(model, tok, "base", cfg.model.name, ident)


def load_organism(cfg: DictConfig, base_source: str | None = None) -> ModelHandle:
    """Load the organism: a zoo run, a full model, or a LoRA adapter merged into a fresh copy of the base."""
    spec = finetuned_spec(cfg)
    ident = organism_identity(cfg)
    if spec.kind == "zoo":
        from diffgame.zoo import locate

        path, _ = locate(cfg, organism=cfg.organism.name)
        model = _from_pretrained(str(path), cfg.model)
        tok = _load_tokenizer(str(path), cfg.model)
    elif spec.kind == "full":
        model = _from_pretrained(spec.id, cfg.model, revision=spec.revision, subfolder=spec.subfolder)
        try:  # its own tokenizer, so `check_compatible` can refuse a model finetuned from another base
            tok = _load_tokenizer(spec.id, cfg.model, revision=spec.revision, subfolder=spec.subfolder)
        except (ModelError, ValueError):  # a checkpoint saved without tokenizer files
            tok = _load_tokenizer(base_source or resolve_base_source(cfg)[0], cfg.model)
    else:  # lora
        from peft import PeftModel

        source = base_source or resolve_base_source(cfg)[0]
        base = _from_pretrained(source, cfg.model, revision=cfg.model.revision if source == cfg.model.id else None)
        kw = {k: v for k, v in (("revision", spec.revision), ("subfolder", spec.subfolder)) if v}
        try:
            model = PeftModel.from_pretrained(base, spec.id, **kw).merge_and_unload().eval()
        except OSError as e:
            raise ModelError(_not_found_message(spec.id, e)) from None
        except (ValueError, RuntimeError, KeyError) as e:  # target modules or shapes of another base
            raise ModelError(f"LoRA adapter {spec.id} does not fit base model {source} ({cfg.model.name}): "
                             f"{str(e).strip().splitlines()[0][:300]}; pick the adapter trained on this base") from None
        tok = _load_tokenizer(source, cfg.model)
    return ModelHandle(model, tok, "organism", cfg.organism.name, ident)


def load_pair(cfg: DictConfig) -> tuple[ModelHandle, ModelHandle]:
    """Base and organism, checked to share one vocabulary."""
    base = load_base(cfg)
    org = load_organism(cfg, base_source=resolve_base_source(cfg)[0])
    check_compatible(base, org)
    return base, org


def check_compatible(base: ModelHandle, org: ModelHandle) -> None:
    """Refuse a pair whose tokenizers differ: diffing needs the same token stream through both."""
    vb, vo = base.tokenizer.get_vocab(), org.tokenizer.get_vocab()
    if vb != vo:
        only_b = len(set(vb) - set(vo))
        only_o = len(set(vo) - set(vb))
        raise ModelError(
            f"tokenizers differ between base '{base.name}' ({len(vb)} tokens) and organism '{org.name}' "
            f"({len(vo)} tokens; {only_b} only in base, {only_o} only in organism); "
            f"pick an organism finetuned from this base model")
    eb = unembedding(base.model).weight.shape[0]
    eo = unembedding(org.model).weight.shape[0]
    if eb != eo:
        raise ModelError(f"vocabulary sizes differ between base '{base.name}' ({eb} output rows) and organism "
                         f"'{org.name}' ({eo} output rows); pick an organism finetuned from this base model")
