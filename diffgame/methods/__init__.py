"""The method registry: every built-in diffing method, bound by name to its (method class, config class).

Adding a method means one new file in this folder and one line in the block below.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from diffgame.errors import ConfigError
from diffgame.methods.base import Method, MethodContext, MethodResult  # noqa: F401

_REGISTRY: dict[str, tuple[type[Method], type]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, method_cls: type[Method], config_cls: type, aliases: tuple[str, ...] = ()) -> None:
    """Bind `name` (and its aliases) to a method class and its config dataclass."""
    for key in (name, *aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"method '{key}' is already registered")
    _REGISTRY[name] = (method_cls, config_cls)
    for alias in aliases:
        _ALIASES[alias] = name


def known_methods() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(known_methods())}")
    return name


def get_method(name: str) -> tuple[type[Method], type]:
    """The (method class, config class) registered under `name` or one of its aliases."""
    return _REGISTRY[canonical_name(name)]


def build_config(name: str, node: Any):
    """Instantiate the method's config dataclass from a mapping; unknown keys and bad choices raise."""
    _, config_cls = get_method(name)
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown key 'method.{name}.{key}'; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(config_cls)
    for key, value in values.items():
        tp = hints[key]
        if typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            valid = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"invalid value {value!r} for 'method.{name}.{key}'; valid: {valid}")
    return config_cls(**values)


def validate_method_config(name: str, node: Any) -> None:
    build_config(name, node)


# --- built-in methods -------------------------------------------------------------------------------
from diffgame.methods.adl import ADLConfig, ADLMethod  # noqa: E402
from diffgame.methods.kl import KLConfig, KLMethod  # noqa: E402
from diffgame.methods.normdiff import NormDiffConfig, NormDiffMethod  # noqa: E402

register("adl", ADLMethod, ADLConfig)
register("kl", KLMethod, KLConfig)
register("normdiff", NormDiffMethod, NormDiffConfig, aliases=("activation_analysis",))
