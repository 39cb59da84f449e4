"""Property tests of config validation (issue #21, case 5): every leaf key of every registered method config, of
`preprocessing` and of a dataset source, given a random override value of the wrong type or range, fails with a
one-line `ConfigError` that names the key, never a traceback; a random value of the right type and range passes.

Keys, types and ranges come from the dataclass schemas: each numeric field declares its range next to it
(`diffgame.records.schema.bounded`), the one place the validator, its message and this test read, and a test requires
one for every numeric field, so a new field needs a decision. Bulk checks validate a composed config
with the override applied as Hydra applies it (`validate_override`); a sample of keys also goes through `compose`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from typing import Any, Literal, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from typer.testing import CliRunner

from diffgame.cli import app
from diffgame.config import compose as C
from diffgame.config import registry
from diffgame.errors import ConfigError
from diffgame.records.schema import DatasetSource, PreprocessingConfig

BAD_PER_KEY, VALID_PER_KEY, THROUGH_COMPOSE = 4, 2, 20
"""Random examples per key (bad and valid values; `edge_values` are checked besides), and random examples over all
keys through the full `compose`."""


class Key(NamedTuple):
    path: str
    """Dotted config key (`method.kl.temperature`)."""
    tp: Any
    """The field's annotation."""
    method: str
    """The method selected when composing (its own for method keys)."""


def _keys(cls: type, prefix: str, method: str) -> list[Key]:
    hints = typing.get_type_hints(cls)
    return [Key(f"{prefix}.{f.name}", hints[f.name], method) for f in dataclasses.fields(cls)]


SOURCE = "dataset.sources.generic_text"
KEYS = {k.path: k for k in [
    *(k for m in registry.known_methods() for k in _keys(registry.config_class(m), f"method.{m}", m)),
    *_keys(PreprocessingConfig, "preprocessing", "normdiff"),
    *_keys(DatasetSource, SOURCE, "normdiff"),
]}


class Bound(NamedTuple):
    """Valid numbers lie between `lo` and `hi` (open ends excluded); `also` are valid values outside."""

    lo: float
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()


ANY = Bound(-1e6, 1e6)
"""Any finite number (list elements without a range, e.g. steering strengths)."""
LAYERS = "layers"
"""Layers: fractions of depth (floats in [0, 1]) or integer indices; a list of them is non-empty."""

DIVIDE_1024 = tuple(2 ** i for i in range(2, 11))
"""The divisors of the default batch_size (1024) above 2: the devices and stream lanes that pass beside it."""
CROSS_FIELD = {"n_latents": Bound(16), "k": Bound(1, 512), "devices": Bound(1, 2, also=DIVIDE_1024),
               "stream_lanes": Bound(1, 2, also=DIVIDE_1024)}
"""Ranges narrowed for keys a cross-field check ties together (k <= n_latents, whose defaults are 16 and 512; devices
divide stream_lanes, which divide batch_size, default 1024): a value from a field's own declared range must also pass
beside the other fields' defaults."""


def _field(key: Key) -> dataclasses.Field | None:
    parent, _, leaf = key.path.rpartition(".")
    cls = {"preprocessing": PreprocessingConfig, SOURCE: DatasetSource}.get(parent)
    if cls is None:
        cls = registry.config_class(parent.removeprefix("method."))
    return next((f for f in dataclasses.fields(cls) if f.name == leaf), None)


def _range(key: Key) -> Bound | str | None:
    """The key's range as its dataclass field declares it (`diffgame.records.schema.bounded` / `layer_field`)."""
    f = _field(key)
    if f is None:
        return None
    if f.metadata.get("layers"):
        return LAYERS
    rng = f.metadata.get("range")
    if rng is None:
        return None
    leaf = key.path.rpartition(".")[2]
    if leaf in CROSS_FIELD and key.path.startswith(("method.sae.", "method.crosscoder.")):
        return CROSS_FIELD[leaf]
    if rng.lo is None and rng.hi is None:
        return ANY
    return Bound(rng.lo, rng.hi, rng.lo_open, rng.hi_open, rng.also)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(tp))
    return tp, False


def _kind(key: Key) -> str:
    tp, _ = _unwrap(key.tp)
    if typing.get_origin(tp) is Literal:
        return "choice"
    if typing.get_origin(tp) is list:
        return "words" if typing.get_args(tp) == (str,) else "numbers"
    assert tp in (int, float, bool, str), f"{key.path}: no strategy for {tp}; extend this test"
    return tp.__name__


# --- override values as text, the way a user types them --------------------------------------------------------

KEYWORDS = {"true", "false", "null", "nan", "inf"}
"""Words Hydra parses as something other than a string."""
words = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True).filter(lambda w: w.lower() not in KEYWORDS)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else repr(float(x))  # repr keeps a '.' or an exponent: parsed as a float


def _listed(items: list[str]) -> str:
    return f"[{','.join(items)}]"


def _inside(b: Bound, integer: bool) -> st.SearchStrategy[str]:
    if integer:
        lo, hi = int(b.lo) + b.lo_open, None if b.hi is None else int(b.hi) - b.hi_open
        return st.integers(lo, lo + 10**6 if hi is None else hi).map(_num)
    return st.floats(b.lo, b.lo + 1e6 if b.hi is None else b.hi, exclude_min=b.lo_open, exclude_max=b.hi_open,
                     allow_nan=False, allow_infinity=False).map(_num)


def _outside(b: Bound, integer: bool) -> st.SearchStrategy[str]:
    if integer:
        below = st.integers(max_value=int(b.lo) - (not b.lo_open))
        above = st.nothing() if b.hi is None else st.integers(min_value=int(b.hi) + (not b.hi_open))
        return (below | above).filter(lambda x: x not in b.also).map(_num)
    finite = st.floats(allow_nan=False, allow_infinity=False)
    below = finite.filter(lambda x: x < b.lo or (b.lo_open and x == b.lo))  # compared as Python does: -0.0 == 0
    above = st.nothing() if b.hi is None else finite.filter(lambda x: x > b.hi or (b.hi_open and x == b.hi))
    edges = [float(x) for x, is_open in ((b.lo, b.lo_open), (b.hi, b.hi_open)) if x is not None and is_open]
    return (below | above | st.sampled_from(edges or [b.lo - 1.0])).map(_num)


fractions = st.floats(0, 1).map(_num)
not_fractions = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not 0 <= x <= 1).map(_num)
not_numbers = words | st.sampled_from(["true", "false", "nan", "inf", "-inf", "'3'", "'0.5'", "[1,2]", "[]", "{a:1}"])


def valid_values(key: Key) -> st.SearchStrategy[str]:
    kind, rng = _kind(key), _range(key)
    tp, optional = _unwrap(key.tp)
    if kind == "choice":
        out = st.sampled_from(typing.get_args(tp))
    elif kind == "bool":
        out = st.sampled_from(["true", "false"])
    elif kind == "str":
        out = words
    elif kind == "words":
        out = st.lists(words, min_size=1, max_size=3).map(_listed)
    elif rng == LAYERS and kind == "numbers":
        out = st.lists(fractions | st.integers(-2, 8).map(_num), min_size=1, max_size=4).map(_listed)
    elif rng == LAYERS:
        out = fractions | st.integers(-2, 8).map(_num)
    elif kind == "numbers":
        out = st.lists(_inside(rng, integer=False), max_size=4).map(_listed)
    else:
        out = _inside(rng, integer=kind == "int")
        if rng.also:
            out = out | st.sampled_from([_num(x) for x in rng.also])
    return out | st.just("null") if optional else out


def bad_values(key: Key) -> st.SearchStrategy[str]:
    kind, rng = _kind(key), _range(key)
    tp, optional = _unwrap(key.tp)
    containers = st.sampled_from(["{a:1}", "[1,2]", "[]"]) | st.lists(words, min_size=1, max_size=3).map(_listed)
    if kind == "choice":
        choices = typing.get_args(tp)
        out = words.filter(lambda w: w not in choices) | st.integers().map(_num) | containers
    elif kind == "bool":
        out = words | st.integers().map(_num) | not_fractions | containers | st.just("'true'")
    elif kind == "str":
        out = containers
    elif kind == "words":
        out = (words | st.integers().map(_num) | st.sampled_from(["{a:1}", "[]", "[[a]]", "[1]", "[true]"])
               | st.lists(words, max_size=2).map(lambda w: _listed([*w, "3"])))
    elif kind == "numbers":
        elements = not_fractions if rng == LAYERS else st.nothing()
        out = (words | st.integers().map(_num) | st.sampled_from(["{a:1}", "[[1]]", "[true]", "['0.5']", "[nan]"])
               | st.lists(st.floats(0, 1).map(_num), max_size=2).map(lambda x: _listed([*x, "abc"]))
               | st.lists(elements, min_size=1, max_size=3).map(_listed))
        if rng == LAYERS:
            out = out | st.just("[]")
    else:  # int or float
        integer = kind == "int"
        out = not_numbers | containers | (not_fractions if rng == LAYERS else _outside(rng, integer))
        if integer:
            out = out | st.floats(allow_nan=False, allow_infinity=False).map(_num)  # 2.0 is a float, not an int
    return out if optional else out | st.just("null")


def edge_values(key: Key) -> list[str]:
    """The wrong values a user types most (`abc` for a number, `nan`, the first number out of range), always checked."""
    kind, rng = _kind(key), _range(key)
    _, optional = _unwrap(key.tp)
    out = {"choice": ["abc", "[abc]"], "bool": ["abc", "1"], "str": ["[a]", "{a:1}"], "words": ["abc", "[1]", "[]"],
           "numbers": ["abc", "[abc]", "{a:1}", "[nan]"], "int": ["abc", "1.5", "[1]"],
           "float": ["abc", "nan", "inf", "[1.0]"]}[kind]
    if rng == LAYERS:
        out += ["[]", "[1.5]"] if kind == "numbers" else ["1.5", "-0.5"]
    elif isinstance(rng, Bound) and rng != ANY:
        integer = kind == "int"
        out.append(_num(int(rng.lo) - (not rng.lo_open) if integer else float(rng.lo) - (not rng.lo_open)))
        if rng.hi is not None:
            out.append(_num(int(rng.hi) + (not rng.hi_open) if integer else float(rng.hi) + (not rng.hi_open)))
    return out if optional else [*out, "null"]


# --- the checks ------------------------------------------------------------------------------------------------

@functools.cache
def _composed(method: str):
    return C.compose([f"method={method}"])


def _parse(override: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0]


def validate_override(key: Key, text: str) -> None:
    """What `compose([method=<m>, <key>=<text>])` does past Hydra's defaults list, at a fraction of its cost: the
    value parsed by Hydra's grammar, set as `++key=value` sets it (merged into a mapping), then `validate`."""
    override = f"{key.path}={text}"
    cfg = copy.deepcopy(_composed(key.method))
    try:
        OmegaConf.update(cfg, key.path, _parse(override).value(), merge=True, force_add=True)
    except OmegaConfBaseException:  # Hydra fails the same way; compose explains it
        C.compose([f"method={key.method}", override])
        return
    C.validate(cfg)


def names_key(message: str, path: str) -> bool:
    """The message holds the dotted key, or its parent's path and the field's name (`invalid 'preprocessing':
    batch_size must be >= 1`, as the dataclasses' own range checks read)."""
    parent, _, leaf = path.rpartition(".")
    return path in message or (f"'{parent}'" in message and re.search(rf"\b{leaf}\b", message) is not None)


def assert_refused(check, key: Key, text: str) -> None:
    try:
        check(key, text)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message, f"{key.path}={text}: not one line: {message!r}"
        assert names_key(message, key.path), f"{key.path}={text}: the message does not name the key: {message}"
    else:
        pytest.fail(f"{key.path}={text} was accepted")


def _through_compose(key: Key, text: str) -> None:
    C.compose([f"method={key.method}", f"{key.path}={text}"])


SETTINGS = {"deadline": None, "database": None}


def test_every_numeric_key_states_its_range():
    numeric = {p for p, k in KEYS.items() if _kind(k) in ("int", "float", "numbers")}
    stated = {p for p, k in KEYS.items() if _range(k) is not None}
    assert numeric - stated == set(), "declare a range next to the field (records.schema.bounded or layer_field)"
    assert len(KEYS) > 100 and {"method.kl.temperature", "preprocessing.batch_size", f"{SOURCE}.max_samples"} <= set(KEYS)


@pytest.mark.parametrize("path", sorted(KEYS))
def test_common_bad_values_are_one_line_config_errors(path):
    key = KEYS[path]
    for text in edge_values(key):
        assert_refused(validate_override, key, text)


@pytest.mark.parametrize("path", sorted(KEYS))
@settings(max_examples=BAD_PER_KEY, **SETTINGS)
@given(data=st.data())
def test_bad_value_is_a_one_line_config_error(path, data):
    key = KEYS[path]
    assert_refused(validate_override, key, data.draw(bad_values(key), label="value"))


@pytest.mark.parametrize("path", sorted(KEYS))
@settings(max_examples=VALID_PER_KEY, **SETTINGS)
@given(data=st.data())
def test_valid_value_is_accepted(path, data):
    key = KEYS[path]
    validate_override(key, data.draw(valid_values(key), label="value"))


@settings(max_examples=THROUGH_COMPOSE, **SETTINGS)
@given(key=st.sampled_from(sorted(KEYS.values())), data=st.data())
def test_compose_refuses_bad_and_accepts_valid_values(key, data):
    assert_refused(_through_compose, key, data.draw(bad_values(key), label="bad"))
    _through_compose(key, data.draw(valid_values(key), label="valid"))


@pytest.mark.parametrize("override,message", [
    ("method.kl.temperature=abc", "invalid value 'abc' for 'method.kl.temperature'; expected float"),
    ("method.kl.temperature=nan", "invalid value nan for 'method.kl.temperature'; expected a finite float"),
    ("method.adl.top_k=abc", "invalid value 'abc' for 'method.adl.top_k'; expected int"),
    ("method.adl.steering_alphas=abc", "'method.adl.steering_alphas' must be a list, got 'abc'"),
    ("method.adl.positions=1", "method.adl.positions must be >= 2, got 1"),
    ("method.adl.layers=[x]", "invalid value 'x' for 'method.adl.layers[0]'; expected float"),
    ("method.adl.steering_layer=1.5", "method.adl.steering_layer has layer fraction 1.5 outside [0, 1]"),
    ("method.normdiff.positions=x", "invalid value 'x' for 'method.normdiff.positions'; expected int"),
    ("method.diffmining.n_examples=-1", "method.diffmining.n_examples must be >= 0, got -1"),
    ("preprocessing.layers=[1.5]", "invalid 'preprocessing': layers has layer fraction 1.5 outside [0, 1]"),
    ("preprocessing.layers=[]", "invalid 'preprocessing': layers must name at least one layer"),
    ("preprocessing.layers={a:1}", "invalid value {a:1} for 'preprocessing.layers'; expected a list"),
    ("method.sae.datasets=[]", "invalid 'method.sae': datasets must name at least one store dataset"),
])
def test_issue_cases_name_the_key_and_what_is_allowed(override, message):
    method = override.split(".")[1] if override.startswith("method.") else "kl"
    with pytest.raises(ConfigError) as e:
        C.compose([f"method={method}", override])
    assert str(e.value).startswith(message)


def test_cli_config_bad_value_is_one_line_and_exit_1():
    result = CliRunner().invoke(app, ["config", "method=kl", "method.kl.temperature=abc"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: invalid value 'abc' for 'method.kl.temperature'; expected float"]
