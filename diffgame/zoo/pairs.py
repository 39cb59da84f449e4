"""Where a configured base and organism load from: zoo models are located through the zoo (and built when missing),
every other kind (hub id, local folder, GGUF, LoRA adapter) through `diffgame.models.sources`.

The planner resolves a configuration's pair once; the app and the game's toolbox resolve one to load both models.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from diffgame.config import configtree
from diffgame.models.sources import resolve_finetuned, resolve_model
from diffgame.records.plan import ModelSource, PairSources
from diffgame.zoo.registry import locate


def resolve_base(cfg: DictConfig) -> ModelSource:
    """Where the base model of `cfg` loads from (the zoo's base is located, and built when missing)."""
    if cfg.model.id == "zoo:base":
        path, run_id = locate(cfg, organism=None)
        return ModelSource(str(path), identity={"source": "zoo:base", "zoo_run": run_id, "zoo_size": cfg.zoo.size})
    return resolve_model(cfg.model)


def resolve_pair(cfg: DictConfig) -> PairSources:
    """Where the base and the organism of `cfg` load from (zoo models are located, and built when missing)."""
    base = resolve_base(cfg)
    spec = configtree.weights_spec(cfg.organism, str(cfg.model.name))
    if spec.kind == "zoo":
        path, run_id = locate(cfg, organism=str(cfg.organism.name))
        ident = {"organism": str(cfg.organism.name), "variant": str(cfg.organism.variant),
                 **OmegaConf.to_container(spec), "zoo_run": run_id}
        organism = ModelSource(str(path), identity=ident)
    else:
        organism = resolve_finetuned(spec, cfg.organism)
    return PairSources(cfg.model, base, organism, str(cfg.model.name), str(cfg.organism.name))
