"""The method registry: every diffing method by name, bound to its method class and config dataclass.

A leaf module: the built-in block names implementations by import path and loads one only when it is asked for,
so validating a config never imports the methods (and their models, lenses and data readers) by itself.
Adding a method means one new file under `methods/` and one line in the block below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from diffgame.errors import ConfigError


@dataclass
class Entry:
    """A registered method: its class and config class, each given as the class or as `module:Class`."""

    method: type | str
    config: type | str

    def load(self) -> tuple[type, type]:
        return _load(self.method), _load(self.config)


_REGISTRY: dict[str, Entry] = {}
_ALIASES: dict[str, str] = {}


def _load(ref: type | str) -> type:
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def register(name: str, method_cls: type | str, config_cls: type | str, aliases: tuple[str, ...] = ()) -> None:
    """Bind `name` (and its aliases) to a method class and its config dataclass (classes or `module:Class`)."""
    for key in (name, *aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"method '{key}' is already registered")
    _REGISTRY[name] = Entry(method_cls, config_cls)
    for alias in aliases:
        _ALIASES[alias] = name


def unregister(name: str) -> None:
    """Remove a method and its aliases (for methods registered at run time, e.g. from a test)."""
    _REGISTRY.pop(name, None)
    for alias in [a for a, n in _ALIASES.items() if n == name]:
        del _ALIASES[alias]


def known_methods() -> list[str]:
    return sorted(_REGISTRY)


def aliases() -> dict[str, str]:
    """Alias -> canonical name."""
    return dict(_ALIASES)


def canonical_name(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(known_methods())}")
    return name


def get_method(name: str) -> tuple[type, type]:
    """The (method class, config class) registered under `name` or one of its aliases."""
    return _REGISTRY[canonical_name(name)].load()


def config_class(name: str) -> type:
    return get_method(name)[1]


# --- built-in methods -------------------------------------------------------------------------------
register("adl", "diffgame.methods.adl:ADLMethod", "diffgame.methods.adl:ADLConfig")
register("amplify", "diffgame.methods.amplify:AmplifyMethod", "diffgame.methods.amplify:AmplifyConfig")
register("blackbox", "diffgame.methods.blackbox:BlackboxMethod", "diffgame.methods.blackbox:BlackboxConfig")
register("crosscoder", "diffgame.methods.crosscoder:CrosscoderMethod", "diffgame.methods.crosscoder:CrosscoderConfig")
register("diffmining", "diffgame.methods.diffmining:DiffMiningMethod", "diffgame.methods.diffmining:DiffMiningConfig")
register("kl", "diffgame.methods.kl:KLMethod", "diffgame.methods.kl:KLConfig")
register("normdiff", "diffgame.methods.normdiff:NormDiffMethod", "diffgame.methods.normdiff:NormDiffConfig",
         aliases=("activation_analysis",))
register("pca", "diffgame.methods.pca:PCAMethod", "diffgame.methods.pca:PCAConfig")
register("sae", "diffgame.methods.sae:SAEMethod", "diffgame.methods.sae:SAEConfig")
