"""Where a configured base and organism load from: zoo models are located through the zoo (built beforehand by the
pipeline's zoo stage), every other kind (hub id, local folder, GGUF, LoRA adapter) through `diffgame.models.sources`.

The planner resolves a configuration's pair once; the app and the game's toolbox resolve one to load both models.
"""

from __future__ import annotations

import dataclasses

from diffgame.models.sources import resolve_finetuned, resolve_model
from diffgame.records.plan import ModelSource, PairSources
from diffgame.records.schema import RootConfig
from diffgame.zoo.built import locate


def resolve_base(cfg: RootConfig) -> ModelSource:
    """Where the base model of `cfg` loads from (the zoo's base is located)."""
    if cfg.model.id == "zoo:base":
        path, run_id = locate(cfg)
        return ModelSource(str(path), identity={"source": "zoo:base", "zoo_run": run_id, "zoo_size": cfg.zoo.size})
    return resolve_model(cfg.model)


def resolve_pair(cfg: RootConfig) -> PairSources:
    """Where the base and the organism of `cfg` load from (zoo models are located)."""
    base = resolve_base(cfg)
    spec = cfg.organism.weights(str(cfg.model.name))
    if spec.kind == "zoo":
        path, run_id = locate(cfg, cfg.organism)
        ident = {"organism": str(cfg.organism.name), "variant": str(cfg.organism.variant),
                 **dataclasses.asdict(spec), "zoo_run": run_id}
        organism = ModelSource(str(path), identity=ident)
    else:
        organism = resolve_finetuned(spec, cfg.organism)
    return PairSources(cfg.model, base, organism, str(cfg.model.name), str(cfg.organism.name))
