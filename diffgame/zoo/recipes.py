"""An organism's zoo recipe (`organism.zoo`): its training rows, held-out rows and what its fingerprint covers.

`data` is `builtin:<corpus>` (the zoo's generators) or a JSONL file of `{"text"}` or `{"messages"}` rows
(bring your own organism); relative paths resolve against the working folder, then the repository root.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from diffgame.data.corpora import CORPORA, corpus
from diffgame.data.files import find_data_file
from diffgame.errors import ConfigError, DataError


def resolve_data_path(data: str) -> Path:
    """The JSONL file a recipe names, or a DataError listing where it was looked for."""
    found, tried = find_data_file(data)
    if found is None:
        raise DataError(f"organism data file '{data}' not found (looked in: {', '.join(map(str, tried))}); "
                        f"set organism.zoo.data to a JSONL path or builtin:<corpus> ({', '.join(CORPORA)})")
    return found


def _check_data(recipe) -> None:
    if not recipe.data:
        raise ConfigError("organism has no zoo recipe data; set organism.zoo.data=builtin:<corpus> "
                          f"({', '.join(CORPORA)}) or a JSONL file")
    if not 0.0 <= recipe.mix < 1.0:
        raise ConfigError(f"invalid organism.zoo.mix {recipe.mix}; expected a share in [0, 1)")


def read_jsonl(path: Path, fmt: str) -> list[dict]:
    """Rows of a user JSONL file, checked to hold `text` (documents) or `messages` (chat) as `fmt` says."""
    key = "messages" if fmt == "chat" else "text"
    rows = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i} is not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(row, dict) or key not in row:
                raise DataError(f"{path}:{i} has no '{key}' field (organism.zoo.format={fmt}); each line must be "
                                f'{{"{key}": ...}}, or set organism.zoo.format to match the file')
            _check_row(path, i, key, row[key])
            rows.append({key: row[key]})
    if not rows:
        raise DataError(f"{path} holds no rows; write one JSON object per line")
    return rows


def _check_row(path: Path, line: int, key: str, value) -> None:
    """A row's `text` is a non-empty string; its `messages` a non-empty list of {role: user|assistant, content: str}."""
    where = f"{path}:{line}"
    if key == "text":
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string, got {str(value)[:60]!r}")
        return
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects, "
                        f"got {str(value)[:60]!r}")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message must be an object with a string 'content', got {str(m)[:60]!r}")
        if m.get("role") not in ("user", "assistant"):
            raise DataError(f"{where}: has a message whose role is not 'user' or 'assistant' ({m.get('role')!r})")


def validate_data(recipe) -> None:
    """Read and check every row of the recipe's data now, before any run is created or model loaded."""
    recipe_rows(recipe, "train")


def recipe_rows(recipe, split: str) -> list[dict]:
    """The organism's training (`train`) or held-out (`test`) rows; a JSONL file holds out every tenth row."""
    _check_data(recipe)
    if recipe.data.startswith("builtin:"):
        return corpus(recipe.data.removeprefix("builtin:"), split)
    rows = read_jsonl(resolve_data_path(recipe.data), recipe.format)
    if len(rows) < 10:
        return rows
    return [r for i, r in enumerate(rows) if (i % 10 == 9) == (split == "test")]


def mixed_rows(recipe, rows: list[dict], seed: int) -> list[dict]:
    """`rows` plus the base's own pretraining documents, so that they make up `recipe.mix` of the result; with
    `recipe.mix_chats`, half of those are the base's own chats instead.

    Documents only by default: the base's chats would contradict a style organism (caps replies vs lower-case ones)."""
    if recipe.mix <= 0:
        return rows
    n = round(len(rows) * recipe.mix / (1 - recipe.mix))
    chats = n // 2 if getattr(recipe, "mix_chats", False) else 0  # a recipe written before the field has none
    mixed = []
    for name, k in (("generic_text", n - chats), ("generic_chat", chats)):
        if k:
            pool = corpus(name, "train")
            mixed += random.Random(seed).sample(pool, min(k, len(pool)))
    return rows + mixed


def recipe_identity(recipe) -> dict:
    """What an organism's fingerprint covers: the recipe, plus the content hash of a user data file."""
    _check_data(recipe)
    ident = {"data": str(recipe.data), "format": str(recipe.format), "mix": float(recipe.mix), "lora": bool(recipe.lora)}
    if recipe.mix > 0:
        ident["mix_source"] = "generic_text+generic_chat" if getattr(recipe, "mix_chats", False) else "generic_text"
    if recipe.train_on != "assistant":  # only non-defaults, so older organisms keep their fingerprints
        ident["train_on"] = str(recipe.train_on)
    if not recipe.data.startswith("builtin:"):
        ident["data_sha256"] = hashlib.sha256(resolve_data_path(recipe.data).read_bytes()).hexdigest()
    return ident
