"""Compose the experiment config from `experiments/` with Hydra's compose API, validate it, expand sweeps.

Validation runs before any model is loaded: unknown group options, keys and values raise `ConfigError`
with the valid names (`unknown organism 'cpas'; known: caps, ...`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from diffgame.errors import ConfigError
from diffgame.schema import RootConfig

GROUPS = ("model", "organism", "dataset", "method")
"""Config groups selected by name (`organism=caps`), one folder each under `experiments/`."""


def experiments_dir() -> Path:
    """The config tree: `$DIFFGAME_EXPERIMENTS` or the `experiments/` folder beside the package."""
    env = os.environ.get("DIFFGAME_EXPERIMENTS")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "experiments"
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no config tree at {path} (expected config.yaml); set DIFFGAME_EXPERIMENTS")
    return path


def group_options(group: str) -> list[str]:
    """Sorted option names of a config group (the YAML files in its folder)."""
    return sorted(p.stem for p in (experiments_dir() / group).glob("*.yaml"))


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


def _check_group_choices(overrides: list[str]) -> None:
    for o in _parse(overrides):
        group = o.key_or_group
        if group not in GROUPS:
            continue
        values = _sweep_values(o) if o.is_sweep_override() else [o.value()]
        names: list[str] = []
        for v in values:
            names.extend(str(x) for x in v) if isinstance(v, (list, tuple)) else names.append(str(v))
        known = group_options(group)
        for name in names:
            if name not in known:
                raise ConfigError(f"unknown {group} '{name}'; known: {', '.join(known)}")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Cartesian product of comma-separated sweep overrides (`organism=caps,control method=kl,adl`)."""
    _check_group_choices(overrides)
    axes: list[list[str]] = []
    for raw, o in zip(overrides, _parse(overrides)):
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in _sweep_values(o)])
        else:
            axes.append([raw])
    return [list(combo) for combo in itertools.product(*axes)]


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `experiments/config.yaml` with `overrides` and validate it against the schemas."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    _check_group_choices(overrides)
    for o in _parse(overrides):
        if o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}' is a sweep; pass --multirun to expand it")
    try:
        with initialize_config_dir(config_dir=str(experiments_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=_allow_new_keys(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain_compose_error(e, overrides)) from None
    OmegaConf.set_struct(cfg, False)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {str(e).strip().splitlines()[0]}") from None
    validate(cfg)
    return cfg


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
    if "Could not override" in msg or "not in struct" in msg or "Key '" in msg:
        for o in _parse(overrides):
            key = o.key_or_group
            if o.key_or_group.split(".")[0] in GROUPS and "." not in key:
                continue
            try:
                base = compose_defaults()
            except ConfigError:
                break
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            if isinstance(node, DictConfig) and leaf not in node:
                where = f"'{parent}'" if parent else "the config"
                return f"unknown key '{key}' in {where}; known: {', '.join(sorted(map(str, node.keys())))}"
    return f"invalid overrides: {msg}"


def compose_defaults() -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(experiments_dir()), version_base=None):
        cfg = hydra_compose(config_name="config")
    OmegaConf.set_struct(cfg, False)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Check every key and value against `RootConfig` and the method registry; fill schema defaults."""
    _validate_node(cfg, RootConfig, "")
    from diffgame.methods import validate_method_config

    if not cfg.method:
        raise ConfigError("no method selected; pass method=<name> or method=[a,b]")
    for name in list(cfg.method.keys()):
        validate_method_config(str(name), cfg.method[name])
    weights_spec(cfg)


def weights_spec(cfg: DictConfig) -> DictConfig:
    """The organism's weights entry for the selected base model and variant; a ConfigError lists what exists."""
    org, model_name = cfg.organism, cfg.model.name
    per_model = org.finetuned.get(model_name)
    if per_model is None:
        known = ", ".join(sorted(map(str, org.finetuned.keys()))) or "none"
        raise ConfigError(f"organism '{org.name}' has no weights for model '{model_name}'; models with weights: "
                          f"{known}; pick one of those (model=<name>) or add "
                          f"'organism.finetuned.{model_name}.default={{kind:full,id:<hub id or path>}}'")
    spec = per_model.get(org.variant)
    if spec is None:
        raise ConfigError(f"unknown variant '{org.variant}' of organism '{org.name}' for model '{model_name}'; "
                          f"known: {', '.join(sorted(map(str, per_model.keys())))}")
    if spec.kind in ("full", "lora") and not spec.id:
        raise ConfigError(f"organism '{org.name}' variant '{org.variant}' for model '{model_name}' is kind "
                          f"'{spec.kind}' but has no id; set organism.finetuned.{model_name}.{org.variant}.id")
    return spec


def _validate_node(node: Any, cls: type, path: str) -> None:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"'{path}' must be a mapping of {cls.__name__} fields, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in list(node.keys()):
        if key not in fields:
            raise ConfigError(f"unknown key '{_join(path, key)}'; known: {', '.join(sorted(fields))}")
    for name, f in fields.items():
        if name not in node:
            if f.default is not dataclasses.MISSING:
                node[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
                # plain containers: OmegaConf's structured configs reject Literal annotations
                node[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        _validate_value(node[name], hints[name], _join(path, name))


def _validate_value(value: Any, tp: Any, path: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _validate_value(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"invalid value {value!r} for '{path}'; valid: {', '.join(map(str, args))}")
        return
    if dataclasses.is_dataclass(tp):
        _validate_node(value, tp, path)
        return
    if origin is dict:
        if not isinstance(value, DictConfig):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        if args and args[1] is not Any:
            for k in value.keys():
                _validate_value(value[k], args[1], _join(path, str(k)))
        return
    if tp is dict:
        if not isinstance(value, DictConfig):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return
    if origin is list:
        if not isinstance(value, (ListConfig, list)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        for i, v in enumerate(value):
            _validate_value(v, args[0], f"{path}[{i}]")
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(tp)
    if ok is not None and not ok(value):
        raise ConfigError(f"invalid value {value!r} for '{path}'; expected {tp.__name__}")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def describe_weights(cfg: DictConfig) -> str:
    """One line naming the organism weights this config resolves to (no download, nothing loaded)."""
    spec = weights_spec(cfg)
    where = "built by `diffgame zoo build`" if spec.kind == "zoo" else spec.id
    extra = "".join(f", {k}={spec[k]}" for k in ("subfolder", "revision") if spec.get(k))
    return (f"organism '{cfg.organism.name}' variant '{cfg.organism.variant}' on base '{cfg.model.name}' "
            f"({cfg.model.id}): {spec.kind} {where}{extra}")


def method_names(cfg: DictConfig) -> list[str]:
    """The methods selected in a composed config, in the order given."""
    return [str(k) for k in cfg.method.keys()]


def resolve_layers(layers: list[float | int], n_layers: int) -> list[int]:
    """Map layers given as fractions of depth (0.5) or indices (6, -1) to sorted unique indices."""
    out = set()
    for layer in layers:
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise ConfigError(f"layer fraction {layer} is outside [0, 1]")
            idx = min(int(layer * n_layers), n_layers - 1)
        else:
            idx = int(layer)
            if idx < 0:
                idx += n_layers
            if not 0 <= idx < n_layers:
                raise ConfigError(
                    f"layer {int(layer)} is out of range for a model with {n_layers} layers "
                    f"(valid: 0..{n_layers - 1}, or fractions like 0.5); fix preprocessing.layers")
        out.add(idx)
    return sorted(out)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
