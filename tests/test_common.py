"""birnn_jax.data.common: the resolution order, compressed files, and verified downloads,
tested against a local HTTP server started here (never the internet)."""

import contextlib
import functools
import hashlib
import http.server
import lzma
import socket
import threading

import pytest

from birnn_jax.data import common
from birnn_jax.data.common import DataError

BOOK = b"The Time Machine, by H. G. Wells [1898]\n\n I\n\nThe Time Traveller...\n"


@contextlib.contextmanager
def serve(folder):
  """A local HTTP server for the files in `folder`; yields its base URL."""
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def site(tmp_path):
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "book.txt").write_bytes(BOOK)
  with serve(tmp_path / "site") as url:
    yield url


def test_right_bytes_land_in_place(tmp_path, site):
  dest = tmp_path / "cache" / "book.txt"
  assert common.fetch_verified(f"{site}/book.txt", dest, hashlib.sha256(BOOK).hexdigest()) == dest
  assert dest.read_bytes() == BOOK
  assert [p.name for p in dest.parent.iterdir()] == ["book.txt"]   # no temporary file left


def test_wrong_checksum_is_an_error_and_leaves_nothing(tmp_path, site):
  dest = tmp_path / "cache" / "book.txt"
  with pytest.raises(DataError, match=r"/book.txt: sha256 is [0-9a-f]{64}, expected 0{64}"):
    common.fetch_verified(f"{site}/book.txt", dest, "0" * 64)
  assert list(dest.parent.iterdir()) == []


def test_a_wrong_download_never_replaces_a_good_file(tmp_path, site):
  dest = tmp_path / "book.txt"
  dest.write_bytes(b"the good copy")
  with pytest.raises(DataError):
    common.fetch_verified(f"{site}/book.txt", dest, "0" * 64)
  assert dest.read_bytes() == b"the good copy"


def test_server_down_names_the_url(tmp_path):
  url = f"http://127.0.0.1:{free_port()}/book.txt"
  with pytest.raises(DataError, match=rf"download of {url} failed"):
    common.fetch_verified(url, tmp_path / "book.txt", "0" * 64, timeout=5)
  assert list(tmp_path.iterdir()) == []


@pytest.fixture
def nothing_bundled(tmp_path, monkeypatch):
  """No env var, no bundled copy, and a cache in tmp_path: the download path."""
  monkeypatch.delenv(common.ENV_VAR, raising=False)
  monkeypatch.setattr(common, "BUNDLED_DIR", tmp_path / "bundled")
  monkeypatch.setattr(common, "CACHE_DIR", tmp_path / "cache")
  return tmp_path / "cache"


def corpus(urls):
  return common.Corpus("books", {"book.txt": hashlib.sha256(BOOK).hexdigest()}, urls)


def test_corpus_dir_downloads_what_is_not_bundled_once(site, nothing_bundled):
  folder = common.corpus_dir(corpus((f"{site}/{{name}}",)))
  assert folder == nothing_bundled / "books" and (folder / "book.txt").read_bytes() == BOOK
  # Second call: the file is there, so the (now unreachable) server is not asked.
  assert common.corpus_dir(corpus(("http://127.0.0.1:1/{name}",))) == folder


def test_corpus_dir_tries_each_url_then_explains_how_to_place_files(site, nothing_bundled):
  dead = f"http://127.0.0.1:{free_port()}/{{name}}"
  assert (common.corpus_dir(corpus((dead, f"{site}/{{name}}"))) / "book.txt").exists()
  (nothing_bundled / "books" / "book.txt").unlink()
  with pytest.raises(DataError) as e:
    common.corpus_dir(corpus((dead,)))
  message = str(e.value)
  assert dead.format(name="book.txt") in message
  assert "by hand" in message and str(nothing_bundled / "books") in message
  with pytest.raises(DataError, match="missing book.txt"):
    common.corpus_dir(corpus((dead,)), download=False)


def test_resolution_order(tmp_path, monkeypatch):
  for root in ("configured", "env", "bundled"):
    (tmp_path / root / "books").mkdir(parents=True)
  monkeypatch.setattr(common, "BUNDLED_DIR", tmp_path / "bundled")
  monkeypatch.setattr(common, "CACHE_DIR", tmp_path / "cache")
  monkeypatch.setenv(common.ENV_VAR, str(tmp_path / "env"))
  assert common.resolve_data_dir(str(tmp_path / "configured"), "books") == (
      tmp_path / "configured" / "books")
  assert common.resolve_data_dir("", "books") == tmp_path / "env" / "books"
  monkeypatch.delenv(common.ENV_VAR)
  assert common.resolve_data_dir("", "books") == tmp_path / "bundled" / "books"
  assert common.resolve_data_dir("", "other") == tmp_path / "cache" / "other"


def test_configured_folders_are_checked(tmp_path, monkeypatch):
  with pytest.raises(DataError, match=r"config\.data\.dir=.*is not a directory"):
    common.resolve_data_dir(str(tmp_path / "nowhere"), "books")
  with pytest.raises(DataError, match=r"config\.data\.dir points to .*no books/ folder"):
    common.resolve_data_dir(str(tmp_path), "books")
  monkeypatch.setenv(common.ENV_VAR, str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=r"\$BIRNN_DATA_DIR points to .*no books/ folder"):
    common.resolve_data_dir("", "books")


def test_xz_and_plain_files(tmp_path):
  (tmp_path / "a.txt").write_bytes(BOOK)
  (tmp_path / "b.txt.xz").write_bytes(lzma.compress(BOOK))
  assert common.find_file(tmp_path, "a.txt") == tmp_path / "a.txt"
  assert common.find_file(tmp_path, "b.txt") == tmp_path / "b.txt.xz"
  assert common.find_file(tmp_path, "c.txt") is None
  assert common.read_bytes(tmp_path / "a.txt") == common.read_bytes(tmp_path / "b.txt.xz")
  assert common.sha256_file(tmp_path / "b.txt.xz") == hashlib.sha256(BOOK).hexdigest()
  (tmp_path / "bad.txt.xz").write_bytes(b"garbage")
  with pytest.raises(DataError, match=r"bad.txt.xz: cannot read"):
    common.read_bytes(tmp_path / "bad.txt.xz")
  with pytest.raises(DataError, match=r"missing.txt: cannot read"):
    common.read_bytes(tmp_path / "missing.txt")


def test_every_bundled_corpus_has_its_licence_and_source_note():
  folders = sorted(p for p in common.BUNDLED_DIR.iterdir() if p.is_dir())
  assert [p.name for p in folders] == ["time_machine", "ud_english_ewt", "uner_danish_ddt"]
  for folder in folders:
    assert (folder / "LICENSE.txt").stat().st_size > 100
    note = (folder / "SOURCE.md").read_text()
    assert "sha256" in note and "Licen" in note
    for data in folder.glob("*.xz"):
      assert common.plain_name(data) in note
