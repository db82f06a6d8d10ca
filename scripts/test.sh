#!/usr/bin/env bash
# The README's test command: tests birnn_jax as a user gets it.
#  1. builds the wheel from this tree;
#  2. installs it with the `test` extra into a virtual environment of its own ($BIRNN_TEST_VENV,
#     default .venv-test; made fresh when missing, and the wheel is always reinstalled);
#  3. checks the import contract (the floors of the package, pyproject.toml) on the installed
#     package;
#  4. runs pytest from a folder holding the tests, experiments/, docs/, launch.py and README.md but
#     not the package source, so every import is of the installed wheel: a file missing from
#     the package fails a test.
# Pass pytest arguments through: `-m slow` (or `-m ""` for everything) adds the end-to-end runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${BIRNN_TEST_VENV:-$root/.venv-test}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "[test.sh] building the wheel"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" . 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls "$work"/dist/birnn_jax-*.whl)

if [ ! -x "$venv/bin/python" ]; then
  echo "[test.sh] making a fresh environment in $venv"
  python3 -m venv "$venv"
fi
pins=$(grep -oE '^[A-Za-z0-9_.-]+==[^ #]+' requirements-dev.txt | tr '\n' ' ')  # torch's CPU build, ml_dtypes (see there)
echo "[test.sh] installing $(basename "$wheel")[test] ($pins)"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel[test]" $pins \
  2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$wheel" 2>&1 | grep -v "^WARNING: Location" || true

mkdir "$work/tree"
cp -r tests experiments docs scripts launch.py README.md pytest.ini pyproject.toml requirements.txt "$work/tree/"
cd "$work/tree"
echo "[test.sh] import contract"
"$venv/bin/lint-imports" --no-cache
echo "[test.sh] pytest against $("$venv/bin/python" -c 'import birnn_jax; print(birnn_jax.__file__)')"
export BIRNN_TEST_INSTALLED=1
set +e
"$venv/bin/python" -m pytest -n 2 --dist loadfile -q "$@"
status=$?
set -e
[ "$status" -eq 5 ] && { echo "[test.sh] no test was selected"; exit 5; }
exit "$status"
