"""Where a configured model's weights load from: a hub id, a local folder, or a GGUF file converted once.

Zoo models (`zoo:base`, `kind: zoo`) are not resolved here: the planner asks the zoo, which may build them.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffgame.gguf import converted_dir
from diffgame.plan import ModelSource


def resolve_model(mcfg: DictConfig) -> ModelSource:
    """The source of a base model config that is not the zoo's (`model.id` a hub id, folder or `gguf:`)."""
    if mcfg.id.startswith("gguf:"):
        path = converted_dir(mcfg.id.removeprefix("gguf:"), dtype=mcfg.dtype)
        return ModelSource(str(path), identity={"source": mcfg.id})
    if mcfg.gguf_fallback and not Path(mcfg.id).exists() and not _hub_cached(mcfg.id, mcfg.revision):
        path = converted_dir(mcfg.gguf_fallback, dtype=mcfg.dtype)
        print(f"[diffgame] {mcfg.id} is not cached; using the GGUF fallback {mcfg.gguf_fallback} -> {path}")
        return ModelSource(str(path), identity={"source": f"gguf:{mcfg.gguf_fallback}"})
    return ModelSource(str(mcfg.id), revision=mcfg.revision, identity={"source": mcfg.id, "revision": mcfg.revision})


def resolve_finetuned(spec: DictConfig, organism: DictConfig) -> ModelSource:
    """The source of a `full` or `lora` organism weights entry."""
    ident = {"organism": str(organism.name), "variant": str(organism.variant), **OmegaConf.to_container(spec)}
    return ModelSource(str(spec.id), kind=str(spec.kind), revision=spec.revision, subfolder=spec.subfolder,
                       identity=ident)


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        return isinstance(hit, str)
    except Exception:
        return False
