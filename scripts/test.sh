#!/usr/bin/env bash
# The README's test command: install (CPU torch from disk first), browser deps, then pytest.
set -euo pipefail
pip install torch==2.13.0
pip install -e ".[test]"
python -m pytest -q -ra "$@"
