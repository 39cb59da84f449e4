"""Compose the experiment config from the config tree with Hydra's compose API, validate it, expand sweeps.

Validation runs before any model is loaded: unknown group options, keys and values (method configs included) raise
`ConfigError` with the valid names (`unknown organism 'cpas'; known: caps, ...`).
"""

from __future__ import annotations

import itertools
import re

from omegaconf import DictConfig, OmegaConf, open_dict

from diffgame.config import configtree, registry
from diffgame.config.configtree import GROUPS
from diffgame.config.validate import build, check_node, typed
from diffgame.errors import ConfigError
from diffgame.records.schema import RootConfig


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {str(e).splitlines()[0]}") from None


def _sweep_values(o) -> list[str]:
    from hydra.errors import HydraException

    try:
        return list(o.sweep_string_iterator())
    except HydraException as e:
        raise ConfigError(f"cannot expand sweep '{o.input_line}' ({e}); list the values: key=a,b,c") from None


def _names(o) -> list[str]:
    values = _sweep_values(o) if o.is_sweep_override() else [o.value()]
    names: list[str] = []
    for v in values:
        names.extend(str(x) for x in v) if isinstance(v, (list, tuple)) else names.append(str(v))
    return names


def _canonical(overrides: list[str]) -> list[str]:
    """Overrides with method aliases replaced by their registry names (`method=activation_analysis` selects
    `normdiff`, whose config and runs it shares); group options are checked against the tree."""
    alias = registry.aliases()
    out = []
    for raw, o in zip(overrides, _parse(overrides)):
        group = o.key_or_group
        if group in GROUPS:
            for name in _names(o):
                if group == "method":
                    registry.canonical_name(name)  # unknown methods list the registered ones
                if alias.get(name, name) not in configtree.group_options(group):
                    raise ConfigError(f"unknown {group} '{name}'; known: {', '.join(configtree.group_options(group))}")
            if group == "method" and any(n in alias for n in _names(o)):
                names = [alias.get(n, n) for n in _names(o)]
                is_list = not o.is_sweep_override() and isinstance(o.value(), (list, tuple))
                raw = f"method={','.join(names)}" if o.is_sweep_override() else (
                    f"method=[{','.join(names)}]" if is_list else f"method={names[0]}")
        elif group.startswith("method."):
            head = group.removeprefix("method.").partition(".")[0]
            if head in alias:
                raw = raw.replace(f"method.{head}", f"method.{alias[head]}", 1)
        out.append(raw)
    return out


def selections(args: list[str] | tuple[str, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """Command arguments split into group selections (`organism=caps,tea_lover`, `method=[kl,adl]`, `model=toy`:
    their names, checked against the tree) and every other override (`zoo.size=micro`), so commands that act on
    existing runs (`play`, `grades`) read the same overrides as `run`."""
    picked: dict[str, list[str]] = {}
    rest: list[str] = []
    args = _canonical(list(args))
    for raw, o in zip(args, _parse(args)):
        if o.key_or_group in GROUPS:
            picked.setdefault(o.key_or_group, []).extend(_names(o))
        else:
            rest.append(raw)
    return picked, rest


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Cartesian product of comma-separated sweep overrides (`organism=caps,control method=kl,adl`)."""
    overrides = _canonical(list(overrides))
    axes: list[list[str]] = []
    for raw, o in zip(overrides, _parse(overrides)):
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in _sweep_values(o)])
        else:
            axes.append([raw])
    return [list(combo) for combo in itertools.product(*axes)]


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    users = configtree.user_dirs()
    if users:  # searched after the built-in tree: user folders add options
        overrides = [*overrides, f"hydra.searchpath=[{','.join(d.as_uri() for d in users)}]"]
    with initialize_config_dir(config_dir=str(configtree.builtin_dir()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `config.yaml` of the tree with `overrides` and validate it against the schemas."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = _canonical(list(overrides))
    for o in _parse(overrides):
        if o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}' is a sweep; pass --multirun to expand it")
    overrides = _drop_unselected_settings(overrides)
    try:
        cfg = _hydra_compose(_allow_new_keys(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain_compose_error(e, overrides)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {str(e).strip().splitlines()[0]}") from None
    with open_dict(cfg):
        cfg.overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("overrides")]
    validate(cfg)
    configtree.for_base(cfg.organism, str(cfg.model.name))  # this base's finetuning: its truth and data
    return cfg


def _drop_unselected_settings(overrides: list[str]) -> list[str]:
    """Overrides without the settings of methods that are not selected (`method.adl.max_samples=8` beside
    `method=kl`): a setting never selects a method, so one command line can carry every method's settings across a
    sweep (`method=kl,adl`). A setting for a method that does not exist is an error listing the registered ones."""
    parsed = _parse(overrides)
    selected = None
    for o in parsed:
        if o.key_or_group == "method":
            selected = set(_names(o))
    if selected is None:  # config.yaml's defaults list selects them
        defaults = OmegaConf.load(configtree.builtin_dir() / "config.yaml").defaults
        selected = {str(m) for d in defaults if isinstance(d, DictConfig) and "method" in d
                    for m in (d.method if OmegaConf.is_list(d.method) else [d.method])}
    out = []
    for raw, o in zip(overrides, parsed):
        head = o.key_or_group.removeprefix("method.").partition(".")[0] if o.key_or_group.startswith("method.") else None
        if head is not None and registry.canonical_name(head) not in selected:
            continue
        out.append(raw)
    return out


def _allow_new_keys(overrides: list[str]) -> list[str]:
    """Turn `key=value` into `++key=value` so Hydra accepts keys its YAML lacks (`organism.finetuned.toy.default.id`).

    Unknown keys are still refused, by `validate` against the schemas, with the list of known keys.
    """
    from hydra.core.override_parser.types import OverrideType

    out = []
    for raw, o in zip(overrides, _parse(overrides)):
        is_group = o.key_or_group in GROUPS or "/" in o.key_or_group or o.package is not None
        out.append(f"++{raw}" if o.type == OverrideType.CHANGE and not is_group else raw)
    return out


def _explain_compose_error(err: Exception, overrides: list[str]) -> str:
    msg = str(err).strip().splitlines()[0]
    if msg.startswith("Error merging override "):  # a mapping given for a list or the reverse (`layers={a:1}`)
        key, _, value = msg.removeprefix("Error merging override ").lstrip("+~").partition("=")
        target = re.search(r"object_type=(list|dict)", str(err.__cause__))
        if target:
            return f"invalid value {value} for '{key}'; expected {'a list' if target[1] == 'list' else 'a mapping'}"
    if "Could not override" in msg or "not in struct" in msg or "Key '" in msg:
        for o in _parse(overrides):
            key = o.key_or_group
            if key.split(".")[0] in GROUPS and "." not in key:
                continue
            try:
                base = _hydra_compose([])
            except Exception:  # noqa: BLE001 - only an explanation; fall back to Hydra's words
                break
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            if isinstance(node, DictConfig) and leaf not in node:
                where = f"'{parent}'" if parent else "the config"
                return f"unknown key '{key}' in {where}; known: {', '.join(sorted(map(str, node.keys())))}"
    return f"invalid overrides: {msg}"


def validate(cfg: DictConfig) -> None:
    """Check every key and value against `RootConfig` and each selected method's config class; fill defaults."""
    check_node(cfg, RootConfig, "")
    if not cfg.method:
        raise ConfigError("no method selected; pass method=<name> or method=[a,b]")
    for name in list(cfg.method.keys()):
        if cfg.method[name] is None:
            cfg.method[name] = {}
        # fills the defaults; runs the dataclass's own range checks too
        check_node(cfg.method[name], registry.config_class(str(name)), f"method.{registry.canonical_name(str(name))}")
    configtree.mix_variant(cfg.organism, str(cfg.model.name))
    configtree.weights_spec(cfg.organism, str(cfg.model.name))


def settings(cfg: DictConfig) -> RootConfig:
    """The typed config of a composed (so checked) one: what the pipeline plans from and hands down."""
    return typed(RootConfig, cfg)


def build_method_config(name: str, node):
    """The method's config dataclass instance from a mapping; unknown keys, wrong types and bad values raise."""
    return build(registry.config_class(name), node, f"method.{registry.canonical_name(name)}")


def method_names(cfg: DictConfig) -> list[str]:
    """The methods selected in a composed config (registry names), in the order given."""
    return [registry.canonical_name(str(k)) for k in cfg.method.keys()]


def describe_weights(cfg: DictConfig) -> str:
    """One line naming the organism weights this config resolves to (no download, nothing loaded)."""
    spec = configtree.weights_spec(cfg.organism, str(cfg.model.name))
    where = "built by `diffgame zoo build`" if spec.kind == "zoo" else spec.id
    extra = "".join(f", {k}={getattr(spec, k)}" for k in ("subfolder", "revision") if getattr(spec, k))
    return (f"organism '{cfg.organism.name}' variant '{cfg.organism.variant}' on base '{cfg.model.name}' "
            f"({cfg.model.id}): {spec.kind} {where}{extra}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
