#!/usr/bin/env bash
# The README's main command: installs the runtime deps if missing, then runs launch.py.
#   bash scripts/run.sh --config=experiments/synthetic_tagging.py [--mode=...] [--config.x=y]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections, conllu, tensorboard" \
  2>/dev/null || python3 -m pip install --quiet -r requirements.txt
exec python3 launch.py "$@"
