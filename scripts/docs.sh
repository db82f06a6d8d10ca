#!/usr/bin/env bash
# Builds the documentation site: docs/ -> docs/_build/html (open docs/_build/html/index.html).
#  1. builds the wheel from this tree;
#  2. installs it with the `docs` extra into a virtual environment of its own
#     ($BIRNN_DOCS_VENV, default .venv-docs; made fresh when missing, the wheel always
#     reinstalled), so the API reference documents the package as a user installs it;
#  3. runs Sphinx with every warning an error (-W) and every cross-reference checked (-n);
#  4. checks that the site works offline: no page loads a script or a stylesheet from the
#     network, every local one it loads is in the build, and the index page's formulas use
#     the build's own MathJax (_static/mathjax/, from sphinx-mathjax-offline).
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
"$venv/bin/python" - "$out" <<'PY'
import pathlib, re, sys
out = pathlib.Path(sys.argv[1])
problems, mathjax = [], []
for page in sorted(out.rglob("*.html")):
  if "_static" in page.relative_to(out).parts:
    continue                                      # the theme's template fragments
  html = page.read_text(encoding="utf-8")
  tags = re.findall(r"<script\b[^>]*>|<link\b[^>]*\brel=\"(?:stylesheet|preload)\"[^>]*>", html)
  for tag in tags:
    url = re.search(r"\b(?:src|href)=\"([^\"]*)\"", tag)
    if url is None:
      continue                                    # an inline script
    url, name = url.group(1), page.relative_to(out)
    if re.match(r"(?i)(https?:)?//", url):
      problems.append(f"{name} loads {url} from the network")
    elif not (page.parent / url.split("?")[0].split("#")[0]).is_file():
      problems.append(f"{name} loads {url}, which is not in the build")
    elif "mathjax" in url.lower() and page == out / "index.html":
      mathjax.append(url)
if not mathjax:
  problems.append("index.html loads no MathJax of the build's own (its formulas are raw TeX)")
sys.exit("[docs.sh] not offline:\n  " + "\n  ".join(problems) if problems else 0)
PY
echo "[docs.sh] built in $(( $(date +%s) - start )) s, no warnings, no script from the network: $out/index.html"
