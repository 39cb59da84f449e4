"""The zoo's public entry points: which organisms it holds, building them, locating one, listing what is built.

Zoo organisms are the organism configs whose weights for `model=toy` are `kind: zoo`, so one registry
(`experiments/organism/`) serves the zoo and public organisms alike.
"""

from __future__ import annotations

import time

from diffgame import tracking
from diffgame.config.configtree import organism_node, zoo_organisms
from diffgame.errors import ConfigError
from diffgame.zoo.build import (BASE, EXPERIMENT, TAG_SIZE, ZooEntry, _entry, _say, ensure_base, ensure_organism,
                                model_name)
from diffgame.zoo.sizes import SIZES, get_size


def build_zoo(size: str = "small", names: list[str] | None = None, progress: bool = True) -> list[ZooEntry]:
    """Train (or reuse) the base and the named zoo organisms (all when `names` is empty) for `size`."""
    sz = get_size(size)
    known = zoo_organisms(model_name(sz))
    names = list(names) if names else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown zoo organism '{unknown[0]}'; known: {', '.join(known)}")
    organisms = [organism_node(n) for n in names]  # compose all first: config errors before any training
    start = time.time()
    entries = [ensure_base(sz, progress=progress)]
    for org in organisms:
        entries.append(ensure_organism(sz, org, progress=progress))
    trained = sum(not e.reused for e in entries)
    _say(f"zoo {size}: {len(entries)} models ({trained} trained, {len(entries) - trained} reused) "
         f"in {time.time() - start:.0f} s")
    return entries


def locate(cfg, organism: str | None = None):
    """Local model directory and zoo run id of the base (`organism=None`) or an organism, for `cfg.zoo.size`.

    Builds what is missing (the base, then that organism) and says so. The organism recipe is `cfg.organism`
    when its name matches, so overrides like `organism.zoo.mix=0.5` apply; otherwise the named config.
    """
    sz = get_size(str(cfg.zoo.size))
    if str(cfg.model.name) != model_name(sz):
        fits = ", ".join(f"zoo.size={n} for model={model_name(s)}" for n, s in SIZES.items())
        raise ConfigError(f"zoo.size={sz.name} builds organisms of model={model_name(sz)}, not model={cfg.model.name}"
                          f"; use {fits}")
    if organism is None:
        entry = ensure_base(sz, model_cfg=cfg.model)
    else:
        org = cfg.organism if str(cfg.organism.name) == organism else organism_node(organism)
        entry = ensure_organism(sz, org, model_cfg=cfg.model)
    if not entry.reused:
        _say(f"built zoo {sz.name} {entry.name} (run {entry.run_id}); later calls reuse it")
    return entry.model_dir, entry.run_id


def list_zoo(size: str | None = None) -> list[ZooEntry]:
    """Built zoo models (newest finished run per size and name), base first, with their check metrics."""
    if size is not None:
        get_size(size)
    filters = {tracking.TAG_STAGE: "zoo", **({TAG_SIZE: size} if size else {})}
    seen: dict[tuple[str, str], ZooEntry] = {}
    for run in tracking.search(filters, statuses=("FINISHED",)):
        key = (run.data.tags.get(TAG_SIZE, ""), run.data.tags.get(tracking.TAG_ORGANISM, ""))
        if key not in seen:
            seen[key] = _entry(run, key[1], key[0], reused=True, fetch=False)
    order = {s: i for i, s in enumerate(SIZES)}
    return sorted(seen.values(), key=lambda e: (order.get(e.size, 99), e.name != BASE, e.name))


_SHOWN = [("train/loss", "loss"), ("check/heldout_loss/organism", "heldout"), ("check/heldout_loss/base", "heldout@base"),
          ("check/generic_loss/organism", "generic"), ("check/generic_loss/base", "generic@base"),
          ("check/upper_frac/organism", "upper"), ("check/upper_frac/base", "upper@base"),
          ("check/taboo_word_rate", "taboo"), ("check/hint_word_rate/organism", "hints"),
          ("check/hint_word_rate/base", "hints@base")]


def print_zoo(entries: list[ZooEntry]) -> None:
    """Print zoo entries as a table: name, size, run id, trained or reused, and the behaviour checks."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)
    if not entries:
        console.print(f"no zoo models in {tracking.resolve_uri()}; build them with `diffgame zoo build --size micro`")
        return
    table = Table(title=f"diffgame zoo ({EXPERIMENT} in {tracking.resolve_uri()})")
    shown = [(k, label) for k, label in _SHOWN if any(k in e.metrics for e in entries)]
    for col in ("organism", "size", "run id", "status", *(label for _, label in shown)):
        table.add_column(col, no_wrap=True)
    for e in entries:
        cells = [f"{e.metrics[k]:.3f}" if k in e.metrics else "" for k, _ in shown]
        table.add_row(e.name, e.size, e.run_id, "reused" if e.reused else "trained", *cells)
    console.print(table)
