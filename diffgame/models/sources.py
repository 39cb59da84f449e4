"""Where a configured model's weights load from: a hub id, a local folder, or a GGUF file converted once.

Zoo models (`zoo:base`, `kind: zoo`) are not resolved here: the planner asks the zoo, which may build them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from diffgame.errors import ModelError
from diffgame.models.gguf import converted_dir
from diffgame.records.plan import ModelSource
from diffgame.records.schema import FinetunedSpec, ModelConfig, OrganismConfig


def resolve_model(mcfg: ModelConfig) -> ModelSource:
    """The source of a base model config that is not the zoo's (`model.id` a hub id, folder or `gguf:`)."""
    if mcfg.id.startswith("gguf:"):
        path = converted_dir(mcfg.id.removeprefix("gguf:"), dtype=mcfg.dtype)
        return ModelSource(str(path), identity={"source": mcfg.id})
    if mcfg.gguf_fallback and not Path(mcfg.id).exists() and not _hub_cached(mcfg.id, mcfg.revision):
        path = converted_dir(mcfg.gguf_fallback, dtype=mcfg.dtype)
        print(f"[diffgame] {mcfg.id} is not cached; using the GGUF fallback {mcfg.gguf_fallback} -> {path}")
        return ModelSource(str(path), identity={"source": f"gguf:{mcfg.gguf_fallback}"})
    check_hub(str(mcfg.id), mcfg.revision, override="model.id")
    return ModelSource(str(mcfg.id), revision=mcfg.revision, identity={"source": mcfg.id, "revision": mcfg.revision})


def resolve_finetuned(spec: FinetunedSpec, organism: OrganismConfig) -> ModelSource:
    """The source of a `full` or `lora` organism weights entry."""
    ident = {"organism": str(organism.name), "variant": str(organism.variant), **dataclasses.asdict(spec)}
    check_hub(str(spec.id), spec.revision, spec.subfolder,
              override=f"organism.finetuned.<model>.{organism.variant}.id")
    return ModelSource(str(spec.id), kind=str(spec.kind), revision=spec.revision, subfolder=spec.subfolder,
                       identity=ident)


def check_hub(repo_id: str, revision: str | None = None, subfolder: str | None = None, override: str = "model.id"
              ) -> None:
    """A hub id that is neither a local folder nor cached needs the hub: when the hub is unreachable, say so in one
    line at once (instead of a minute of retries) and name the override that points at a local copy."""
    if Path(repo_id).exists() or repo_id.count("/") != 1 or _hub_cached(repo_id, revision, subfolder):
        return
    if not hub_reachable():
        raise ModelError(f"'{repo_id}' is not in the local Hugging Face cache and the hub is unreachable (offline); "
                         f"download it where there is network (`hf download {repo_id}`) and copy the cache "
                         f"(HF_HOME), or point {override} at a local folder")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection; checked once per process. Unreachable (or
    HF_HUB_OFFLINE set) switches huggingface_hub to offline mode, so cached models load without network retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        return False


def _hub_cached(repo_id: str, revision: str | None, subfolder: str | None = None) -> bool:
    """A cached config of the repo: a model's `config.json` or an adapter's `adapter_config.json`."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("config.json", "adapter_config.json"):
            path = f"{subfolder}/{name}" if subfolder else name
            if isinstance(try_to_load_from_cache(repo_id, path, revision=revision), str):
                return True
    except Exception:
        pass
    return False
