"""Parsed corpora kept on disk, so that a corpus file is parsed once, not in every run.

`cached(read, path, version, **kwargs)` is `read(path, **kwargs)`, a list of sentences of
(str, str) pairs, taken from the cache when it holds an entry for exactly these inputs:

    key = sha256 of: the bytes of the file at `path` as stored (compressed or not),
                     the reader (`module.qualname`), its `version`, the sha256 of its
                     module's source, the Unicode database version (readers NFC-normalise),
                     and `kwargs`.

So an edited corpus file has another key and is parsed afresh: never served stale, however
its size or modification time look. So is a file read by an edited reader (its module's
source changed), even if nobody bumped `version`. Only successful reads are kept: a
malformed file raises its DataError every time, naming file and line.

Where (`cache_dir`): `$BIRNN_PARSED_CACHE_DIR` (`off` turns the cache off), else
`~/.cache/birnn_jax/parsed`, never inside the package. Entries are JSON of flat lists (they
load several times faster than nested ones; and unlike a pickle, an entry that someone else
wrote cannot run code), written to a temporary file and renamed into place, so concurrent
runs never see half an entry. A folder that cannot be written only costs the speed-up (one
warning). Deleting the folder is always safe.
"""

import hashlib
import json
import os
import pathlib
import sys
import tempfile
import unicodedata
from typing import Callable

from absl import logging

from birnn_jax.data import common

ENV_VAR = "BIRNN_PARSED_CACHE_DIR"
OFF = "off"
DEFAULT_DIR = common.CACHE_DIR / "parsed"
SUFFIX = ".json"
FORMAT = 1   # of the entries (`_encode`); part of the key

Sentences = list[list[tuple[str, str]]]

_warned: set[str] = set()


def cache_dir() -> pathlib.Path | None:
  """The cache folder: `$ENV_VAR` when set (None for 'off'), else DEFAULT_DIR."""
  value = os.environ.get(ENV_VAR)
  if value == OFF:
    return None
  return pathlib.Path(value).expanduser() if value else DEFAULT_DIR


def _source_digest(read: Callable) -> str:
  """The sha256 of the file `read`'s module was loaded from (its source, or its .pyc)."""
  return hashlib.sha256(pathlib.Path(sys.modules[read.__module__].__file__).read_bytes()
                        ).hexdigest()


def key(read: Callable, path: str | os.PathLike, version: int, **kwargs) -> str:
  """The cache key of `read(path, **kwargs)` (see the module docstring); DataError naming
  `path` when the file cannot be read."""
  digest = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  except OSError as e:
    raise common.DataError(f"cannot read: {e.strerror or e}.", path) from e
  about = {"format": FORMAT, "reader": f"{read.__module__}.{read.__qualname__}",
           "version": version,
           "source": _source_digest(read), "unicode": unicodedata.unidata_version,
           "kwargs": {k: _canonical(v) for k, v in sorted(kwargs.items())}}
  digest.update(json.dumps(about, sort_keys=True).encode())
  return digest.hexdigest()


def _canonical(value) -> str:
  """repr(value), a set's items sorted (a set's own order changes from process to process)."""
  if isinstance(value, (set, frozenset)):
    return f"{type(value).__name__}({sorted(map(repr, value))})"
  return repr(value)


def cached(read: Callable[..., Sentences], path: str | os.PathLike, version: int,
           **kwargs) -> Sentences:
  """`read(path, **kwargs)`, from the cache when it holds this exact file and reader.

  Args:
    read: a reader returning sentences of (str, str) pairs, e.g. CoNLL-U (form, UPOS).
    path: the corpus file.
    version: the reader's output version; bump it when the same file would read otherwise.
    **kwargs: the reader's other arguments (part of the key).

  Returns:
    What `read(path, **kwargs)` returns (a list of lists of 2-tuples of str).

  Raises:
    Whatever `read` raises (e.g. DataError for a malformed file), and DataError naming
    `path` when it cannot be read at all.
  """
  folder = cache_dir()
  if folder is None:
    return read(path, **kwargs)
  entry = folder / f"{pathlib.Path(path).name}-{key(read, path, version, **kwargs)[:40]}{SUFFIX}"
  sentences = _load(entry)
  if sentences is not None:
    logging.info("%s: read its parsed copy %s.", path, entry)
    return sentences
  sentences = read(path, **kwargs)
  _store(entry, sentences)
  return sentences


def _load(entry: pathlib.Path) -> Sentences | None:
  """The entry's sentences, or None when it is absent or unreadable (then re-parsed)."""
  try:
    data = json.loads(entry.read_bytes())
    pairs = list(zip(*data["columns"]))
    sentences, first = [], 0
    for length in data["lengths"]:
      sentences.append(pairs[first:first + length])
      first += length
    if first != len(pairs):
      raise ValueError(f"{len(pairs)} pairs, {first} in the sentences")
    return sentences
  except FileNotFoundError:
    return None
  except (OSError, ValueError, TypeError, KeyError) as e:
    logging.warning("Ignoring the unreadable parsed-corpus cache entry %s (%s).", entry, e)
    return None


def _encode(sentences: Sentences) -> dict:
  """{'lengths': words per sentence, 'columns': [all first items, all second items]}: flat
  lists of strings load several times faster than a list of pairs per sentence."""
  return {"lengths": [len(s) for s in sentences],
          "columns": [[a for s in sentences for a, _ in s], [b for s in sentences for _, b in s]]}


def _store(entry: pathlib.Path, sentences: Sentences) -> None:
  """Writes the entry atomically; a folder that refuses it only costs the speed-up."""
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=entry.name + ".", suffix=".part", dir=entry.parent)
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(_encode(sentences), out, ensure_ascii=False, separators=(",", ":"))
      os.replace(tmp, entry)
    finally:
      pathlib.Path(tmp).unlink(missing_ok=True)
  except OSError as e:
    if str(entry.parent) not in _warned:
      _warned.add(str(entry.parent))
      logging.warning("Cannot write the parsed-corpus cache in %s (%s); corpora are parsed "
                      "in every run. Set $%s to another folder, or to '%s'.", entry.parent,
                      e, ENV_VAR, OFF)
