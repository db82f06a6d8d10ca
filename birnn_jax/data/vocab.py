"""Token (or character) vocabularies: built from training data only, saved as JSON.

Ids are deterministic: PAD=0, UNK=1, then any `specials` (e.g. "<mask>", "<bos>"), then the
kept tokens by frequency (descending), ties broken alphabetically (by code point). A token is
anything hashable into a string: words for a word vocabulary, single characters for a character
vocabulary (iterating a `str` yields its characters, so `Vocab.build(words)` counts characters
and `vocab.encode(word)` encodes one word's characters).

    words = Vocab.build(train_sentences, min_freq=2)
    ids = words.encode(["The", "cat"])        # int32 [2]; unseen tokens -> UNK
    words.save(workdir / "vocab_words.json")   # eval/predict: Vocab.load(...)
"""

import collections
import json
import os
import pathlib
import tempfile
from typing import Iterable, Sequence

import numpy as np

from birnn_jax.data.common import DataError

PAD, UNK = 0, 1
PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
_FORMAT = "birnn_jax.vocab/1"


class Vocab:
  """A bijection between tokens and int ids with reserved PAD=0 and UNK=1.

  Attributes:
    tokens: the token of each id, `tokens[0] == "<pad>"`, `tokens[1] == "<unk>"`.
    num_reserved: how many leading ids are reserved (PAD, UNK and the specials).
  """

  def __init__(self, tokens: Sequence[str], num_reserved: int = 2):
    """Wraps an id-ordered token list (use `build` or `load` rather than this directly).

    Raises:
      ValueError: tokens repeat, are not strings, or do not start with PAD and UNK.
    """
    self.tokens = tuple(tokens)
    self.num_reserved = num_reserved
    self._ids = {token: i for i, token in enumerate(self.tokens)}
    _check_tokens(self.tokens, self._ids, num_reserved)

  @classmethod
  def build(cls, sequences: Iterable[Iterable[str]], min_freq: int = 1,
            max_size: int | None = None, specials: Sequence[str] = ()) -> "Vocab":
    """Counts the tokens of `sequences` (training data only) and keeps the frequent ones.

    Args:
      sequences: token sequences, e.g. sentences as lists of words, or words as strings
        (for a character vocabulary).
      min_freq: a token is kept if it occurs at least this often.
      max_size: at most this many ids in all (reserved ones included); None = no cap.
      specials: extra reserved tokens given ids 2, 3, ... after PAD and UNK.

    Returns:
      The vocabulary; ids ordered by frequency (descending), then alphabetically.
    """
    if min_freq < 1:
      raise ValueError(f"min_freq must be >= 1, got {min_freq}.")
    reserved = [PAD_TOKEN, UNK_TOKEN, *specials]
    if max_size is not None and max_size < len(reserved):
      raise ValueError(f"max_size={max_size} leaves no room for the {len(reserved)} "
                       "reserved tokens.")
    counts = collections.Counter(token for seq in sequences for token in seq)
    for token in reserved:
      counts.pop(token, None)
    kept = sorted((t for t, n in counts.items() if n >= min_freq),
                  key=lambda t: (-counts[t], t))
    if max_size is not None:
      kept = kept[:max_size - len(reserved)]
    return cls(reserved + kept, num_reserved=len(reserved))

  def __len__(self) -> int:
    return len(self.tokens)

  def __contains__(self, token: str) -> bool:
    return token in self._ids

  def __eq__(self, other) -> bool:
    return (isinstance(other, Vocab) and self.tokens == other.tokens
            and self.num_reserved == other.num_reserved)

  def __repr__(self) -> str:
    return f"Vocab(size={len(self)}, num_reserved={self.num_reserved})"

  def token_to_id(self, token: str) -> int:
    """The id of `token`, UNK if it is not in the vocabulary."""
    return self._ids.get(token, UNK)

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """Ids of `tokens`: int32 [len(tokens)], UNK for unseen tokens."""
    return np.fromiter((self._ids.get(t, UNK) for t in tokens), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Tokens of `ids` (any int array or list, e.g. int32 [T]); PAD/UNK come back as
    "<pad>"/"<unk>". Raises IndexError for an id outside [0, len)."""
    out = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1):
      if not 0 <= i < len(self.tokens):
        raise IndexError(f"id {i} is outside this vocabulary of size {len(self)}.")
      out.append(self.tokens[i])
    return out

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary as JSON (atomically: a crash never leaves half a file)."""
    path = pathlib.Path(path)
    payload = {"format": _FORMAT, "num_reserved": self.num_reserved,
               "tokens": list(self.tokens)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=0)
      os.chmod(tmp, 0o644)
      os.replace(tmp, path)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Vocab":
    """Reads a vocabulary written by `save`.

    Raises:
      DataError: naming the file (and line, for invalid JSON) when it is missing or malformed.
    """
    try:
      with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    except OSError as e:
      raise DataError(f"cannot read vocabulary: {e.strerror}.", path) from e
    except json.JSONDecodeError as e:
      raise DataError(f"invalid JSON: {e.msg}.", path, e.lineno) from e
    except UnicodeDecodeError as e:
      raise DataError(f"invalid UTF-8 at byte {e.start}.", path) from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
      raise DataError(f"not a vocabulary file (expected format {_FORMAT!r}).", path)
    try:
      return cls(payload["tokens"], payload["num_reserved"])
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f"malformed vocabulary: {e}", path) from e


def _check_tokens(tokens: tuple, ids: dict, num_reserved) -> None:
  """Raises ValueError unless `tokens` is a valid id-ordered token list."""
  if not all(isinstance(t, str) for t in tokens):
    raise ValueError("every token must be a string.")
  if len(ids) != len(tokens):
    dup = next(t for t, n in collections.Counter(tokens).items() if n > 1)
    raise ValueError(f"token {dup!r} occurs more than once.")
  if tokens[:2] != (PAD_TOKEN, UNK_TOKEN):
    raise ValueError(f"ids 0 and 1 must be {PAD_TOKEN!r} and {UNK_TOKEN!r}, "
                     f"got {list(tokens[:2])}.")
  if type(num_reserved) is not int or not 2 <= num_reserved <= len(tokens):
    raise ValueError(f"num_reserved must be an int in [2, {len(tokens)}], "
                     f"got {num_reserved!r}.")
