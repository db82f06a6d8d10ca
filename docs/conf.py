"""Sphinx configuration of the birnn_jax documentation (`bash scripts/docs.sh` builds it).

The build is offline and strict: `sphinx-build -W -n` turns every warning into an error,
including a cross-reference that does not resolve (nitpicky). There is no intersphinx (it
would download the inventories of jax, flax and numpy), so references to other projects'
objects in type annotations are listed in `nitpick_ignore_regex` instead of linked. The site
is offline too: MathJax is served from the build itself (`sphinx-mathjax-offline` copies
MathJax 3 into `_static/mathjax/`), and scripts/docs.sh checks that no page loads a script
from the network.
"""

import importlib.metadata
import re

project = "birnn_jax"
author = "the birnn_jax authors"
copyright = "the birnn_jax authors"  # pylint: disable=redefined-builtin
release = importlib.metadata.version("birnn_jax")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",   # MathJax's files into _static/mathjax/ (no CDN)
]
# What sphinx-mathjax-offline sets too, said here so that the page's script is plain to see.
mathjax_path = "mathjax/tex-chtml.js"

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "experiments/results"]   # runs' own files

# MyST: ::: fences, $math$, definition lists; anchors for headings down to ###, so pages
# link to sections as [text](page.md#section).
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Docstrings are Google style (Args / Returns / Raises / Example). Single backticks in them
# are inline code; links are explicit roles (:func:`birnn_jax.crf.viterbi`), checked.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False

nitpicky = True
nitpick_ignore_regex = [
    # Other projects' objects (no intersphinx offline) and the aliases our modules use for them.
    (r"py:.*", r"(jax|jnp|flax|nn|nnx|numpy|np|optax|orbax|ocp|ml_collections|torch|pathlib|os|"
               r"typing|collections|dataclasses)(\..*)?"),
    (r"py:.*", r"(Array|Dtype|Carry|Merge|PRNGKey|ArrayLike)"),
]

html_theme = "sphinx_book_theme"
html_title = f"birnn_jax {release}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
html_static_path = []
html_show_sourcelink = False


def _tidy_signature(app, what, name, obj, options, signature, return_annotation):
  """Linen modules' signatures as a reader writes them: `dtype=jnp.float32`, not the class
  repr, and without the `parent`/`name` fields every Flax module has."""
  del app, what, name, obj, options
  if signature:
    signature = re.sub(r"<class 'jax\.numpy\.(\w+)'>", r"jnp.\1", signature)
    signature = re.sub(r", parent: [^=]*= <flax\.linen\.module\._Sentinel object>, "
                       r"name: str \| None = None\)", ")", signature)
  return signature, return_annotation


def setup(app):
  app.connect("autodoc-process-signature", _tidy_signature)
