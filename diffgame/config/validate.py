"""The one validator: check a config mapping against a dataclass schema (keys, types, choices, `__post_init__` checks).

Used for the composed root config, every method config and single organism/model nodes, so a bad value is the same
one-line `ConfigError` wherever it comes from (`invalid value 'abc' for 'method.adl.top_k'; expected int`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from diffgame.errors import ConfigError


def check_node(node: Any, cls: type, path: str) -> None:
    """Check `node` (a DictConfig) against dataclass `cls`; unknown keys raise, missing fields get their defaults."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"'{path}' must be a mapping of {cls.__name__} fields, got {node!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in list(node.keys()):
        if key not in fields:
            raise ConfigError(f"unknown key '{join(path, key)}'; known: {', '.join(sorted(fields))}")
    for name, f in fields.items():
        if name not in node:
            if f.default is not dataclasses.MISSING:
                node[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
                # plain containers: OmegaConf's structured configs reject Literal annotations
                node[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        check_value(node[name], hints[name], join(path, name))
    if hasattr(cls, "__post_init__"):  # the dataclass's own range and cross-field checks, before any work
        typed(cls, node, path)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # once per class: evaluating string annotations is slow


def _construct(cls: type, values: dict, path: str):
    """`cls(**values)` with nested mappings made into their dataclasses too (a typed config all the way down)."""
    hints = _hints(cls)
    values = {k: _typed(v, hints[k], join(path, k)) if k in hints else v for k, v in values.items()}
    try:
        return cls(**values)
    except ConfigError as e:  # a range check that does not know its own path (e.g. a config shared by methods)
        raise e if path and path in str(e) else ConfigError(f"invalid '{path or 'config'}': {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid '{path or 'config'}': {e}") from None


def build(cls: type, node: Any, path: str):
    """An instance of dataclass `cls` from a mapping (DictConfig or dict), checked by `check_node` first; the
    dataclass's own `__post_init__` range checks then run too."""
    if node is None:
        node = {}
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    node = node.copy()
    OmegaConf.set_struct(node, False)
    check_node(node, cls, path)
    return typed(cls, node, path)


def _typed(value: Any, tp: Any, path: str) -> Any:
    """A checked plain value (from `OmegaConf.to_container`) with the dataclasses its annotation names built."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(value, inner[0], path) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return _construct(tp, value, path)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _typed(v, args[1], join(path, str(k))) for k, v in value.items()}
    if origin is list and args and isinstance(value, list):
        return [_typed(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def typed(cls: type, node: Any, path: str = ""):
    """The dataclass instance of an already checked node (`check_node` ran, e.g. in `compose`): no second check."""
    return _construct(cls, OmegaConf.to_container(node, resolve=True), path)


def check_value(value: Any, tp: Any, path: str) -> None:
    """Check one value against a type annotation (unions, Literal, dataclasses, dict, list, scalars)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return check_value(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"invalid value {value!r} for '{path}'; valid: {', '.join(map(str, args))}")
        return
    if dataclasses.is_dataclass(tp):
        check_node(value, tp, path)
        return
    if origin is dict or tp is dict:
        if not isinstance(value, (DictConfig, dict)):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        if args and args[1] is not Any:
            for k in value.keys():
                check_value(value[k], args[1], join(path, str(k)))
        return
    if origin is list or tp is list:
        if not isinstance(value, (ListConfig, list)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        for i, v in enumerate(value):
            if args:
                check_value(v, args[0], f"{path}[{i}]")
        return
    ok = _SCALARS.get(tp)
    if ok is not None and not ok(value):
        raise ConfigError(f"invalid value {value!r} for '{path}'; expected {tp.__name__}")
    if tp is float and not math.isfinite(value):  # `nan` and `inf` parse as floats but pass every range check
        raise ConfigError(f"invalid value {value!r} for '{path}'; expected a finite float")


_SCALARS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
