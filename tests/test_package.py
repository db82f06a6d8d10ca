"""The package as a user gets it: its floors, its metadata and the files the wheel carries."""

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest

import birnn_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(birnn_jax.__file__).resolve().parent
# What the runner, the tasks and the data readers need and the library must not load.
RUNNER_DEPENDENCIES = ("optax", "orbax", "ml_collections", "absl", "tensorboard",
                       "matplotlib", "conllu", "seqeval", "scipy", "torch")
installed_only = pytest.mark.skipif(
    not os.environ.get("BIRNN_TEST_INSTALLED"),
    reason="checks the installed wheel; scripts/test.sh runs the suite against one")


def test_the_library_loads_nothing_of_the_runner():
  """`import birnn_jax`, `birnn_jax.nnx` and `birnn_jax.crf` load no module beyond what
  jax, flax (Linen and NNX) and numpy load themselves: none of the runner's dependencies,
  none of birnn_jax.training / tasks / data."""
  code = """
import json, sys
import jax, numpy, flax.linen, flax.nnx
before = set(sys.modules)
import birnn_jax, birnn_jax.nnx, birnn_jax.crf
birnn_jax.BiRNN(hidden_size=4)
print(json.dumps(sorted(set(sys.modules) - before)))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path("/"), env={**os.environ,
                                                              "JAX_PLATFORMS": "cpu"})
  loaded = json.loads(out.stdout.strip().splitlines()[-1])
  roots = {name.split(".")[0] for name in loaded}
  assert not roots & set(RUNNER_DEPENDENCIES), sorted(roots & set(RUNNER_DEPENDENCIES))
  upper = [n for n in loaded if n.split(".")[:2] in (["birnn_jax", "training"],
                                                     ["birnn_jax", "tasks"],
                                                     ["birnn_jax", "data"])]
  assert not upper, upper
  assert "birnn_jax.core.layers" in loaded and "birnn_jax.nnx" in loaded


def test_the_library_submodules_are_attributes_of_the_package():
  """`import birnn_jax` then `birnn_jax.crf.CRF` (not only `from birnn_jax import crf`)."""
  code = """
import birnn_jax
print(birnn_jax.crf.CRF.__name__, birnn_jax.errors.InputError.__name__,
      birnn_jax.nnx.BiRNN.__name__)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path("/"), env={**os.environ,
                                                              "JAX_PLATFORMS": "cpu"})
  assert out.stdout.split() == ["CRF", "InputError", "BiRNN"]


def test_load_without_the_train_extra_names_the_extra():
  """As in a base install: the runner's dependencies missing (here: hidden)."""
  code = """
import sys
sys.modules["ml_collections"] = None   # as if not installed
import birnn_jax
try:
  birnn_jax.load("runs/x")
except ModuleNotFoundError as e:
  print(e)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path("/"), env={**os.environ,
                                                              "JAX_PLATFORMS": "cpu"})
  assert "birnn_jax.load needs" in out.stdout and "pip install 'birnn_jax[train]'" in out.stdout
  assert "ml_collections is missing" in out.stdout, out.stdout


def test_the_base_install_requires_only_jax_flax_and_numpy():
  requires = importlib.metadata.requires("birnn_jax")
  base = sorted(r.split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r)
  assert base == ["flax", "jax", "numpy"]
  extras = importlib.metadata.metadata("birnn_jax").get_all("Provides-Extra")
  assert {"train", "test"} <= set(extras)
  train = [r for r in requires if 'extra == "train"' in r]
  assert any(r.startswith("optax") for r in train) and any(r.startswith("orbax") for r in train)


def test_the_version_comes_from_the_package_metadata():
  assert birnn_jax.__version__ == importlib.metadata.version("birnn_jax")


@installed_only
def test_the_suite_runs_against_the_installed_wheel_not_the_source():
  assert not PACKAGE.is_relative_to(ROOT), (PACKAGE, ROOT)
  assert not (ROOT / "birnn_jax").exists()  # the tests run beside a copy without the source


def test_the_package_carries_py_typed_the_corpora_and_their_licences():
  assert (PACKAGE / "py.typed").is_file()
  bundled = PACKAGE / "data" / "bundled"
  for corpus, files in {
      "ud_english_ewt": ["en_ewt-ud-train.conllu.xz", "en_ewt-ud-dev.conllu.xz",
                         "en_ewt-ud-test.conllu.xz", "LICENSE.txt"],
      "uner_danish_ddt": ["da_ddt-ud-train.iob2.xz", "da_ddt-ud-dev.iob2.xz",
                          "da_ddt-ud-test.iob2.xz", "LICENSE.txt"],
      "time_machine": ["timemachine.txt.xz", "LICENSE.txt"]}.items():
    for name in files:
      assert (bundled / corpus / name).is_file(), f"{corpus}/{name} missing from the package"
    assert any(bundled.joinpath(corpus).glob("SOURCE*")), f"{corpus} has no SOURCE note"


@installed_only
def test_the_licence_is_an_spdx_expression_and_the_corpora_licences_ship_as_licence_files():
  """PEP 639 metadata (no deprecated `license` table): the code Apache-2.0, the bundled
  corpora CC BY-SA 4.0, each corpus's LICENSE.txt among the wheel's licence files."""
  metadata = importlib.metadata.metadata("birnn_jax")
  assert metadata["License-Expression"] == "Apache-2.0 AND CC-BY-SA-4.0"
  assert sorted(metadata.get_all("License-File")) == [
      f"birnn_jax/data/bundled/{corpus}/LICENSE.txt"
      for corpus in ("time_machine", "ud_english_ewt", "uner_danish_ddt")]
  assert not any(c.startswith("License ::") for c in metadata.get_all("Classifier"))


def test_requirements_txt_is_the_base_and_train_dependencies_of_pyproject():
  """The experiments' install (requirements.txt) and `pip install .[train]` agree."""
  import tomllib  # pylint: disable=g-import-not-at-top
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  declared = project["dependencies"] + project["optional-dependencies"]["train"]
  strip = lambda line: line.split("#")[0].replace(" ", "")
  listed = [strip(l) for l in (ROOT / "requirements.txt").read_text().splitlines()]
  assert sorted(filter(None, listed)) == sorted(strip(r) for r in declared)
