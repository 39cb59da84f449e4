"""Read the configured datasets and tokenize them into sequences with a role per token (text, user, assistant, template).

Sources: hub ids and local files (jsonl/json, txt, parquet) through `datasets`, the zoo's corpora
(`zoo:generic_text`, `zoo:generic_chat`) and the organism's own training data (`organism`). Chats are
rendered with the tokenizer's chat template; message contents are mapped to tokens through the fast
tokenizer's character offsets, so every other token of the rendering is `template`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffgame.data.corpora import corpus
from diffgame.data.files import find_data_file
from diffgame.errors import DataError
from diffgame.records.schema import DatasetSource, OrganismConfig, RootConfig

ROLES = ("text", "user", "assistant", "template")
"""Role codes 0..3 stored per token in the activation store."""
TEXT, USER, ASSISTANT, TEMPLATE = range(4)
_MESSAGE_ROLES = {"user": USER, "assistant": ASSISTANT, "system": USER, "model": ASSISTANT}
"""Chat message roles -> role codes (a system prompt is input, like a user turn)."""
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


@dataclass
class TokenizedSequence:
    """One row of a dataset, tokenized and truncated."""

    dataset: str
    """Name of the source in `cfg.dataset.sources`."""
    sequence_id: int
    """Row index in the source (after skipping nothing; rows are taken in order)."""
    input_ids: list[int]
    roles: list[int]
    """Role code per token, indexing `ROLES`."""


# --- chat rendering --------------------------------------------------------------------------------
def render_chat(messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Render `messages` with the tokenizer's chat template; return (ids, roles), roles per `ROLES`."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has no chat "
                        f"template; chat data needs one: use a chat model or set the dataset's kind=text")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; per-token roles need "
                        f"character offsets (load it with use_fast=True)")
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **getattr(tokenizer, "diffgame_template_kwargs", {}))
    spans, cursor = [], 0  # (start, end, role) of each message's content in the rendered text
    for m in messages:
        content = m["content"].strip()
        if not content:
            continue
        at = text.find(content, cursor)
        if at < 0:  # the template rewrote the content; its tokens stay `template`
            continue
        spans.append((at, at + len(content), _MESSAGE_ROLES.get(m["role"], USER)))
        cursor = at + len(content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    roles, k = [], 0
    for start, end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        inside = k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start
        roles.append(spans[k][2] if inside else TEMPLATE)
    return ids, roles


# --- reading rows ----------------------------------------------------------------------------------
def _read_rows(source: str, split: str, limit: int | None = None, subset: str | None = None,
               override: str = "dataset.sources.<name>.source") -> list[dict[str, Any]]:
    """The first `limit` rows of a hub dataset, a local file (jsonl, json, txt, parquet) or a `save_to_disk` folder,
    in order. Files and hub splits are streamed (a hub split is never loaded whole) and a hub sample is cached on
    disk, so the same config reads the same rows again, offline too. `override`: the key that points this source at a
    local copy, named in the offline error."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_disk(path, split, limit)
    if path.suffix in _LOCAL_BUILDERS or path.exists():
        if not path.is_file():
            raise DataError(f"dataset file {path} does not exist; fix the dataset's `source` (a hub id, a "
                            f"jsonl/json/txt/parquet file or a save_to_disk folder)")
        builder = _LOCAL_BUILDERS.get(path.suffix)
        if builder is None:
            raise DataError(f"cannot read {path}: unknown file type '{path.suffix}'; "
                            f"supported: {', '.join(sorted(_LOCAL_BUILDERS))} and save_to_disk folders")
        return _stream(builder, None, "train", limit, str(path), data_files=str(path))
    cached = _sample_file(source, subset, split, limit)
    if cached.is_file():
        return _read_jsonl(cached)
    where = f"{source}{f' ({subset})' if subset else ''}, split {split}"
    hint = (f"; offline or private? point it at a local copy: {override}=/path/to/copy "
            f"(jsonl, parquet or a save_to_disk folder)")
    if _HUB["unreachable"]:  # one unreachable hub is enough: no minute of retries per further dataset
        raise DataError(f"cannot read dataset {where}: the hub was unreachable earlier in this process{hint}")
    rows = _stream(source, subset, split, limit, where, hint=hint)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    tmp.replace(cached)  # whole or absent: a crash never leaves half a sample
    return rows


_HUB = {"unreachable": False}
"""Set when a hub read failed for want of a network; later hub reads in the process fail at once (`_read_rows`)."""


def _stream(name: str, subset: str | None, split: str, limit: int | None, where: str, hint: str = "",
            **kw) -> list[dict[str, Any]]:
    """The first `limit` rows of `datasets.load_dataset(..., streaming=True)`, in order."""
    import datasets

    try:
        ds = datasets.load_dataset(name, subset, split=split, streaming=True, **kw)
        return list(itertools.islice(ds, limit))
    except (ValueError, KeyError) as e:
        raise DataError(f"cannot read dataset {where}: {str(e).splitlines()[0][:300]}{hint}") from None
    except Exception as e:  # unreachable hub, malformed file, unknown split
        if hint and isinstance(e, OSError):  # a hub read (local files get no hint) that met no network
            _HUB["unreachable"] = True
        raise DataError(f"cannot read dataset {where}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                        f"{hint or '; check the path or hub id'}") from None


def _from_disk(path: Path, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` rows of a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder (`split` of a dict)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"cannot read {path} as a save_to_disk dataset: {str(e).splitlines()[0][:200]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path} has no split '{split}'; splits: {', '.join(ds)}")
        ds = ds[split]
    return ds.select(range(min(len(ds), limit if limit is not None else len(ds)))).to_list()


def _sample_file(source: str, subset: str | None, split: str, limit: int | None) -> Path:
    """Where the first `limit` rows of a hub split are kept: `$DIFFGAME_CACHE/data` (default ~/.cache/diffgame)."""
    key = hashlib.sha256(json.dumps([source, subset, split, limit]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("DIFFGAME_CACHE", Path.home() / ".cache" / "diffgame"))
    return root / "data" / f"{source.replace('/', '__')}-{key}.jsonl"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _zoo_corpus(name: str, split: str) -> list[dict[str, Any]]:
    return list(corpus(name, split))


def source_rows(organism: OrganismConfig | None, src: DatasetSource, name: str = "<name>"
                ) -> tuple[list[dict[str, Any]], str]:
    """Rows of one dataset source and the kind (`text` or `chat`) to read them as; `organism` (its config node)
    is read for the `organism` source (its own training data)."""
    source, kind = str(src.source), str(src.kind)
    if source.startswith("zoo:"):
        rows = _zoo_corpus(source.removeprefix("zoo:"), src.split)
    elif source == "organism":
        if organism is None:
            raise DataError("the `organism` data source needs an organism config")
        rows, kind = _organism_rows(organism, src)
    else:
        rows = _read_rows(source, src.split, src.max_samples, src.subset,
                          override=f"dataset.sources.{name}.source")
    return rows, kind


def read_rows(source: str, kind: str = "text", split: str = "test", limit: int | None = None,
              organism: OrganismConfig | None = None, sources: dict[str, DatasetSource] | None = None
              ) -> list[dict[str, Any]]:
    """The first `limit` rows of one source (a zoo corpus, hub id, local file, `organism`, or `@name`: a source of the
    dataset preset, `sources`), e.g. a method's text. A preset source is read with its own split, subset and columns,
    its rows keyed `text` / `messages` like every other source's."""
    if source.startswith("@"):
        name, node = preset_source(source, sources)
        src = dataclasses.replace(node, max_samples=limit, max_tokens=None)
        rows, _ = source_rows(organism, src, name)
        columns = {str(node.text_column or "text"): "text", str(node.messages_column or "messages"): "messages"}
        rows = [{columns.get(k, k): v for k, v in r.items()} for r in rows]
    else:
        src = DatasetSource(source=source, kind=kind, split=split, max_samples=limit)
        rows, _ = source_rows(organism, src)
    return rows[:limit] if limit is not None else rows


PRESET_KINDS = ("text", "chat")
"""`@text` / `@chat`: the dataset preset's first text / chat source other than the organism's data."""


def preset_source(ref: str, sources: dict[str, DatasetSource] | None) -> tuple[str, DatasetSource]:
    """The dataset preset's source that `@name` names (`@pretraining`), or for `@text` / `@chat` its first source of
    that kind that is not the organism's data; a DataError lists the choices."""
    name = ref.removeprefix("@")
    sources = sources or {}
    if name in sources:
        return name, sources[name]
    if name in PRESET_KINDS:
        for key, node in sources.items():
            if str(node.kind) == name and str(node.source) != "organism":
                return str(key), node
    choices = ", ".join(dict.fromkeys([*(f"@{k}" for k in sources), *(f"@{k}" for k in PRESET_KINDS)]))
    raise DataError(f"'{ref}' names no source of the dataset preset; choices: {choices} (or a zoo corpus, hub id or "
                    f"local file)")


def request_source(source: str, sources: dict[str, DatasetSource] | None) -> str:
    """What a method's text source reads: a `@name` reference's own source, else the source itself."""
    if source.startswith("@"):
        try:
            return str(preset_source(source, sources)[1].source)
        except DataError:
            return source
    return source


def _organism_rows(org: OrganismConfig, src: DatasetSource) -> tuple[list[dict[str, Any]], str]:
    """The organism's finetuning data: `training_data` (the zoo recipe's on a base the zoo builds), else `zoo.data`."""
    data = org.training_data or org.zoo.data
    if not data:
        raise DataError(f"organism '{org.name}' declares no training data (zoo.data or training_data); "
                        f"drop the `organism` source from the dataset or set organism.training_data")
    local, _ = find_data_file(data)  # a relative path may name a file beside the config tree
    if data.startswith("builtin:"):
        rows = _zoo_corpus(data.removeprefix("builtin:"), src.split)
    elif local is not None and local.suffix == ".jsonl":
        rows = _read_jsonl(local)
    else:
        # the organism's own data is named once, by `training_data`: preprocessing and ground truth both read it
        rows = _read_rows(str(local or data), src.split, src.max_samples, override="organism.training_data")
    chat = org.zoo.format == "chat" or (rows and src.messages_column in rows[0])
    return rows, "chat" if chat else str(src.kind)


# --- tokenization ----------------------------------------------------------------------------------
def _tokenize_rows(name: str, rows: list[dict], kind: str, src: DatasetSource, tokenizer,
                   context_length: int, skipped: dict[str, int] | None = None) -> list[TokenizedSequence]:
    """The rows as token sequences; a chat the tokenizer's template refuses (a system turn it does not take, roles
    that do not alternate) is skipped and counted in `skipped[name]`, not fatal."""
    from jinja2.exceptions import TemplateError

    column = src.messages_column if kind == "chat" else src.text_column
    if rows and column not in rows[0]:
        raise DataError(f"dataset '{name}' ({src.source}) has no column '{column}'; columns: "
                        f"{', '.join(sorted(rows[0]))}; set dataset.sources.{name}."
                        f"{'messages_column' if kind == 'chat' else 'text_column'} or kind")
    out: list[TokenizedSequence] = []
    budget = src.max_tokens
    for i, row in enumerate(rows):
        if src.max_samples is not None and len(out) >= src.max_samples:
            break
        value = row.get(column)
        if kind == "chat":
            if not value:
                continue
            if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                      for m in value):
                raise DataError(f"dataset '{name}' ({src.source}) row {i}: '{column}' must be a list of "
                                f"{{role, content}} messages, got {str(value)[:60]!r}")
            try:
                ids, roles = render_chat(list(value), tokenizer)
            except TemplateError:
                if skipped is not None:
                    skipped[name] = skipped.get(name, 0) + 1
                continue
        else:
            if not value or not str(value).strip():
                continue
            ids = list(tokenizer(str(value), add_special_tokens=True)["input_ids"])
            roles = [TEXT] * len(ids)
        ids, roles = ids[:context_length], roles[:context_length]
        if budget is not None:
            ids, roles = ids[:budget], roles[:budget]
            budget -= len(ids)
        if ids:
            out.append(TokenizedSequence(name, i, ids, roles))
        if budget is not None and budget <= 0:
            break
    if not out:
        raise DataError(f"dataset '{name}' ({src.source}, split {src.split}) yielded no sequences "
                        f"({len(rows)} rows); check the source, split and column '{column}'")
    return out


def load_sequences(cfg: RootConfig, tokenizer, skipped: dict[str, int] | None = None
                   ) -> dict[str, list[TokenizedSequence]]:
    """Every source in `cfg.dataset.sources`, tokenized, truncated and limited, in a deterministic order; chats the
    template refuses are counted per source in `skipped`."""
    sources = cfg.dataset.sources
    if not sources:
        raise DataError(f"dataset '{cfg.dataset.name}' has no sources; add some under dataset.sources")
    out = {}
    for name in sources:
        src = sources[name]
        rows, kind = source_rows(cfg.organism, src, str(name))
        out[str(name)] = _tokenize_rows(str(name), rows, kind, src, tokenizer, int(cfg.preprocessing.context_length),
                                        skipped)
    return out


def data_identity(cfg: RootConfig) -> dict:
    """What the fingerprint covers about the data: sources, limits, and local files' size and mtime."""
    ident: dict[str, Any] = {"sources": {k: dataclasses.asdict(v) for k, v in cfg.dataset.sources.items()},
                             "organism_data": [cfg.organism.zoo.data, cfg.organism.zoo.format,
                                               cfg.organism.training_data]}
    files = [str(s.source) for s in cfg.dataset.sources.values()]
    files += [d for d in (cfg.organism.zoo.data, cfg.organism.training_data) if d]
    for f in files:
        p, _ = find_data_file(f)
        if p is not None:
            st = p.stat()
            ident[f"file:{f}"] = [st.st_size, st.st_mtime_ns]
    return ident
