"""The documentation does not rot: every `>>>` example (docstrings of the public API and the
docs pages) and every ```python block of the guides and the README runs as written; every
exported name is in the API reference with a docstring and an example; every
`python launch.py ...` command in the docs names a config file and keys that exist.

The docs build itself (Sphinx, warnings as errors) is `bash scripts/docs.sh`, run by CI.
"""

import doctest
import importlib
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
pytestmark = pytest.mark.usefixtures("fast_compile")

# Modules whose docstrings hold `>>>` examples (what the API reference documents).
DOCTEST_MODULES = (
    "birnn_jax", "birnn_jax.linen", "birnn_jax.nnx", "birnn_jax.crf",
    "birnn_jax.torch_interop", "birnn_jax.errors", "birnn_jax.core.cells",
    "birnn_jax.core.recurrence", "birnn_jax.core.layers", "birnn_jax.training.config_lib",
    "birnn_jax.training.train", "birnn_jax.training.trained",
)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Guide pages whose python blocks train for more than a few seconds: run with `-m slow`.
SLOW_PAGES = frozenset({"trained.md"})
# Sections whose python blocks another test runs (and checks more closely).
RUN_ELSEWHERE = {
    ("library/modules.md", "A complete training step with NNX"):
        "tests/test_nnx.py::test_docs_nnx_training_step_runs_as_written_and_lowers_the_loss",
}


def _docstring_tests():
  finder = doctest.DocTestFinder(exclude_empty=True)
  found = []
  for name in DOCTEST_MODULES:
    module = importlib.import_module(name)
    found += [t for t in finder.find(module, name) if t.examples]
  return sorted(found, key=lambda t: t.name)


def _page_tests():
  parser = doctest.DocTestParser()
  found = []
  for path in sorted(DOCS.rglob("*.md")):
    if "_build" in path.parts:
      continue
    name = str(path.relative_to(DOCS))
    test = parser.get_doctest(path.read_text(encoding="utf-8"), {}, name, str(path), 0)
    if test.examples:
      found.append(test)
  return found


DOCTESTS = _docstring_tests() + _page_tests()


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_doctest_example_runs_as_written(test, monkeypatch):
  monkeypatch.chdir(ROOT)  # examples name experiments/... as a user's clone does
  runner = doctest.DocTestRunner(optionflags=OPTIONS)
  test.globs = {}
  runner.run(test, out=lambda s: None)
  failures = []
  if runner.failures:
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    test.globs = {}
    runner.run(test, out=report.append)
    failures = report
  assert not failures, "".join(failures)


# ------------------------------------------------------------------------ python blocks

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(path: pathlib.Path):
  """[(heading, code)] of the ```python blocks of a markdown file, in order; heading is
  the nearest `#`-heading above the block."""
  text = path.read_text(encoding="utf-8")
  blocks = []
  for match in _FENCE.finditer(text):
    if match.group(1) != "python":
      continue
    headings = re.findall(r"^#+ (.+)$", text[:match.start()], re.M)
    blocks.append((headings[-1] if headings else "", match.group(2)))
  return blocks


def section_block(path: pathlib.Path, heading: str) -> str:
  """The first python block under `heading` (for tests that check one example closely)."""
  return next(code for h, code in python_blocks(path) if h == heading)


def _guide_pages():
  pages = [p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts
           and python_blocks(p)]
  params = [pytest.param(p, id=str(p.relative_to(DOCS)),
                         marks=[pytest.mark.slow] if str(p.relative_to(DOCS)) in SLOW_PAGES
                         else []) for p in pages]
  return params + [pytest.param(ROOT / "README.md", id="README.md")]


@pytest.mark.parametrize("path", _guide_pages())
def test_python_blocks_of_the_page_run_as_written(path, monkeypatch, capsys):
  """All ```python blocks of a page run in order in one namespace, as a reader pastes them."""
  monkeypatch.chdir(ROOT)
  page = str(path.relative_to(DOCS)) if DOCS in path.parents else path.name
  namespace = {"__name__": "__docs__"}
  ran = 0
  for heading, code in python_blocks(path):
    if (page, heading) in RUN_ELSEWHERE:
      continue
    exec(compile(code, f"{page} ({heading})", "exec"), namespace)  # pylint: disable=exec-used
    ran += 1
  assert ran, f"{page}: no python block ran"
  printed = capsys.readouterr().out
  # A block that prints a comparison prints True: a False is a claim the page gets wrong.
  assert "False" not in printed, printed


def test_readme_keeps_a_tested_library_example():
  blocks = python_blocks(ROOT / "README.md")
  assert [h for h, _ in blocks][:1] == ["The library"], blocks


# ------------------------------------------------------------------------ API reference


def _documented_names() -> set[str]:
  names = set()
  for path in (DOCS / "api").glob("*.md"):
    text = path.read_text(encoding="utf-8")
    for kind, target, body in re.findall(
        r"^\.\. (auto\w+|py:\w+):: (\S+)\n((?:[ \t]+.*\n|\n)*)", text, re.M):
      names.add(target)
      if kind == "automodule" and ":members:" in body:
        members = re.search(r":members:(.*)", body).group(1).strip()
        module = importlib.import_module(target)
        listed = ([m.strip() for m in members.split(",")] if members
                  else getattr(module, "__all__", None)
                  or [n for n, v in vars(module).items() if not n.startswith("_")
                      and getattr(v, "__module__", None) == target])
        names.update(f"{target}.{m}" for m in listed)
  return names


def _exported() -> list[str]:
  import birnn_jax  # pylint: disable=g-import-not-at-top
  from birnn_jax import crf, errors, nnx  # pylint: disable=g-import-not-at-top
  names = [f"birnn_jax.{n}" for n in birnn_jax.__all__]
  names += [f"birnn_jax.nnx.{n}" for n in nnx.__all__]
  names += [f"birnn_jax.crf.{n}" for n in crf.__all__]
  names += [f"birnn_jax.errors.{n}" for n, v in vars(errors).items()
            if isinstance(v, type) and v.__module__ == "birnn_jax.errors"]
  names += ["birnn_jax.training.config_lib.load_experiment",
            "birnn_jax.training.trained.restore_run",
            "birnn_jax.training.train.run_experiment",
            "birnn_jax.training.train.evaluate_experiment",
            "birnn_jax.training.train.predict",
            "birnn_jax.training.inference.load"]
  return names


def _resolve(name: str):
  module, _, attr = name.rpartition(".")
  return getattr(importlib.import_module(module), attr)


def test_every_exported_name_is_in_the_api_reference():
  documented = _documented_names()
  missing = [n for n in _exported() if n not in documented]
  assert not missing, f"not in docs/api/*.md: {missing}"


@pytest.mark.parametrize("name", [n for n in _exported()
                                  if callable(_resolve(n)) and not n.endswith("__version__")])
def test_every_exported_function_and_class_has_a_docstring_with_an_example(name):
  obj = _resolve(name)
  doc = obj.__doc__ or ""
  assert doc.strip(), f"{name} has no docstring"
  if name.startswith("birnn_jax.training."):
    return  # the runner's entry points train or read a workdir: their examples are pages
  assert ">>>" in doc, f"{name}'s docstring has no >>> example"


# ------------------------------------------------------------------------ commands


def _launch_commands():
  commands = []
  for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
    if "_build" in path.parts:
      continue
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
      line = line.split("#", 1)[0] if " #" in line else line
      match = re.search(r"(?:python|python3) launch\.py (.*)|scripts/run\.sh (.*)", line)
      if match:
        args = (match.group(1) or match.group(2)).split("`")[0].strip()
        commands.append(pytest.param(args, id=f"{path.name}: {args[:60]}"))
  return commands


@pytest.mark.parametrize("args", _launch_commands())
def test_launch_commands_in_the_docs_name_real_configs_and_keys(args, monkeypatch):
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(ROOT)
  argv = ["launch.py"] + [a for a in shlex.split(args) if a.startswith("--")]
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:   # a trained workdir alone: eval, predict and export need no --config
    assert any(a.startswith("--workdir=") for a in argv), args
    assert any(a in argv for a in ("--mode=eval", "--mode=predict", "--mode=export",
                                   "--mode=report")), args
    return
  path, _, arg = spec.partition(":")
  if "<" in path:
    return  # a template: experiments/<name>.py
  assert (ROOT / path).is_file(), f"{path} does not exist"
  config_lib.load_experiment(path, arg or None)   # a bad config arg raises
  assert config_lib.unknown_override_hints(argv) == []
  modes = re.search(r'DEFINE_enum\(\s*"mode",\s*"\w+",\s*\[([^\]]*)\]',
                    (ROOT / "launch.py").read_text(encoding="utf-8")).group(1)
  for a in argv:
    if a.startswith("--mode="):
      assert repr(a.split("=", 1)[1]).replace("'", '"') in modes, (a, modes)
