"""Declared config ranges: a numeric field states its valid values once, next to it (`bounded`, `layer_field`), and
the check on construction (`Checked`, `check_fields`), its error message and the property test all read that one
declaration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from diffgame.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The valid values of a number (or of each number of a list): between `lo` and `hi` (open ends excluded, None
    unbounded), or one of `also`; `note` says what a special value means (`0: auto`, `or null for all`)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    note: str = ""

    def __contains__(self, value) -> bool:
        if value in self.also:
            return True
        below = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
        above = self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi))
        return not (below or above)

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {self.hi}"
        else:
            text = "a finite number"
        return f"{text} ({self.note})" if self.note else text


def ge(lo: float, note: str = "", also: tuple = ()) -> Range:
    return Range(lo, note=note, also=also)


def gt(lo: float, note: str = "") -> Range:
    return Range(lo, lo_open=True, note=note)


ANY = Range()
"""Any finite number (non-finite ones are refused by type)."""


def bounded(rng: Range, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose values must lie in `rng` (each element, for a list)."""
    return field(default=default, default_factory=default_factory, metadata={"range": rng})


def layer_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field of layers: fractions of depth in [0, 1] or integer indices (`check_layers`)."""
    return field(default=default, default_factory=default_factory, metadata={"layers": True})


class Checked:
    """A config dataclass whose declared ranges (`bounded`, `layer_field`) are checked when it is made; `SECTION`
    prefixes its messages (`method.kl.temperature must be > 0, got 0`); without one the validator names the path."""

    SECTION: ClassVar[str] = ""
    RUNTIME: ClassVar[tuple[str, ...]] = ()
    """Fields that say how a run executes, not what it computes (e.g. how many devices share it)."""
    ADDED: ClassVar[dict[str, Any]] = {}
    """Fields added after runs were logged, each with the value that reproduces those runs."""

    def __post_init__(self):
        check_fields(self, self.SECTION)


def identity(config) -> dict:
    """What of config dataclass `config` goes into a run's fingerprint: every field but its `RUNTIME` ones, and its
    `ADDED` fields only where they differ from the value earlier runs had, so those runs keep their fingerprints."""
    out = dataclasses.asdict(config)
    for name in getattr(config, "RUNTIME", ()):
        out.pop(name, None)
    for name, value in getattr(config, "ADDED", {}).items():
        if out.get(name) == value:
            out.pop(name)
    return out


def check_fields(obj, section: str = "") -> None:
    """Every declared range and layer list of dataclass `obj`, in field order; a ConfigError names the first field
    out of its range (types are the validator's to check)."""
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if f.metadata.get("layers"):
            check_layers(value if isinstance(value, list) else [value], f"{prefix}{f.name}")
        rng = f.metadata.get("range")
        if rng is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in rng:
                raise ConfigError(f"{prefix}{f.name} must be {rng}, got {v}")


def check_layers(layers: list | None, name: str) -> None:
    """A layer list is non-empty and its fractions of depth (floats) lie in [0, 1]; integer indices are checked
    against the model's depth once it is known (`models.resolve_layers`). None (a method's default) passes."""
    if layers is None:
        return
    if len(layers) == 0:
        raise ConfigError(f"{name} must name at least one layer (fractions of depth like 0.5, or indices like 6)")
    for layer in layers:
        if isinstance(layer, float) and not 0.0 <= layer <= 1.0:
            raise ConfigError(f"{name} has layer fraction {layer} outside [0, 1]; give fractions of depth in "
                              f"[0, 1] or integer indices (6, -1)")
