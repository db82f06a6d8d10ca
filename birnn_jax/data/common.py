"""What every reader shares: where a corpus is found, compressed files, verified downloads.

One resolution order for every corpus (`resolve_data_dir`):

  1. `config.data.dir`          (a root holding `<subdir>/`, as passed by the task)
  2. `$BIRNN_DATA_DIR`          (a root holding `<subdir>/`)
  3. the bundled copy           (`birnn_jax/data/bundled/<subdir>/`, xz-compressed, with licence)
  4. `~/.cache/birnn_jax`       (filled by `fetch_verified`, only for what is not bundled)

Readers open files through `open_binary`, which reads `name` or `name.xz` alike, so a user's
plain files and the bundled compressed ones go through the same code.
"""

import dataclasses
import hashlib
import http.client
import lzma
import os
import pathlib
import shutil
import tempfile
import urllib.request
from typing import BinaryIO

from birnn_jax.errors import DataError  # re-exported: readers raise it

ENV_VAR = "BIRNN_DATA_DIR"
CACHE_DIR = pathlib.Path("~/.cache/birnn_jax").expanduser()
BUNDLED_DIR = pathlib.Path(__file__).resolve().parent / "bundled"
COMPRESSED_SUFFIX = ".xz"


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A corpus the project knows: its folder name, files and where a cache copy comes from.

  Attributes:
    subdir: the folder name under every root (e.g. 'ud_english_ewt').
    sha256: uncompressed file name -> sha256 of its bytes (what a download must match).
    urls: URL templates with `{name}`, tried in order for each file.
  """
  subdir: str
  sha256: dict[str, str]
  urls: tuple[str, ...]


def resolve_data_dir(configured: str | None, subdir: str) -> pathlib.Path:
  """`<root>/<subdir>` for the first root set: config value, $BIRNN_DATA_DIR, bundled, cache.

  Raises DataError naming `config.data.dir` (or $BIRNN_DATA_DIR) when the folder it names
  does not exist or has no `<subdir>/`.
  """
  if configured:
    root, origin = pathlib.Path(configured).expanduser(), "config.data.dir"
    if not root.is_dir():
      raise DataError(f"config.data.dir={configured!r} is not a directory.")
  elif os.environ.get(ENV_VAR):
    root, origin = pathlib.Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
  elif (BUNDLED_DIR / subdir).is_dir():
    return BUNDLED_DIR / subdir
  else:
    return CACHE_DIR / subdir
  folder = root / subdir
  if not folder.is_dir():
    raise DataError(f"{origin} points to {root}, which has no {subdir}/ folder.")
  return folder


def find_file(folder: str | os.PathLike, name: str) -> pathlib.Path | None:
  """`folder/name`, else `folder/name.xz`, else None."""
  for candidate in (name, name + COMPRESSED_SUFFIX):
    path = pathlib.Path(folder) / candidate
    if path.is_file():
      return path
  return None


def plain_name(path: str | os.PathLike) -> str:
  """A file's name without the compression suffix ('x.conllu.xz' -> 'x.conllu')."""
  return pathlib.Path(path).name.removesuffix(COMPRESSED_SUFFIX)


def open_binary(path: str | os.PathLike) -> BinaryIO:
  """The file's (uncompressed) bytes as a binary stream; `.xz` files are decompressed.

  Raises:
    DataError: the file is missing or unreadable, naming it.
  """
  try:
    if str(path).endswith(COMPRESSED_SUFFIX):
      stream = lzma.open(path, "rb")
      stream.peek(1)   # a damaged .xz fails here, not half-way through a parse
      return stream
    return open(path, "rb")
  except (OSError, lzma.LZMAError, EOFError) as e:
    raise DataError(f"cannot read: {getattr(e, 'strerror', None) or e}.", path) from e


def read_bytes(path: str | os.PathLike) -> bytes:
  """All uncompressed bytes of `path` (see `open_binary`)."""
  with open_binary(path) as f:
    try:
      return f.read()
    except (OSError, lzma.LZMAError, EOFError) as e:
      raise DataError(f"cannot read: {e}.", path) from e


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
  """The hex digest ('sha1', 'sha256', ...) of a file's uncompressed bytes, 1 MiB at a time."""
  digest = hashlib.new(algorithm)
  with open_binary(path) as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
  """The hex sha256 of a file's (uncompressed) bytes."""
  return file_digest(path, "sha256")


def verify_sha256(path: str | os.PathLike, expected: str,
                  name: str | os.PathLike | None = None) -> None:
  """Raises DataError (naming `name`, default `path`) unless the file's sha256 is `expected`."""
  actual = sha256_file(path)
  if actual != expected:
    raise DataError(f"sha256 is {actual}, expected {expected} (corrupt or changed "
                    "file).", name or path)


def fetch_verified(url: str, dest: str | os.PathLike, sha256: str,
                   timeout: float = 60.0) -> pathlib.Path:
  """Downloads `url` to `dest`, keeping it only if its sha256 is `sha256`.

  The bytes go to a temporary file beside `dest`, which is renamed into place only after
  the checksum matches, so a failed or corrupt download leaves nothing behind and never
  replaces a good file.

  Raises:
    DataError: the download failed (naming the URL) or its checksum is wrong.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          shutil.copyfileobj(response, out)
      except (OSError, http.client.HTTPException) as e:
        raise DataError(f"download of {url} failed: {e}", dest) from e
    verify_sha256(tmp, sha256, name=url)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)
  return dest


def corpus_dir(corpus: Corpus, configured: str | None = None,
               download: bool = True) -> pathlib.Path:
  """The folder holding `corpus`'s files, by `resolve_data_dir`'s order.

  Only when the order falls through to the cache (no configured folder, no $BIRNN_DATA_DIR,
  no bundled copy) are missing files downloaded there (`fetch_verified`, each URL of
  `corpus.urls` in turn), and only with `download`.

  Raises:
    DataError: the files are missing and cannot be fetched; the message names every URL
      tried and where to place the files by hand.
  """
  folder = resolve_data_dir(configured, corpus.subdir)
  if folder != CACHE_DIR / corpus.subdir:
    return folder
  missing = [n for n in corpus.sha256 if find_file(folder, n) is None]
  if missing and not download:
    raise DataError(f"missing {', '.join(missing)}.", folder)
  for name in missing:
    failures = []
    for template in corpus.urls:
      try:
        fetch_verified(template.format(name=name), folder / name, corpus.sha256[name])
        break
      except DataError as e:
        failures.append(str(e))
    else:
      raise DataError(
          f"{corpus.subdir} is not bundled here and could not be downloaded:\n  " +
          "\n  ".join(failures) + f"\nPlace {name} (plain or .xz) in {folder} by hand, or "
          f"point config.data.dir or ${ENV_VAR} at a folder holding {corpus.subdir}/.", folder)
  return folder


def read_lines(path: str | os.PathLike) -> list[str]:
  """The lines of a UTF-8 text file (plain or .xz), as `decode_line` gives them, but
  decompressed and decoded in one go (a line at a time costs readers several times more).

  Raises:
    DataError: the file is missing or unreadable; or, naming the line, it is not UTF-8.
  """
  data = read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    first = data.rfind(b"\n", 0, e.start) + 1
    end = data.find(b"\n", e.start)
    decode_line(data[first:end if end >= 0 else len(data)], path,
                data.count(b"\n", 0, e.start) + 1)   # raises, naming the line
    raise
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()    # the end of the last line, not a line of its own
  lines = [line[:-1] if line.endswith("\r") else line for line in lines]
  if lines and lines[0].startswith("\ufeff"):
    lines[0] = lines[0][1:]
  return lines


def decode_line(raw: bytes, path: str | os.PathLike, number: int) -> str:
  """One line of a UTF-8 text file without its line ending (LF or CRLF) and, on line 1, a
  byte-order mark; DataError naming file and line for bytes that are not UTF-8."""
  raw = raw.rstrip(b"\n")
  if raw.endswith(b"\r"):
    raw = raw[:-1]
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start} of "
                    "the line).", path, number) from e
  return text[1:] if number == 1 and text.startswith("\ufeff") else text
