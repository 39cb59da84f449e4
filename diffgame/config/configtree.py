"""The config tree on disk: where it is (the built-in tree plus user folders on a search path), which options each
group has, and single option files read and checked alone (an organism, a model) without composing the whole config.

The built-in tree ships inside the package (`diffgame.experiments`, the repository's `experiments/` folder); user
folders with the same layout (`organism/my_org.yaml`, `method/...`) are searched after it, from `--config-dir` or
`DIFFGAME_CONFIG_PATH` (folders separated by the OS path separator), so `organism=my_org` finds a user's organism.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffgame.config.validate import check_node, typed
from diffgame.data.files import BUILTIN_ENV, CONFIG_PATH_ENV, builtin_dir, find_data_file, search_path, user_dirs
from diffgame.errors import ConfigError
from diffgame.records.schema import CONTROL, FinetunedSpec, ModelConfig, OrganismConfig

__all__ = ["BUILTIN_ENV", "CONFIG_PATH_ENV", "CONTROL", "GROUPS", "builtin_dir", "find_data_file", "search_path",
           "user_dirs"]  # the folders live in `diffgame.data.files`: data files resolve against them below this tier

GROUPS = ("model", "organism", "dataset", "method", "launcher")
"""Config groups selected by name (`organism=caps`), one folder each in the tree."""


def add_user_dir(path: str | Path) -> None:
    """Put a user config folder on the search path for this process and its children (`--config-dir`)."""
    dirs = [str(Path(path).expanduser().resolve())] + [str(d) for d in user_dirs()]
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join(dict.fromkeys(dirs))


def option_file(group: str, name: str) -> Path | None:
    """The YAML file of option `name` of `group` (the first on the search path), or None."""
    for root in search_path():
        path = root / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def group_options(group: str) -> list[str]:
    """Sorted option names of a config group across the search path."""
    return sorted({p.stem for root in search_path() for p in (root / group).glob("*.yaml")})


def load_option(group: str, name: str) -> DictConfig:
    """An option's YAML as written (no schema defaults), or a ConfigError listing the known options."""
    path = option_file(group, name)
    if path is None:
        raise ConfigError(f"unknown {group} '{name}'; known: {', '.join(group_options(group))}")
    node = OmegaConf.load(path)
    OmegaConf.set_struct(node, False)
    return node


def organism_node(name: str, model: str | None = None, variant: str | None = None) -> DictConfig:
    """An organism's config, checked against its schema with defaults filled; with `model`, its description and
    keywords are what that base's finetuning taught and its data what it was trained on (`for_base`), for `variant`
    when given (a `mix1-XpY` variant too)."""
    node = load_option("organism", name)
    check_node(node, OrganismConfig, "organism")
    if variant is not None:
        node.variant = variant
    return for_base(node, model) if model is not None else node


MIX_VARIANT = re.compile(r"mix(chat)?1-(\d+)p(\d+)")
"""A mixing variant named like the public organisms' (`mix1-0p5` … `mix1-2p0`): pretraining documents mixed into the
finetuning at that ratio to the organism's own rows (`mix1-1p0`: one to one); `mixchat1-XpY` mixes the base's
documents and chats half and half (`ZooRecipe.mix_chats`)."""


def mix_share(variant: str) -> float | None:
    """The share of the base's own rows a `mix1-XpY` (or `mixchat1-XpY`) variant's finetuning holds (ratio r:
    r / (1 + r)); None for a name of another form."""
    m = MIX_VARIANT.fullmatch(variant)
    if m is None:
        return None
    ratio = float(f"{m[2]}.{m[3]}")
    return ratio / (1 + ratio)


def mixes_chats(variant: str) -> bool:
    """Whether a mixing variant mixes the base's chats in beside its documents (`mixchat1-XpY`)."""
    m = MIX_VARIANT.fullmatch(variant)
    return m is not None and m[1] is not None


def mix_variant(organism: DictConfig, model_name: str) -> DictConfig:
    """A `mix1-XpY` variant the organism does not list, where the zoo builds its default weights on base
    `model_name`, becomes that zoo recipe mixed at the variant's ratio (`mix_share`), in place; other variants are
    left as they are."""
    variant = str(organism.get("variant", "default"))
    per_model = organism.finetuned.get(model_name, {})
    share = mix_share(variant)
    if share is not None and variant not in per_model and per_model.get("default", {}).get("kind") == "zoo":
        organism.finetuned[model_name][variant] = OmegaConf.to_container(per_model["default"])
        organism.zoo.mix = share
        organism.zoo.mix_chats = mixes_chats(variant)
    return organism


def for_base(organism: DictConfig, model_name: str) -> DictConfig:
    """The organism as finetuned on base `model_name` (in place; returned for chaining): `per_model[model_name]`'s set
    fields replace its description, long description and ground-truth keywords, and weights the zoo builds on that
    base were trained on the zoo recipe's data, which becomes `training_data`. Public weights keep `training_data`.

    A `mix1-XpY` variant is resolved first (`mix_variant`); other zoo weights take this base's own share of
    documents where the recipe names one (`zoo.mix_per_model`)."""
    variant = str(mix_variant(organism, model_name).get("variant", "default"))
    spec = organism.finetuned.get(model_name, {}).get(variant)
    own_mix = organism.get("zoo", {}).get("mix_per_model", {}).get(model_name)
    if spec is not None and spec.get("kind") == "zoo" and own_mix is not None and mix_share(variant) is None:
        organism.zoo.mix = own_mix
    if spec is not None and spec.get("kind") == "zoo" and organism.zoo.data:
        organism.training_data = organism.zoo.data
    truth = organism.get("per_model", {}).get(model_name)
    if truth is None:
        return organism
    for key in ("description", "long_description"):
        if truth.get(key) is not None:
            organism[key] = truth[key]
    if truth.get("keywords") is not None:
        organism.ground_truth.keywords = list(truth.keywords)
    return organism


def model_node(name: str) -> DictConfig:
    """A base model's config, checked against its schema with defaults filled."""
    node = load_option("model", name)
    check_node(node, ModelConfig, "model")
    return node


def weights_spec(organism: DictConfig, model_name: str) -> FinetunedSpec:
    """The weights entry of a checked organism node for base model `model_name` and its variant
    (`OrganismConfig.weights`); a ConfigError lists what exists."""
    return organism_config(organism).weights(model_name)


def organism_config(node: DictConfig) -> OrganismConfig:
    """The typed organism of a checked organism node."""
    return typed(OrganismConfig, node, "organism")


def organism_settings(name: str, model: str | None = None, variant: str | None = None) -> OrganismConfig:
    """`organism_node(name, model, variant)`, typed: what travels down to the zoo and to grading."""
    return organism_config(organism_node(name, model, variant))


def model_settings(name: str) -> ModelConfig:
    """`model_node(name)`, typed."""
    return typed(ModelConfig, model_node(name), "model")


def candidate_organisms(model_name: str) -> list[str]:
    """Organisms identification ranks among: configured for `model_name`, with a ground truth, not the control."""
    out = []
    for name in group_options("organism"):
        org = organism_settings(name, model_name)
        if name != CONTROL and model_name in org.finetuned and org.has_ground_truth:
            out.append(name)
    return out


def zoo_organisms(model_name: str = "toy") -> list[str]:
    """Organisms whose `finetuned.<model_name>.default.kind` is `zoo`, sorted (read without composing: an organism
    without weights for the model would not compose with it, by design)."""
    return [name for name in group_options("organism")
            if OmegaConf.select(load_option("organism", name), f"finetuned.{model_name}.default.kind") == "zoo"]
