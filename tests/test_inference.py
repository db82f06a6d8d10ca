"""Using a trained model (birnn_jax/training/inference.py, export.py): from the workdir alone,
files in and out byte for byte, bad input, evaluation on any file, export (run with jax, numpy
and flatbuffers alone)."""

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import birnn_jax
from birnn_jax import errors
from birnn_jax.data import columns
from birnn_jax.data import conllu_data
from birnn_jax.tasks import entities
from birnn_jax.tasks import ner
from birnn_jax.training import config_lib
from birnn_jax.training import export
from birnn_jax.training import export_runtime
from birnn_jax.training import inference
from birnn_jax.training import train
from helpers import tiny_run, write_greek_treebank, write_uner

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")


@pytest.fixture(scope="module")
def pos_run(tmp_path_factory):
  folder = write_greek_treebank(tmp_path_factory.mktemp("data") / "UD_Greek-Tiny")
  return tiny_run(tmp_path_factory, "pos_ewt.py", folder, num_epochs=1,
                   log_every_epochs=1, eval_every_epochs=1, checkpoint_every_epochs=1)


@pytest.fixture(scope="module")
def tagger(pos_run):
  return birnn_jax.load(pos_run[1])


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
  folder = write_uner(tmp_path_factory.mktemp("data") / "UNER_Tiny")
  config, workdir = tiny_run(tmp_path_factory, "ner_uner.py", folder, num_steps=2,
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
  assert all(set(tags) <= set(entities.LABELS) for tags in exported)


# --- no surprises: the workdir decides, inputs are never overwritten ----------------------------


def _conllu_file(tmp_path, gold: bool = False):
  """CONLLU in `tmp_path/corpus.conllu`; `gold`: with a UPOS tag on every word (to score)."""
  path = tmp_path / "corpus.conllu"
  text = CONLLU
  if gold:
    text = text.replace("άνθρωπος\t_\t_", "άνθρωπος\t_\tNOUN").rsplit("# a closing", 1)[0]
  path.write_text(text, encoding="utf-8", newline="")
  return path


def test_an_output_that_is_the_input_is_refused_by_any_path(tagger, tmp_path, monkeypatch):
  corpus = _conllu_file(tmp_path)
  (tmp_path / "link.conllu").symlink_to(corpus)
  os.link(corpus, tmp_path / "hard.conllu")
  (tmp_path / "sub").mkdir()
  monkeypatch.chdir(tmp_path / "sub")
  for output in (corpus, "../corpus.conllu", tmp_path / "sub" / ".." / "corpus.conllu",
                 tmp_path / "link.conllu", tmp_path / "hard.conllu"):
    with pytest.raises(errors.InputError, match="is the input file"):
      tagger.predict_file(corpus, output)
    with pytest.raises(errors.InputError, match="is the input file"):
      tagger.predict_file(output, corpus)
  assert corpus.read_bytes() == CONLLU.encode("utf-8")
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "corpus.conllu", "hard.conllu", "link.conllu", "sub"]   # no temporary file left


def test_an_output_over_a_file_of_the_trained_run_is_refused(tagger, pos_run, tmp_path):
  corpus = _conllu_file(tmp_path)
  config = pos_run[1] / "config.json"
  before = config.read_bytes()
  with pytest.raises(errors.InputError, match="is a file of the trained run"):
    tagger.predict_file(corpus, config)
  assert config.read_bytes() == before


def test_an_output_folder_is_refused_naming_it(tagger, tmp_path):
  corpus = _conllu_file(tmp_path)
  with pytest.raises(errors.InputError, match=f"--output={tmp_path} is a folder"):
    tagger.predict_file(corpus, tmp_path)
  with pytest.raises(errors.InputError, match="is a file"):
    tagger.evaluate_file(corpus, corpus)
  assert corpus.read_bytes() == CONLLU.encode("utf-8")


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def test_outputs_are_created_with_the_users_umask(tagger, ner_run, tmp_path, umask_022):
  corpus = _conllu_file(tmp_path, gold=True)
  tagger.predict_file(corpus, tmp_path / "tagged.conllu")
  tagger.evaluate_file(corpus, tmp_path / "eval")
  (tmp_path / "news.txt").write_text("Anne Hansen bor i Odense .\n")
  birnn_jax.load(ner_run[1]).predict_file(tmp_path / "news.txt", tmp_path / "entities.jsonl")
  written = [tmp_path / "tagged.conllu", tmp_path / "eval" / "eval_corpus.json",
             tmp_path / "eval" / "plots" / "confusion_corpus.png", tmp_path / "entities.jsonl"]
  assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {
      p.name: "0o644" for p in written}


def test_the_summary_names_stdout_as_the_output(tagger, tmp_path, capsys):
  summary = tagger.predict_file(_conllu_file(tmp_path), "-")
  assert summary["output"] == "<stdout>" and summary["input"].endswith("corpus.conllu")
  assert capsys.readouterr().out.startswith("# newdoc id = x")


def test_a_string_is_one_sentence_and_no_sentences_are_no_tags(tagger, ner_run):
  assert tagger.tag("I saw her duck .") == tagger.tag([["I", "saw", "her", "duck", "."]])
  assert len(tagger.tag("I saw her duck .")) == 1
  assert tagger.tag([]) == [] and tagger.tag(iter([])) == []
  ner_model = birnn_jax.load(ner_run[1])
  assert ner_model.entities("Anne bor i Odense .") == ner_model.entities([["Anne", "bor", "i",
                                                                           "Odense", "."]])
  assert ner_model.entities([]) == []


def test_loading_a_smoke_run_says_its_predictions_mean_nothing(pos_run, caplog):
  with caplog.at_level("WARNING"):
    birnn_jax.load(pos_run[1])
  assert any(":smoke config" in r.getMessage() and "mean nothing" in r.getMessage()
             for r in caplog.records), caplog.text


def test_the_saved_config_decides_and_a_different_model_is_refused(pos_run):
  config, workdir = pos_run
  assert birnn_jax.load(workdir, config=config).config.to_dict() == \
      birnn_jax.load(workdir).config.to_dict()
  full = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py")
  with pytest.raises(errors.WorkdirMismatchError) as raised:
    birnn_jax.load(workdir, config=full)
  assert "model.hidden_size: 16 -> 128" in str(raised.value)
  assert "Leave out --config" in str(raised.value)
  other_task = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", "smoke")
  with pytest.raises(errors.WorkdirMismatchError, match="task: 'pos' -> 'ner'"):
    birnn_jax.load(workdir, config=other_task)


def test_a_given_configs_predict_settings_are_used():
  from birnn_jax.training import trained  # pylint: disable=g-import-not-at-top
  config = config_lib.load_experiment(ROOT / "experiments" / "masked_time_machine.py", "smoke")
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as folder:
    pathlib.Path(folder, "config.json").write_text(config.to_json())
    config.predict.top_k = 9
    assert inference.run_config(folder, config).predict.top_k == 9
    assert inference.run_config(folder).predict.top_k == 5
    assert trained.read_config(folder).model.hidden_size == config.model.hidden_size


def test_an_unknown_variant_lists_the_real_ones(tmp_path):
  for name in ("softmax", "crf", "forward"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
  with pytest.raises(errors.NoCheckpointError,
                     match="holds no variant 'nope'; its variants: 'crf', 'forward', 'softmax'"):
    birnn_jax.load(tmp_path, variant="nope")


def _launch(*args, cwd=ROOT):
  # JAX looks for every back end, as on a user's machine (it logs those it did not find).
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def _one_line_error(proc) -> str:
  """The `launch.py: error:` message of a refused command: exit 1, no traceback, and none of
  the noise of a failed restore."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  for noise in ("Traceback", "cannot be read", "Event loop is closed", "trying the one"):
    assert noise not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.split("launch.py: error: ", 1)[1]


@pytest.mark.parametrize("mode", ["predict", "eval", "export"])
def test_the_cli_refuses_a_config_of_another_model_in_one_message(pos_run, tmp_path, mode):
  extra = {"predict": ["--text=I saw her duck"], "eval": [],
           "export": [f"--output={tmp_path / 'exported'}"]}[mode]
  proc = _launch("--config=experiments/pos_ewt.py", f"--workdir={pos_run[1]}",
                 f"--mode={mode}", *extra)
  message = _one_line_error(proc)
  assert "holds a run of a different model" in message
  assert "model.hidden_size: 16 -> 128" in message
  assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("mode", ["predict", "eval", pytest.param("export",
                                                                  marks=pytest.mark.slow)])
def test_the_cli_needs_the_workdir_alone(pos_run, tmp_path, mode):
  corpus = _conllu_file(tmp_path, gold=True)
  extra = {"predict": [f"--input={corpus}", f"--output={tmp_path / 'tagged.conllu'}"],
           "eval": [f"--input={corpus}", f"--output={tmp_path / 'eval'}"],
           "export": [f"--output={tmp_path / 'exported'}"]}[mode]
  proc = _launch(f"--workdir={pos_run[1]}", f"--mode={mode}", *extra, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Unable to initialize backend" not in proc.stderr
  assert ":smoke config" in proc.stderr   # said where the junk model is used
  written = {"predict": tmp_path / "tagged.conllu",
             "eval": tmp_path / "eval" / "eval_corpus.json",
             "export": tmp_path / "exported" / "model.jax"}[mode]
  assert written.is_file()
  if mode == "eval":
    assert f"with the trained run {pos_run[1]}" in proc.stdout
    assert json.loads(written.read_text())["run"] == str(pos_run[1])


def test_the_cli_refuses_to_overwrite_its_input_before_loading(pos_run, tmp_path):
  corpus = _conllu_file(tmp_path)
  proc = _launch(f"--workdir={pos_run[1]}", "--mode=predict", "--input=corpus.conllu",
                 f"--output={corpus}", cwd=tmp_path)
  assert "is the input file" in _one_line_error(proc)
  assert corpus.read_bytes() == CONLLU.encode("utf-8")


def test_without_config_or_workdir_the_cli_says_what_it_needs(tmp_path):
  proc = _launch("--mode=predict", "--text=x", cwd=tmp_path)
  assert proc.returncode == 1 and "needs --workdir" in proc.stderr, proc.stderr[-2000:]
  proc = _launch("--workdir=x", cwd=tmp_path)
  assert proc.returncode == 1 and "--mode=train needs --config" in proc.stderr


def _page_commands(path: pathlib.Path, section: str | None = None) -> list[str]:
  """The trained-model commands of a page's ```bash blocks (under `section` if given): every
  `python launch.py` line with a --mode (not training) and every `python exported/...`."""
  text = path.read_text(encoding="utf-8")
  if section:
    text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  commands = []
  for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
    for line in block.splitlines():
      line = line.split("  #", 1)[0].strip()
      if line.startswith("python exported/") or (
          line.startswith("python launch.py") and "--mode=" in line):
        commands.append(line)
  return commands


@pytest.fixture
def user_folder(pos_run, ner_run, tmp_path):
  """A user's folder holding what the pages name: runs/pos, runs/ner and the input files."""
  (tmp_path / "runs").mkdir()
  (tmp_path / "runs" / "pos").symlink_to(pos_run[1])
  (tmp_path / "runs" / "ner").symlink_to(ner_run[1])
  gold = _conllu_file(tmp_path, gold=True)
  gold.rename(tmp_path / "other-test.conllu")
  _conllu_file(tmp_path, gold=True)
  (tmp_path / "sentences.txt").write_text("I saw her duck .\nThe cat sat .\n")
  (tmp_path / "news.txt").write_text("Anne Hansen bor i Odense .\n")
  uner = write_uner(tmp_path / "uner", copies=1) / "xx_tiny-ud-test.iob2"
  for name in ("news.iob2", "other-test.iob2"):
    (tmp_path / name).write_bytes(uner.read_bytes())
  return tmp_path


def _run_as_written(commands: list[str], folder: pathlib.Path) -> None:
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  for command in commands:
    shell = command.replace("python launch.py", f"{sys.executable} {ROOT / 'launch.py'}", 1)
    shell = shell.replace("python exported/", f"{sys.executable} exported/", 1)
    proc = subprocess.run(shell, shell=True, cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, (command, proc.stderr[-3000:])


def test_the_readmes_trained_model_commands_run_as_written(user_folder):
  commands = _page_commands(ROOT / "README.md", "Using a trained model")
  assert len(commands) >= 4 and all("--config" not in c for c in commands), commands
  _run_as_written(commands, user_folder)
  assert (user_folder / "tagged.conllu").is_file() and (user_folder / "entities.jsonl").is_file()
  assert (user_folder / "exported" / "pos" / "model.jax").is_file()


@pytest.mark.slow
def test_the_trained_model_pages_commands_run_as_written(user_folder):
  commands = _page_commands(ROOT / "docs" / "trained.md")
  assert len(commands) >= 8, commands
  _run_as_written(commands, user_folder)
  assert (user_folder / "tagged.iob2").is_file()
