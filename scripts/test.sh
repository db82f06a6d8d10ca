#!/usr/bin/env bash
# The README's test command: installs dev deps if missing, then runs the fast test suite.
# Pass `-m slow` (or `-m ""` for everything) to include the end-to-end runs. The tests read
# the corpora bundled in birnn_jax/data/bundled and never the network.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import jax, flax, torch, pytest, seqeval" 2>/dev/null \
  || python3 -m pip install --quiet -r requirements-dev.txt
exec python3 -m pytest -n 2 --dist loadfile -q "$@"
