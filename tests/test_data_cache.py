"""The parsed-corpus cache: a file read before is not parsed again, an edited one always is."""

import functools
import os

import pytest

from birnn_jax.data import cache
from birnn_jax.data import conllu_data
from birnn_jax.data import iob2
from birnn_jax.data.common import DataError


def _word(i: int, form: str, upos: str) -> str:
  return "\t".join([str(i), form, form.lower(), upos, "_", "_", str(i - 1), "dep", "_", "_"])


def _conllu(*sentences) -> str:
  return "".join("".join(_word(i, f, t) + "\n" for i, (f, t) in enumerate(s, 1)) + "\n"
                 for s in sentences)


def read_pairs(path, upper=False):
  """A tiny reader: each line 'a b' is a pair, a blank line ends a sentence."""
  read_pairs.calls += 1
  text = open(path, encoding="utf-8").read()
  out = [[tuple(line.upper().split() if upper else line.split()) for line in block.splitlines()]
         for block in text.split("\n\n") if block.strip()]
  if not out:
    raise DataError("no sentences in the file.", path)
  return out


read_pairs.calls = 0


@pytest.fixture
def folder(tmp_path, monkeypatch):
  """A fresh cache folder for this test."""
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "parsed"))
  read_pairs.calls = 0
  return tmp_path / "parsed"


def test_a_second_read_comes_from_the_cache_unparsed(tmp_path, folder):
  path = tmp_path / "x.txt"
  path.write_text("a A\nb B\n\nc C\n")
  first = cache.cached(read_pairs, path, 1)
  assert read_pairs.calls == 1 and len(list(folder.iterdir())) == 1
  second = cache.cached(read_pairs, path, 1)
  assert read_pairs.calls == 1          # not parsed again
  assert second == first == [[("a", "A"), ("b", "B")], [("c", "C")]]
  assert all(isinstance(pair, tuple) for s in second for pair in s)


def test_an_edited_file_of_the_same_size_and_time_is_parsed_again(tmp_path, folder):
  path = tmp_path / "x.txt"
  path.write_text("a A\n")
  cache.cached(read_pairs, path, 1)
  stat = os.stat(path)
  path.write_text("b B\n")                                # same size ...
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and modification time
  assert cache.cached(read_pairs, path, 1) == [[("b", "B")]]
  assert read_pairs.calls == 2


def test_the_key_holds_the_reader_its_version_source_and_arguments(tmp_path, folder,
                                                                    monkeypatch):
  path = tmp_path / "x.txt"
  path.write_text("a A\n")
  base = cache.key(read_pairs, path, 1)
  assert cache.key(read_pairs, path, 1) == base
  assert cache.key(read_pairs, path, 2) != base                  # a bumped version
  assert cache.key(read_pairs, path, 1, upper=True) != base      # another argument
  assert cache.key(_word, path, 1) != base                       # another reader
  monkeypatch.setattr(cache, "_source_digest", lambda read: "edited")
  assert cache.key(read_pairs, path, 1) != base                  # its module edited
  assert cache.cached(read_pairs, path, 1, upper=True) == [[("A", "A")]]


def test_errors_are_not_cached(tmp_path, folder):
  path = tmp_path / "empty.txt"
  path.write_text("\n\n")
  for _ in range(2):
    with pytest.raises(DataError, match="no sentences"):
      cache.cached(read_pairs, path, 1)
  assert read_pairs.calls == 2 and not folder.exists()
  with pytest.raises(DataError, match="cannot read"):
    cache.cached(read_pairs, tmp_path / "missing.txt", 1)


def test_an_unreadable_entry_is_parsed_again_and_replaced(tmp_path, folder):
  path = tmp_path / "x.txt"
  path.write_text("a A\n")
  cache.cached(read_pairs, path, 1)
  (entry,) = folder.iterdir()
  entry.write_text('{"lengths": [5], "columns": [["a"], ["A"]]}')   # cut short / damaged
  assert cache.cached(read_pairs, path, 1) == [[("a", "A")]]
  assert read_pairs.calls == 2
  assert cache.cached(read_pairs, path, 1) == [[("a", "A")]] and read_pairs.calls == 2


def test_off_and_an_unwritable_folder_only_cost_the_speed_up(tmp_path, monkeypatch):
  path = tmp_path / "x.txt"
  path.write_text("a A\n")
  monkeypatch.setenv(cache.ENV_VAR, cache.OFF)
  assert cache.cache_dir() is None
  assert cache.cached(read_pairs, path, 1) == [[("a", "A")]]
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv(cache.ENV_VAR, str(blocker / "parsed"))   # under a file: unwritable
  assert cache.cached(read_pairs, path, 1) == [[("a", "A")]]
  monkeypatch.delenv(cache.ENV_VAR)
  assert cache.cache_dir() == cache.DEFAULT_DIR


def test_read_conllu_serves_the_cache_until_the_file_changes(tmp_path, folder, monkeypatch):
  calls = []
  parse = conllu_data.parse_conllu

  @functools.wraps(parse)   # the same name, so the same key as the real parser
  def counting(*args, **kwargs):
    calls.append(args)
    return parse(*args, **kwargs)

  monkeypatch.setattr(conllu_data, "parse_conllu", counting)
  path = tmp_path / "x-ud-train.conllu"
  path.write_text(_conllu([("Hi", "INTJ"), ("there", "ADV")]))
  first = conllu_data.read_conllu(path)
  assert conllu_data.read_conllu(path) == first == [[("Hi", "INTJ"), ("there", "ADV")]]
  assert len(calls) == 1
  stat = os.stat(path)
  path.write_text(_conllu([("Hi", "INTJ"), ("where", "ADV")]))   # same size
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert conllu_data.read_conllu(path) == [[("Hi", "INTJ"), ("where", "ADV")]]
  assert len(calls) == 2
  assert conllu_data.read_conllu(path, max_length=5) == [[("Hi", "INTJ"), ("where", "ADV")]]
  assert len(calls) == 3   # another max_length is another entry


def test_read_iob2_serves_the_cache_until_the_file_changes(tmp_path, folder):
  path = tmp_path / "x-train.iob2"
  path.write_text("1\tPå\tO\tO#O\ts\n2\tSID\tB-ORG\tO\ts\n\n")
  assert iob2.read_iob2(path) == iob2.read_iob2(path) == [[("På", "O"), ("SID", "B-ORG")]]
  assert len(list(folder.iterdir())) == 1
  path.write_text("1\tPå\tO\tO#O\ts\n2\tSID\tB-LOC\tO\ts\n\n")
  assert iob2.read_iob2(path) == [[("På", "O"), ("SID", "B-LOC")]]
  assert len(list(folder.iterdir())) == 2
  with pytest.raises(DataError, match="unknown tag 'B-LOC'"):   # labels are in the key
    iob2.read_iob2(path, labels=("O", "B-ORG"))
