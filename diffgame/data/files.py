"""Where the files a config names are: the config folders (the built-in tree, then user folders) and the data files
that configs name by a relative path (`experiments/data/tea_chats.jsonl`, a user's `my_org.jsonl`).

Stages below the config package find an organism's data file here, so they never read the config tree itself.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from diffgame.errors import ConfigError

CONFIG_PATH_ENV = "DIFFGAME_CONFIG_PATH"
"""User config folders searched beside the built-in tree (`os.pathsep`-separated)."""
BUILTIN_ENV = "DIFFGAME_EXPERIMENTS"
"""Replaces the built-in tree (a folder with `config.yaml`), for a checkout with its own tree."""


def builtin_dir() -> Path:
    """The built-in config tree: `$DIFFGAME_EXPERIMENTS`, else the one beside this code: `diffgame/experiments` in
    an installed wheel, the repository's `experiments/` in a checkout (editable or on the path), else wherever the
    `diffgame.experiments` package maps to."""
    env = os.environ.get(BUILTIN_ENV)
    package = Path(__file__).resolve().parent.parent
    candidates = [Path(env)] if env else [package / "experiments", package.parent / "experiments"]
    if not env:
        spec = importlib.util.find_spec("diffgame.experiments")
        candidates += [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path
    raise ConfigError(f"no config tree at {candidates[0]} (expected config.yaml); set {BUILTIN_ENV} to a config "
                      f"tree, or reinstall diffgame")


def user_dirs() -> list[Path]:
    """User config folders from `DIFFGAME_CONFIG_PATH`, in order; a folder that does not exist is an error."""
    out = []
    for part in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"config folder {path} (from {CONFIG_PATH_ENV} or --config-dir) does not exist")
        out.append(path)
    return out


def search_path() -> list[Path]:
    """Every config folder, the built-in tree first, then the user folders."""
    return [builtin_dir(), *user_dirs()]


def find_data_file(name: str) -> tuple[Path | None, list[Path]]:
    """A data file a config names (an organism's JSONL), and every place looked: an absolute path as is, a relative
    one against the working folder, then each config folder's parent and the folder itself (the built-in
    `experiments/data/...` resolves inside an installed package too)."""
    path = Path(name).expanduser()
    roots = search_path()
    tried = [path] if path.is_absolute() else [Path.cwd() / path, *(r.parent / path for r in roots),
                                               *(r / path for r in roots)]
    return next((p.resolve() for p in tried if p.is_file()), None), tried
