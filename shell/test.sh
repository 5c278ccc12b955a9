#!/usr/bin/env bash
# Run the tests inside .venv, creating or updating it from requirements.txt first (shell/venv.sh).
#   bash shell/test.sh                      # every test
#   bash shell/test.sh -m "not slow"        # the fast subset (no subprocesses, no torchrun)
#   bash shell/test.sh tests/test_metrics.py -k rank   # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
. shell/venv.sh
ensure_venv
exec python -m pytest -q "$@"
