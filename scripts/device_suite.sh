#!/usr/bin/env bash
# The whole GPU lend in one prepared command (issue #34): every GPU row of docs/benchmarks.md in <= 8 minutes.
# Prepare here with `bash scripts/device_wheels.sh`, then call the device tool's run with
#   command="bash scripts/device_suite.sh", carry=[".whl"], timeout_s=560
# and give the machine back. The suite's JSON and log come back through $OUT: copy the JSON to
# benchmarks/measured/suite-gpu.json and run `python scripts/bench_tables.py --write docs/benchmarks.md`.
# Rehearse here: WHEELS=0 PROFILE=tiny OUT=/tmp/rehearsal bash scripts/device_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/measured}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, omegaconf, diffgame; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" \
  || exit 1
# first the tiny shapes with CUDA's sync debug mode: every line where the host waits on the device (~20 s)
python3 benchmarks/suite.py --profile tiny --sync-debug --json "$out/suite-syncs.json" > "$out/suite-syncs.log" 2>&1
profile="${PROFILE:-gpu}"
python3 benchmarks/suite.py --profile "$profile" --budget-s "${BUDGET_S:-420}" --json "$out/suite-$profile.json" 2>&1 \
  | tee "$out/suite-$profile.log"
