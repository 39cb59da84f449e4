#!/usr/bin/env bash
# Wheels the lent GPU machine lacks, for scripts/device_suite.sh. Its image has torch with CUDA, lightning,
# safetensors, xxhash and an older transformers, and it reaches no package registry; diffgame's benchmarks also need
# omegaconf and this environment's transformers. Run here, in the repository root, with the development venv active:
#   bash scripts/device_wheels.sh        # -> .whl/ (ignored by git), then run(..., carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
pinned() { for p in "$@"; do v=$(python -m pip show "$p" 2>/dev/null | sed -n 's/^Version: //p'); echo "$p${v:+==$v}"; done; }
# what transformers and huggingface_hub need beyond the image's packages (their Requires, less what it has)
mapfile -t specs < <(pinned omegaconf transformers huggingface_hub tokenizers httpx2 httpcore2 truststore kernels tomlkit)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl "${specs[@]}"
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only: build its pure-Python wheel here
python -m pip wheel -q --no-deps -w .whl "$(pinned antlr4-python3-runtime)"
du -sh .whl && ls .whl
