#!/usr/bin/env bash
# The README's test command: installs dev deps if missing, then runs the fast test suite.
# Pass `-m slow` (or `-m ""` for everything) to include the end-to-end runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import jax, flax, torch, pytest" 2>/dev/null \
  || python3 -m pip install --quiet -r requirements-dev.txt
export BIRNN_DATA_DIR="${BIRNN_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec python3 -m pytest -n 2 --dist loadfile -q "$@"
