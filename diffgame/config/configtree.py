"""The config tree on disk: where it is (the built-in tree plus user folders on a search path), which options each
group has, and single option files read and checked alone (an organism, a model) without composing the whole config.

The built-in tree ships inside the package (`diffgame.experiments`, the repository's `experiments/` folder); user
folders with the same layout (`organism/my_org.yaml`, `method/...`) are searched after it, from `--config-dir` or
`DIFFGAME_CONFIG_PATH` (folders separated by the OS path separator), so `organism=my_org` finds a user's organism.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffgame.config.schema import ModelConfig, OrganismConfig
from diffgame.config.validate import check_node
from diffgame.errors import ConfigError

GROUPS = ("model", "organism", "dataset", "method")
"""Config groups selected by name (`organism=caps`), one folder each in the tree."""
CONTROL = "control"
"""The null organism every grade is compared against."""
CONFIG_PATH_ENV = "DIFFGAME_CONFIG_PATH"
"""User config folders searched beside the built-in tree (`os.pathsep`-separated)."""
BUILTIN_ENV = "DIFFGAME_EXPERIMENTS"
"""Replaces the built-in tree (a folder with `config.yaml`), for a checkout with its own tree."""


def builtin_dir() -> Path:
    """The built-in config tree: `$DIFFGAME_EXPERIMENTS`, else the one beside this code: `diffgame/experiments` in
    an installed wheel, the repository's `experiments/` in a checkout (editable or on the path), else wherever the
    `diffgame.experiments` package maps to."""
    env = os.environ.get(BUILTIN_ENV)
    here = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else [here / "experiments", here.parent / "experiments"]
    if not env:
        spec = importlib.util.find_spec("diffgame.experiments")
        candidates += [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path
    raise ConfigError(f"no config tree at {candidates[0]} (expected config.yaml); set {BUILTIN_ENV} to a config "
                      f"tree, or reinstall diffgame")


def user_dirs() -> list[Path]:
    """User config folders from `DIFFGAME_CONFIG_PATH`, in order; a folder that does not exist is an error."""
    out = []
    for part in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"config folder {path} (from {CONFIG_PATH_ENV} or --config-dir) does not exist")
        out.append(path)
    return out


def add_user_dir(path: str | Path) -> None:
    """Put a user config folder on the search path for this process and its children (`--config-dir`)."""
    dirs = [str(Path(path).expanduser().resolve())] + [str(d) for d in user_dirs()]
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join(dict.fromkeys(dirs))


def search_path() -> list[Path]:
    """Every folder options are looked up in: the built-in tree first, then the user folders."""
    return [builtin_dir(), *user_dirs()]


def option_file(group: str, name: str) -> Path | None:
    """The YAML file of option `name` of `group` (the first on the search path), or None."""
    for root in search_path():
        path = root / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def find_data_file(name: str) -> tuple[Path | None, list[Path]]:
    """A data file a config names (an organism's JSONL), and every place looked: an absolute path as is, a relative
    one against the working folder, then each config folder's parent and the folder itself (the built-in
    `experiments/data/...` resolves inside an installed package too)."""
    path = Path(name).expanduser()
    roots = search_path()
    tried = [path] if path.is_absolute() else [Path.cwd() / path, *(r.parent / path for r in roots),
                                               *(r / path for r in roots)]
    return next((p.resolve() for p in tried if p.is_file()), None), tried


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


def organism_node(name: str, model: str | None = None) -> DictConfig:
    """An organism's config, checked against its schema with defaults filled; with `model`, its description and
    keywords are what that base's finetuning taught and its data what it was trained on (`for_base`)."""
    node = load_option("organism", name)
    check_node(node, OrganismConfig, "organism")
    return for_base(node, model) if model is not None else node


def for_base(organism: DictConfig, model_name: str) -> DictConfig:
    """The organism as finetuned on base `model_name` (in place; returned for chaining): `per_model[model_name]`'s set
    fields replace its description, long description and ground-truth keywords, and weights the zoo builds on that
    base were trained on the zoo recipe's data, which becomes `training_data`. Public weights keep `training_data`."""
    spec = organism.finetuned.get(model_name, {}).get(organism.get("variant", "default"))
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


def weights_spec(organism: DictConfig, model_name: str) -> DictConfig:
    """The organism's weights entry for base model `model_name` and the organism's variant; a ConfigError lists
    what exists."""
    per_model = organism.finetuned.get(model_name)
    if per_model is None:
        known = ", ".join(sorted(map(str, organism.finetuned.keys()))) or "none"
        raise ConfigError(f"organism '{organism.name}' has no weights for model '{model_name}'; models with weights: "
                          f"{known}; pick one of those (model=<name>) or add "
                          f"'organism.finetuned.{model_name}.default={{kind:full,id:<hub id or path>}}'")
    spec = per_model.get(organism.variant)
    if spec is None:
        raise ConfigError(f"unknown variant '{organism.variant}' of organism '{organism.name}' for model "
                          f"'{model_name}'; known: {', '.join(sorted(map(str, per_model.keys())))}")
    if spec.kind in ("full", "lora") and not spec.id:
        raise ConfigError(f"organism '{organism.name}' variant '{organism.variant}' for model '{model_name}' is kind "
                          f"'{spec.kind}' but has no id; set organism.finetuned.{model_name}.{organism.variant}.id")
    return spec


def has_ground_truth(organism: DictConfig) -> bool:
    gt = organism.ground_truth
    return bool(gt.keywords or gt.predicate or gt.vocab_from_data)


def candidate_organisms(model_name: str) -> list[str]:
    """Organisms identification ranks among: configured for `model_name`, with a ground truth, not the control."""
    out = []
    for name in group_options("organism"):
        node = organism_node(name, model_name)
        if name != CONTROL and model_name in node.finetuned and has_ground_truth(node):
            out.append(name)
    return out


def zoo_organisms(model_name: str = "toy") -> list[str]:
    """Organisms whose `finetuned.<model_name>.default.kind` is `zoo`, sorted (read without composing: an organism
    without weights for the model would not compose with it, by design)."""
    return [name for name in group_options("organism")
            if OmegaConf.select(load_option("organism", name), f"finetuned.{model_name}.default.kind") == "zoo"]
