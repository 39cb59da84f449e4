"""The zoo stage: build (or reuse) the embedded zoo's models before anything is planned, for `diffgame zoo build`
and for each configuration `diffgame run` plans, so planning only ever locates models that exist.

The config tree says which organisms a size holds; the zoo gets them typed (`diffgame.zoo.build_models`).
"""

from __future__ import annotations

from diffgame.config import configtree
from diffgame.errors import ConfigError
from diffgame.records.schema import CONTROL, RootConfig
from diffgame.zoo import ZooEntry, build_models, ensure, get_size
from diffgame.zoo.build import model_name


def build_zoo(size: str = "small", names: list[str] | None = None, progress: bool = True,
              variant: str | None = None) -> list[ZooEntry]:
    """Train (or reuse) the base and the named zoo organisms (all when `names` is empty) for `size`, each as its
    `variant` when given (`mix1-0p0`: the recipe with nothing mixed in)."""
    sz = get_size(size)
    model = model_name(sz)
    known = configtree.zoo_organisms(model)
    names = list(names) if names else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown zoo organism '{unknown[0]}'; known: {', '.join(known)}")
    # all read first (config errors before training), as finetuned on this size's base (its own mix, if any)
    organisms = [configtree.organism_settings(n, model, variant) for n in names]
    for organism in organisms:
        if organism.weights(model).kind != "zoo":  # an unknown variant is a ConfigError listing the known ones
            raise ConfigError(f"variant '{organism.variant}' of organism '{organism.name}' on model '{model}' is not "
                              "built by the zoo; `diffgame zoo build --variant` takes the zoo's (mix1-XpY, ...)")
    base = configtree.model_settings(sz.pretrained_base) if sz.pretrained_base else None
    return build_models(size, organisms, base, progress=progress)


def build_for(cfg: RootConfig, control: bool = False) -> list[ZooEntry]:
    """The zoo models `cfg` loads, built when missing: its base when it is the zoo's, its organism when its weights
    are `kind: zoo`, and with `control` the control organism on the same base (grading's reference)."""
    entries = []
    if cfg.model.id == "zoo:base":
        entries.append(ensure(cfg))
    model = str(cfg.model.name)
    organisms = [cfg.organism]
    if control and cfg.organism.name != CONTROL and cfg.organism.has_ground_truth:
        organism = configtree.organism_settings(CONTROL, model)
        organisms += [organism] if model in organism.finetuned else []
    for organism in organisms:
        if organism.weights(model).kind == "zoo":
            entries.append(ensure(cfg, organism))
    return entries
