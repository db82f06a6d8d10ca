"""Using a trained model (birnn_jax/training/inference.py, export.py): from the workdir alone,
files in and out byte for byte, bad input, evaluation on any file, export (run with jax, numpy
and flatbuffers alone)."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import birnn_jax
from birnn_jax import errors
from birnn_jax.data import columns
from birnn_jax.data import conllu_data
from birnn_jax.tasks import ner
from birnn_jax.training import config_lib
from birnn_jax.training import export
from birnn_jax.training import export_runtime
from birnn_jax.training import inference
from birnn_jax.training import train
from helpers import write_greek_treebank, write_uner

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")


def _tiny_run(tmp_path_factory, experiment, data_dir, **train_keys):
  config = config_lib.load_experiment(ROOT / "experiments" / experiment, "smoke")
  if "compare_variants" in config:
    config.compare_variants = False
  config.data.dir = str(data_dir)
  config.data.pad_to = 8
  config.data.eval_batch_size = 16
  for key, value in train_keys.items():
    config.train[key] = value
  workdir = tmp_path_factory.mktemp("run")
  train.run_experiment(config, workdir)
  data_dir.rename(data_dir.with_name(data_dir.name + "_gone"))  # predicting never reads it
  return config, workdir


@pytest.fixture(scope="module")
def pos_run(tmp_path_factory):
  folder = write_greek_treebank(tmp_path_factory.mktemp("data") / "UD_Greek-Tiny")
  return _tiny_run(tmp_path_factory, "pos_ewt.py", folder, num_epochs=1,
                   log_every_epochs=1, eval_every_epochs=1, checkpoint_every_epochs=1)


@pytest.fixture(scope="module")
def tagger(pos_run):
  return birnn_jax.load(pos_run[1])


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
  folder = write_uner(tmp_path_factory.mktemp("data") / "UNER_Tiny")
  config, workdir = _tiny_run(tmp_path_factory, "ner_uner.py", folder, num_steps=2,
                              eval_every=2, checkpoint_every=2)
  return config, workdir


CONLLU = (
    "# newdoc id = x\r\n"
    "# text = Ο άνθρωπος don't γράφει.\r\n"
    "1\tΟ\tο\tDET\tX1\tCase=Nom\t2\tdet\t_\t_\r\n"
    "2\tάνθρωπος\t_\t_\t_\t_\t0\troot\t_\tSpaceAfter=No\r\n"
    "3-4\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\r\n"
    "3\tdo\t_\tAUX\t_\t_\t2\taux\t_\t_\r\n"
    "4\tn't\t_\tPART\t_\t_\t2\tadvmod\t_\t_\r\n"
    "4.1\tελλειπτικό\t_\t_\t_\t_\t_\t_\t2:dep\t_\r\n"
    "5\tγράφει\t_\tVERB\t_\t_\t2\tdep\t_\t_\r\n"
    "6\t.\t_\tPUNCT\t_\t_\t2\tpunct\t_\t_\r\n"
    "\r\n"
    "# sent_id = 2\n"
    "1\tΗ\t_\tDET\t_\t_\t0\troot\t_\t_\n"
    "\n"
    "# a closing comment without a sentence\n")


def _lines(text):
  return text.splitlines(keepends=True)


def test_a_loaded_tagger_needs_the_workdir_alone(pos_run, tagger):
  config, workdir = pos_run
  assert not pathlib.Path(config.data.dir).exists()   # the treebank is gone
  assert tagger.task.inference and tagger.task.examples == {}
  assert tagger.workdir == pathlib.Path(workdir)
  tags = tagger.tag([["Ο", "άνθρωπος", "γράφει", "."], "η ΓΥΝΑΙΚΑ τρέχει"])
  assert [len(t) for t in tags] == [4, 3] and all(t in conllu_data.UPOS for s in tags for t in s)
  # The same numbers as the trainer's own predict path.
  assert train.predict(config, workdir, "Ο άνθρωπος γράφει.") == tagger.predict(
      "Ο άνθρωπος γράφει.")


def test_conllu_round_trip_changes_only_the_upos_column(tagger, tmp_path):
  src = tmp_path / "in.conllu"
  src.write_bytes(CONLLU.encode("utf-8"))
  summary = tagger.predict_file(src, tmp_path / "out.conllu")
  out = (tmp_path / "out.conllu").read_bytes().decode("utf-8")
  assert summary["sentences"] == 3 and summary["tokens"] == 7 and summary["format"] == "conllu"
  want_tags = tagger.tag([["Ο", "άνθρωπος", "do", "n't", "γράφει", "."], ["Η"]])
  got_tags = []
  for before, after in zip(_lines(CONLLU), _lines(out), strict=True):
    cols_b, cols_a = before.rstrip("\r\n").split("\t"), after.rstrip("\r\n").split("\t")
    assert before[len(before.rstrip("\r\n")):] == after[len(after.rstrip("\r\n")):]
    if len(cols_b) == 10 and cols_b[0].isdigit():
      got_tags.append(cols_a[3])
      assert cols_a[:3] + cols_a[4:] == cols_b[:3] + cols_b[4:]
    else:
      assert after == before     # comments, 3-4, 4.1 and blank lines: every byte kept
  assert got_tags == want_tags[0] + want_tags[1]


def test_plain_text_in_conllu_out_skips_empty_lines(tagger, tmp_path):
  src = tmp_path / "in.txt"
  src.write_text("Ο άνθρωπος γράφει .\n\n   \nη γυναίκα\n", encoding="utf-8")
  tagger.predict_file(src, tmp_path / "out.conllu")
  read = conllu_data.read_conllu(tmp_path / "out.conllu")
  assert [[w for w, _ in s] for s in read] == [["Ο", "άνθρωπος", "γράφει", "."],
                                               ["η", "γυναίκα"]]
  assert [[t for _, t in s] for s in read] == tagger.tag([[w for w, _ in s] for s in read])
  text = (tmp_path / "out.conllu").read_text(encoding="utf-8")
  assert "# text = η γυναίκα\n" in text and "# sent_id = 4\n" in text   # the input's line


def test_bad_input_names_file_and_line_and_writes_nothing(tagger, tmp_path):
  src = tmp_path / "bad.conllu"
  src.write_text("1\tΟ\t_\tDET\t_\t_\t0\troot\t_\t_\n\n1\tbroken line\n", encoding="utf-8")
  out = tmp_path / "out.conllu"
  out.write_text("the last good output\n")
  with pytest.raises(errors.DataError, match=r"bad.conllu:3: expected 10 tab-separated"):
    tagger.predict_file(src, out, chunk_size=1)   # the first chunk was already predicted
  assert out.read_text() == "the last good output\n"
  assert [p.name for p in tmp_path.iterdir()] == sorted(["bad.conllu", "out.conllu"]) or \
      sorted(p.name for p in tmp_path.iterdir()) == ["bad.conllu", "out.conllu"]
  (tmp_path / "bytes.txt").write_bytes(b"ok line\n\xff\xfe\n")
  with pytest.raises(errors.DataError, match=r"bytes.txt:2: invalid UTF-8"):
    tagger.predict_file(tmp_path / "bytes.txt", tmp_path / "x.conllu")
  assert not (tmp_path / "x.conllu").exists()
  with pytest.raises(errors.InputError, match="cannot tell the format"):
    tagger.predict_file(tmp_path / "in.data", tmp_path / "y")
  with pytest.raises(errors.InputError, match="--format='iob2'"):
    tagger.predict_file(src, tmp_path / "y", fmt="iob2")


def test_unknown_words_long_words_and_long_sentences_are_tagged(tagger):
  long_sentence = ["ο", "άνθρωπος"] * 300            # 600 words: longer than any in training
  strange = ["ZZZ-never-seen", "ΧΧΧ" * 40, "☃"]       # unknown words, a 120-char word, a char
  tags = tagger.tag([long_sentence, strange])
  assert len(tags[0]) == 600 and len(tags[1]) == 3
  # A sentence's tags do not depend on what it is batched with.
  assert tagger.tag([strange])[0] == tags[1]


def test_batches_by_length_compile_a_bounded_number_of_shapes(pos_run):
  model = birnn_jax.load(pos_run[1])
  rng = np.random.default_rng(0)
  sentences = [["ο"] * int(n) for n in rng.integers(1, 130, size=300)]
  model.tag(sentences)
  # Lengths 1..129 pad to 8, 16, ..., 256: at most 6 lengths, each at most a few table shapes.
  assert 1 <= len(model.task.compiled_shapes) <= 6 * 4


def test_evaluate_on_any_file_writes_scores_and_a_confusion_plot(tagger, tmp_path):
  folder = write_greek_treebank(tmp_path / "other", num_train=20)
  gold = conllu_data.read_conllu(folder / "el_tiny-ud-train.conllu")
  scores = tagger.evaluate_file(folder / "el_tiny-ud-train.conllu", tmp_path / "eval")
  predicted = tagger.tag([[w for w, _ in s] for s in gold])
  right = sum(p == g for s, tags in zip(gold, predicted) for (_, g), p in zip(s, tags))
  total = sum(len(s) for s in gold)
  assert scores["accuracy"] == pytest.approx(right / total) and scores["tokens"] == total
  assert sum(scores["per_tag_count"].values()) == total
  saved = json.loads((tmp_path / "eval" / "eval_el_tiny-ud-train.json").read_text())
  assert saved["accuracy"] == scores["accuracy"]
  png = tmp_path / "eval" / "plots" / "confusion_el_tiny-ud-train.png"
  assert png.read_bytes()[:4] == b"\x89PNG"


def test_ner_iob2_round_trip_plain_text_entities_and_eval(ner_run, tmp_path):
  config, workdir = ner_run
  model = birnn_jax.load(workdir)
  assert isinstance(model.task, ner.Task)
  src = tmp_path / "in.iob2"
  text = ("# sent_id = a\n1\tAnne\tO\tO#O\ts\n2\tHansen\tB-ORG\tB-ORG#O\ts\n3\tbor\tO\tO#O\ts\n\n"
          "# sent_id = b\n1\tOdense\tO\tO#O\ts\n")
  src.write_text(text, encoding="utf-8")
  model.predict_file(src, tmp_path / "out.iob2")
  out = (tmp_path / "out.iob2").read_text(encoding="utf-8")
  labels = model.tag([["Anne", "Hansen", "bor"], ["Odense"]])
  got = [l.split("\t")[2] for l in out.splitlines() if l and not l.startswith("#")]
  assert got == labels[0] + labels[1]
  for before, after in zip(text.splitlines(), out.splitlines(), strict=True):
    b, a = before.split("\t"), after.split("\t")
    assert b[:2] + b[3:] == a[:2] + a[3:]
  (tmp_path / "in.txt").write_text("Anne Hansen bor i Odense .\n", encoding="utf-8")
  model.predict_file(tmp_path / "in.txt", tmp_path / "out.jsonl")
  row = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
  tokens = "Anne Hansen bor i Odense .".split()
  assert row["tokens"] == tokens and row["line"] == 1
  assert row["entities"] == model.entities([tokens])[0]
  for entity in row["entities"]:
    assert entity["text"] == " ".join(tokens[entity["start"]:entity["end"]])
  data = write_uner(tmp_path / "gold", copies=1)
  scores = model.evaluate_file(data / "xx_tiny-ud-test.iob2", tmp_path / "eval")
  assert 0.0 <= scores["f1"] <= 1.0 and set(scores["per_type_f1"]) <= {"PER", "ORG", "LOC"}
  assert (tmp_path / "eval" / "plots" / "confusion_xx_tiny-ud-test.png").is_file()


def test_a_workdir_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(errors.NoCheckpointError, match="holds no trained run"):
    birnn_jax.load(tmp_path)


def test_an_experiment_of_variants_loads_its_first_variant_by_default(tmp_path):
  for name in ("softmax", "crf", "forward"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
  (tmp_path / "results.json").write_text(json.dumps({"crf": {}, "softmax": {},
                                                     "forward": {}, "comparison": {}}))
  assert inference.run_dir(tmp_path) == tmp_path / "crf"
  assert inference.run_dir(tmp_path, "forward") == tmp_path / "forward"
  (tmp_path / "results.json").unlink()
  assert inference.run_dir(tmp_path) == tmp_path / "crf"   # sorted without results.json


def _distributions_needed(names) -> list[importlib.metadata.Distribution]:
  """`names` and, recursively, what their metadata requires (no extras; markers evaluated
  here): the distributions a `pip install <names>` would bring."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top
  found, todo = {}, list(names)
  while todo:
    dist = importlib.metadata.distribution(todo.pop())
    key = canonicalize_name(dist.metadata["Name"])
    if key in found:
      continue
    found[key] = dist
    for line in dist.requires or []:
      requirement = Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(requirement.name)
  return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


@pytest.fixture(scope="module")
def runtime_sites(tmp_path_factory):
  """Two folders of links to installed distributions, to be a process's only site-packages:
  "full" holds exactly `pip install jax numpy flatbuffers` (export.RUNTIME_REQUIRES and what
  they require), "no_flatbuffers" the same less flatbuffers (what `pip install jax` gives)."""
  needed = _distributions_needed(export.RUNTIME_REQUIRES)
  sites = {}
  for name, dists in [("full", needed),
                      ("no_flatbuffers", _distributions_needed(
                          [r for r in export.RUNTIME_REQUIRES if r != "flatbuffers"]))]:
    site = tmp_path_factory.mktemp(f"site_{name}")
    for dist in dists:
      assert dist.files, f"{dist.metadata['Name']} has no RECORD"
      for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
        if not (site / top).exists():
          (site / top).symlink_to(dist.locate_file(top))
    sites[name] = site
  names = sorted(d.metadata["Name"].lower().replace("-", "_") for d in needed)
  assert {"jax", "jaxlib", "numpy", "flatbuffers"} <= set(names), names
  assert not {"flax", "birnn_jax", "optax"} & set(names), names
  return sites


def _isolated_python(site, code, stdin="", check=True):
  """`code` in `python -I -S` (no site-packages, no PYTHON* variables, not the cwd) with
  `site` as the only folder of installed packages."""
  prelude = f"import sys; sys.path.append({str(site)!r})\n"
  return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], input=stdin,
                        capture_output=True, text=True, cwd="/", check=check,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _run_predict_py(site, folder, stdin="", check=True):
  """`python DIR/predict.py < stdin`, in the environment of `site` alone."""
  script = str(pathlib.Path(folder) / "predict.py")
  return _isolated_python(site, f"import runpy; sys.argv = [{script!r}]\n"
                                f"runpy.run_path({script!r}, run_name='__main__')\n",
                          stdin=stdin, check=check)


def _exported_in_a_subprocess(site, folder, sentences):
  """The exported tagger's tags for `sentences`, from Python, with only `site` installed."""
  code = ("import importlib.util, json\n"
          f"sys.path.insert(0, {str(folder)!r})\n"
          "from predict import ExportedTagger\n"
          f"tags = ExportedTagger({str(folder)!r}).tag(json.load(sys.stdin))\n"
          "assert not any(importlib.util.find_spec(m) for m in ('flax', 'birnn_jax')), 'found'\n"
          "print(json.dumps(tags))\n")
  return json.loads(_isolated_python(site, code, stdin=json.dumps(sentences)).stdout)


def _ewt_dev(count=None):
  return [[w for w, _ in s] for s in conllu_data.load_ewt().dev[:count]]


@pytest.mark.parametrize("count", [200, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["200_sentences", "all"])
def test_the_exported_tagger_runs_with_jax_numpy_flatbuffers_alone_and_matches(
    tagger, runtime_sites, tmp_path, count):
  meta = export.export_tagger(tagger, tmp_path / "exported")
  assert set(meta["platforms"]) == {"cpu", "cuda", "tpu"}
  assert meta["requires"] == list(export.RUNTIME_REQUIRES) == ["jax", "numpy", "flatbuffers"]
  assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == [
      "meta.json", "model.jax", "predict.py"]
  sentences = _ewt_dev(count)          # EWT dev: mostly unknown words to this tiny tagger
  expected = tagger.tag(sentences)
  site = runtime_sites["full"]
  assert _exported_in_a_subprocess(site, tmp_path / "exported", sentences) == expected
  # From a shell: `python DIR/predict.py < sentences.txt`, token/TAG pairs out.
  out = _run_predict_py(site, tmp_path / "exported",
                        "".join(" ".join(s) + "\n" for s in sentences[:20])).stdout
  assert out.splitlines() == [" ".join(f"{w}/{t}" for w, t in zip(s, tags))
                              for s, tags in zip(sentences[:20], expected[:20])]


def test_the_exported_loader_without_flatbuffers_says_what_to_install_in_one_line(
    runtime_sites, tmp_path):
  """What `pip install jax` alone gives: jax cannot read a serialised model there, and
  predict.py says so in one line (run) or one ImportError (imported), before reading a file."""
  site = runtime_sites["no_flatbuffers"]
  assert export_runtime.REQUIRES == export.RUNTIME_REQUIRES
  assert export.runtime_requires_text() == "jax, numpy and flatbuffers"
  # The control: jax itself needs flatbuffers to deserialise (so the requirement is real).
  probe = _isolated_python(site, "import jax\ntry:\n  jax.export.deserialize(bytearray(8))\n"
                                 "except ImportError as e:\n  print('ImportError', e)\n")
  assert probe.stdout.startswith("ImportError") and "flatbuffers" in probe.stdout, probe.stdout
  shutil.copyfile(export_runtime.__file__, tmp_path / "predict.py")   # no model beside it
  message = ("predict.py: this exported tagger needs jax, numpy, flatbuffers; not installed "
             "here: flatbuffers (pip install flatbuffers)")
  run = _run_predict_py(site, tmp_path, "a b\n", check=False)
  assert (run.returncode, run.stdout, run.stderr) == (1, "", message + "\n")
  imported = _isolated_python(site, f"sys.path.insert(0, {str(tmp_path)!r})\n"
                                    "try:\n  import predict\n"
                                    "except ImportError as e:\n  print(e)\n")
  assert imported.stdout == message + "\n"


def test_column_blocks_keep_every_byte():
  import io  # pylint: disable=g-import-not-at-top
  raw = CONLLU.encode("utf-8")
  blocks = list(columns.read_blocks(io.BytesIO(raw), "x", columns.CONLLU))
  assert "".join("".join(b.lines) for b in blocks).encode("utf-8") == raw
  assert [b.forms for b in blocks] == [["Ο", "άνθρωπος", "do", "n't", "γράφει", "."],
                                       ["Η"], []]
  assert [b.first_line for b in blocks] == [1, 12, 15]


def test_training_leaves_out_sentences_over_max_length_and_counts_them(tmp_path):
  from birnn_jax.tasks import pos  # pylint: disable=g-import-not-at-top
  folder = write_greek_treebank(tmp_path / "UD_Greek-Tiny", num_train=20)
  train_file = folder / "el_tiny-ud-train.conllu"
  long = "".join(f"{k}\tο\t_\tDET\t_\t_\t0\tdep\t_\t_\n" for k in range(1, 31))
  train_file.write_text(train_file.read_text(encoding="utf-8") + "# sent_id = long\n" + long
                        + "\n", encoding="utf-8")
  config = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py", "smoke")
  config.data.dir = str(folder)
  config.data.max_length = 12
  task = pos.Task(config, tmp_path / "run")
  assert task.long_train_sentences == 1
  assert max(len(s) for s in task.sentences["train"]) <= 12
  assert sum(len(s) for s in task.sentences["train"] + task.sentences["dev"]) == sum(
      len(s) for s in conllu_data.read_conllu(train_file)) - 30


def test_the_docs_python_example_runs_as_written(pos_run, ner_run, tmp_path, monkeypatch):
  """docs/trained.md's "From Python" block, in a folder holding runs/pos and runs/ner."""
  import re  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  page = (ROOT / "docs" / "trained.md").read_text(encoding="utf-8")
  section = page.split("## From Python\n", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```\{code-block\} python\n(.*?)```", section, re.S).group(1)
  shutil.copytree(pos_run[1], tmp_path / "runs" / "pos")
  shutil.copytree(ner_run[1], tmp_path / "runs" / "ner")
  (tmp_path / "corpus.conllu").write_text(CONLLU, encoding="utf-8")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "docs/trained.md (From Python)", "exec"), namespace)  # pylint: disable=exec-used
  assert [len(t) for t in namespace["tagger"].tag([["a", "b"], "c d e"])] == [2, 3]
  assert (tmp_path / "tagged.conllu").is_file()


def test_the_exported_ner_tagger_decodes_as_the_crf_does(ner_run, runtime_sites, tmp_path):
  """The CRF's constrained Viterbi inside the exported function (symbolic t >= 2)."""
  from birnn_jax.data import iob2  # pylint: disable=g-import-not-at-top
  model = birnn_jax.load(ner_run[1])
  export.export_tagger(model, tmp_path / "ner")
  sentences = [[w for w, _ in s] for s in iob2.load_uner().dev[:150]]
  exported = _exported_in_a_subprocess(runtime_sites["full"], tmp_path / "ner", sentences)
  assert exported == model.tag(sentences)
  assert all(set(tags) <= set(ner.LABELS) for tags in exported)
