"""What the results scripts share: how a number and an organism read in a table, and the command line that prints
a block or rewrites a page between the block's markers (everything outside them stays as written)."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from diffgame import tracking
from diffgame.config import configtree
from diffgame.errors import ConfigError

DEFAULT_MODEL = "toy"


def kind_of(organism: str) -> str:
    """`built-in`, `BYO` (a user's data file) or `BYO, generated` (`scripts/make_byo_organisms.py`), from its config."""
    if organism.startswith("byo_"):
        return "BYO, generated"
    try:
        data = configtree.organism_settings(organism).zoo.data or ""
    except ConfigError:
        return "not in the config tree"
    return "built-in" if data.startswith("builtin:") else "BYO"


def label(organism: str) -> str:
    kind = kind_of(organism)
    return organism if kind == "built-in" else f"{organism} ({kind})"


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec).replace("-", "−")


def provenance(script: str, runs: pd.DataFrame, what: str) -> str:
    """The line that opens a block: the store, the script and today, `what` was read, and when and where `runs` (a
    `runs_frame` table) were started."""
    machines = sorted({t.get(tracking.TAG_MACHINE, "a machine not recorded (runs made before the tag)")
                       for t in runs["tags"]})
    first, last = runs["start_time"].min(), runs["start_time"].max()
    return (f"Read from `{tracking.resolve_uri()}` by `scripts/{script}` on {dt.date.today().isoformat()}: {what}, "
            f"started {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC on {'; '.join(machines)}")


WORDS_BEFORE_TAG = "2 or earlier"
"""The word-completion rule of a diff run made before runs were tagged with theirs."""


def words_version(tags: dict) -> str:
    """The word-completion rule a diff run's words were made under (`diffgame.grading.words.WORDS_VERSION`)."""
    return tags.get(tracking.TAG_WORDS, WORDS_BEFORE_TAG)


def words_versions(runs: pd.DataFrame) -> str:
    """`words version 3 (adl, kl); 2 or earlier (blackbox)`: the rules `runs` (a `runs_frame` table) were made under,
    each with its methods."""
    by_version: dict[str, set[str]] = {}
    for tags, method in zip(runs["tags"], runs["method"]):
        by_version.setdefault(words_version(tags), set()).add(method)
    if len(by_version) == 1:
        return f"words version {next(iter(by_version))}"
    newest_first = sorted(by_version.items(), key=lambda kv: -int(kv[0].split()[0]))
    return "words version " + "; ".join(f"{v} ({', '.join(sorted(m))})" for v, m in newest_first)


def cli(argv: list[str] | None, doc: str, render: Callable[[str], str],
        marks: Callable[[str], tuple[str, str]]) -> int:
    """The command line: the store, base model and config folder, then print `render(model)`'s block or rewrite a
    page between `marks(model)`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="the store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model name (the diffgame.model tag)")
    parser.add_argument("--config-dir", default=None, help="a user config folder (the BYO organisms' configs)")
    parser.add_argument("--write", type=Path, default=None, help="rewrite this page between its block's markers")
    args = parser.parse_args(argv)
    if args.config_dir:
        configtree.add_user_dir(args.config_dir)
    tracking.set_uri(args.tracking_uri)
    return emit(render(args.model), args.write, marks(args.model))


def emit(block: str, page_path: Path | None, marks: tuple[str, str]) -> int:
    """Print `block`, or rewrite `page_path` between `marks` (the block starts and ends with them)."""
    if page_path is None:
        sys.stdout.write(block)
        return 0
    page = page_path.read_text()
    first, last = marks
    start, end = page.find(first), page.find(last)
    if start < 0 or end < 0:
        raise SystemExit(f"{page_path} has no markers of this block: put the lines {first!r} and {last!r} where it "
                         "goes")
    page_path.write_text(page[:start] + block.rstrip("\n") + page[end + len(last):])
    print(f"wrote {page_path}")
    return 0
