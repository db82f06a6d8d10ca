#!/usr/bin/env bash
# Builds the documentation site: docs/ -> docs/_build/html (open docs/_build/html/index.html).
#  1. builds the wheel from this tree;
#  2. installs it with the `docs` extra into a virtual environment of its own
#     ($BIRNN_DOCS_VENV, default .venv-docs; made fresh when missing, the wheel always
#     reinstalled), so the API reference documents the package as a user installs it;
#  3. runs Sphinx with every warning an error (-W) and every cross-reference checked (-n).
# Needs no network once the environment has its packages (no intersphinx, nothing fetched).
# Extra arguments go to sphinx-build (e.g. -E to re-read every page).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${BIRNN_DOCS_VENV:-$root/.venv-docs}
out=${BIRNN_DOCS_OUT:-$root/docs/_build/html}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { grep -v "^WARNING: Location" || true; }

echo "[docs.sh] building the wheel"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" . 2>&1 | quiet
wheel=$(ls "$work"/dist/birnn_jax-*.whl)
if [ ! -x "$venv/bin/python" ]; then
  echo "[docs.sh] making a fresh environment in $venv"
  python3 -m venv "$venv"
fi
echo "[docs.sh] installing $(basename "$wheel")[docs]"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel[docs]" 2>&1 | quiet
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$wheel" 2>&1 | quiet

echo "[docs.sh] sphinx-build docs -> $out"
start=$(date +%s)
# From a folder without the package source, so autodoc imports the installed wheel.
(cd "$work" && "$venv/bin/python" -m sphinx -W --keep-going -n -q -b html "$@" "$root/docs" "$out")
echo "[docs.sh] built in $(( $(date +%s) - start )) s, no warnings: $out/index.html"
