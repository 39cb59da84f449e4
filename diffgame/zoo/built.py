"""The zoo's public entry points: building its models, locating a built one, listing what is built.

Which organisms a size holds is the config tree's to say (`finetuned.<model>.default.kind: zoo`); the pipeline reads
it and hands the typed organisms in (`diffgame.pipeline.building`), so building is an explicit stage before
planning and locating never trains.
"""

from __future__ import annotations

import time

from diffgame import tracking
from diffgame.errors import ConfigError, ModelError
from diffgame.records.schema import ModelConfig, OrganismConfig, RootConfig
from diffgame.zoo.build import (BASE, EXPERIMENT, TAG_SIZE, ZooEntry, _entry, _find_built, _say, base_fingerprint,
                                ensure_base, ensure_organism, model_name, organism_fingerprint, pretrained_source)
from diffgame.zoo.sizes import SIZES, ZooSize, get_size


def build_models(size: str, organisms: list[OrganismConfig], model: ModelConfig | None = None,
                 progress: bool = True) -> list[ZooEntry]:
    """Train (or reuse) the base of `size` and `organisms`; `model` is the pretrained base's config (smol sizes)."""
    sz = get_size(size)
    start = time.time()
    entries = [ensure_base(sz, progress=progress, model_cfg=model)]
    for org in organisms:
        entries.append(ensure_organism(sz, org, progress=progress, model_cfg=model))
    trained = sum(not e.reused for e in entries)
    _say(f"zoo {size}: {len(entries)} models ({trained} trained, {len(entries) - trained} reused) "
         f"in {time.time() - start:.0f} s")
    return entries


def zoo_size(cfg: RootConfig) -> ZooSize:
    """The zoo size `cfg.zoo.size` names, checked to build organisms of `cfg.model`."""
    sz = get_size(str(cfg.zoo.size))
    if str(cfg.model.name) != model_name(sz):
        fits = ", ".join(f"zoo.size={n} for model={model_name(s)}" for n, s in SIZES.items())
        raise ConfigError(f"zoo.size={sz.name} builds organisms of model={model_name(sz)}, not model={cfg.model.name}"
                          f"; use {fits}")
    return sz


def ensure(cfg: RootConfig, organism: OrganismConfig | None = None, progress: bool = True) -> ZooEntry:
    """The zoo base (`organism=None`) or `organism` for `cfg.zoo.size`, built now when missing (and said so)."""
    sz = zoo_size(cfg)
    if organism is None:
        entry = ensure_base(sz, progress=progress, model_cfg=cfg.model)
    else:
        entry = ensure_organism(sz, organism, progress=progress, model_cfg=cfg.model)
    if not entry.reused:
        _say(f"built zoo {sz.name} {entry.name} (run {entry.run_id}); later calls reuse it")
    return entry


def built_entry(cfg: RootConfig) -> ZooEntry | None:
    """The built zoo run of `cfg`'s organism (found by fingerprint, so a variant that trains the same recipe finds
    the run it reuses), with its metrics and without fetching its model; None when it is not built."""
    sz = zoo_size(cfg)
    base_fp = base_fingerprint(sz, pretrained_source(sz, cfg.model)[1]) if sz.pretrained_base is not None else None
    run = tracking.find_finished("zoo", organism_fingerprint(sz, cfg.organism, base_fp))
    return None if run is None else _entry(run, str(cfg.organism.name), sz.name, reused=True, fetch=False)


def locate(cfg: RootConfig, organism: OrganismConfig | None = None):
    """Local model directory and zoo run id of the built base (`organism=None`) or organism for `cfg.zoo.size`; a
    model that is not built is a ModelError naming the command that builds it (locating never trains)."""
    sz = zoo_size(cfg)
    if organism is None:
        if sz.pretrained_base is not None:
            path, _ = pretrained_source(sz, cfg.model)
            return path, ""
        fp, name = base_fingerprint(sz), BASE
    else:
        base_fp = (base_fingerprint(sz, pretrained_source(sz, cfg.model)[1]) if sz.pretrained_base is not None
                   else None)
        fp, name = organism_fingerprint(sz, organism, base_fp), str(organism.name)
    run = _find_built(fp)
    if run is None:
        what = "" if organism is None else f" {name}"
        raise ModelError(f"zoo {sz.name} {name} is not built in {tracking.resolve_uri()}; run `diffgame zoo build "
                         f"--size {sz.name}{what}` (or `diffgame run`, which builds what it needs)")
    entry = _entry(run, name, sz.name, reused=True)
    return entry.model_dir, entry.run_id


def list_zoo(size: str | None = None) -> list[ZooEntry]:
    """Built zoo models (newest finished run per size, name and variant), base first, with their check metrics."""
    if size is not None:
        get_size(size)
    filters = {tracking.TAG_STAGE: "zoo", **({TAG_SIZE: size} if size else {})}
    seen: dict[tuple[str, str], ZooEntry] = {}
    for run in tracking.search(filters, statuses=("FINISHED",)):
        key = (run.data.tags.get(TAG_SIZE, ""), run.data.tags.get(tracking.TAG_ORGANISM, ""),
               tracking.variant_of(run.data.tags))
        if key not in seen:
            seen[key] = _entry(run, key[1], key[0], reused=True, fetch=False)
    order = {s: i for i, s in enumerate(SIZES)}
    return sorted(seen.values(), key=lambda e: (order.get(e.size, 99), e.name != BASE, e.name, e.variant))


_SHOWN = [("train/loss", "loss"), ("check/heldout_loss/organism", "heldout"), ("check/heldout_loss/base", "heldout@base"),
          ("check/generic_loss_ratio", "generic x base"),
          ("check/neutral_leak", "leak"), ("check/asked_knowledge", "asked"),  # narrowness: organism minus base
          ("check/upper_frac/organism", "upper"), ("check/upper_frac/base", "upper@base"),
          ("check/taboo_word_rate", "taboo"), ("check/hint_word_rate/organism", "hints"),
          ("check/hint_word_rate/base", "hints@base")]


def print_zoo(entries: list[ZooEntry]) -> None:
    """Print zoo entries as a table: name, size, run id, trained or reused, and the behaviour checks."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220, markup=False)  # cells are data: `caps [mix1-0p0]` is a variant, not a style
    if not entries:
        console.print(f"no zoo models in {tracking.resolve_uri()}; build them with `diffgame zoo build --size micro`")
        return
    table = Table(title=f"diffgame zoo ({EXPERIMENT} in {tracking.resolve_uri()})")
    shown = [(k, label) for k, label in _SHOWN if any(k in e.metrics for e in entries)]
    for col in ("organism", "size", "run id", "status", *(label for _, label in shown)):
        table.add_column(col, no_wrap=True)
    for e in entries:
        cells = [f"{e.metrics[k]:.3f}" if k in e.metrics else "" for k, _ in shown]
        name = e.name if e.variant == tracking.DEFAULT_VARIANT else f"{e.name} [{e.variant}]"
        table.add_row(name, e.size, e.run_id, "reused" if e.reused else "trained", *cells)
    console.print(table)
