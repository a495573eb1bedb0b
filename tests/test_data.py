"""Tests for fastnum.data: the book's load_mnist contract, file verification, downloads."""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastnum import data as fd
from fastnum.data import (
    DEFAULT_MIRRORS,
    MNIST_FILES,
    MnistError,
    load_mnist,
    mnist_cache_dir,
    mnist_files,
    one_hot,
)
from tests._mnist_server import CUT, CUT_NO_LENGTH, NOT_FOUND, MirrorServer

TRAIN_IMG, TRAIN_LBL, TEST_IMG, TEST_LBL = MNIST_FILES
# Nothing listens on the discard port: a test that forgets to pass mirrors fails fast, offline.
DEAD_MIRROR = "http://127.0.0.1:9/nothing-here/"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # No test may write into the user's cache or reach the internet by accident.
    monkeypatch.setenv("FASTNUM_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FASTNUM_MNIST_MIRRORS", DEAD_MIRROR)


@pytest.fixture(scope="module")
def source_bytes(mnist_source_dir):
    """The four .gz files as bytes, read once per module."""
    return {name: (mnist_source_dir / name).read_bytes() for name in MNIST_FILES}


@pytest.fixture(scope="module")
def reference(mnist_source_dir):
    """Raw uint8 arrays loaded straight from the source folder."""
    (x, t), (xt, tt) = load_mnist(normalize=False, data_dir=mnist_source_dir)
    return x, t, xt, tt


@pytest.fixture
def src_copy(tmp_path, source_bytes):
    """A private, writable copy of the four files that a test may damage."""
    d = tmp_path / "src"
    d.mkdir()
    for name, blob in source_bytes.items():
        (d / name).write_bytes(blob)
    return d


def _idx_gunzip(blob):
    return bytearray(gzip.decompress(blob))


def _regzip(content):
    return gzip.compress(bytes(content), compresslevel=1)


def _listing(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def _assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u, v)


def _flat(loaded):
    (x, t), (xt, tt) = loaded
    return x, t, xt, tt


# --------------------------------------------------------------------------- the book's contract


def test_default_load_matches_the_book(mnist_source_dir):
    (x, t), (xt, tt) = load_mnist(data_dir=mnist_source_dir)
    assert x.shape == (60000, 784) and xt.shape == (10000, 784)
    assert x.dtype == np.float32 and xt.dtype == np.float32
    assert t.shape == (60000,) and tt.shape == (10000,)
    assert t.dtype == np.uint8 and tt.dtype == np.uint8
    assert x.min() == 0.0 and x.max() == 1.0
    assert xt.min() == 0.0 and xt.max() == 1.0
    assert set(np.unique(t)) == set(range(10)) and set(np.unique(tt)) == set(range(10))
    # Known first labels of the standard set (the book prints t_train[0] == 5).
    assert t[0] == 5 and tt[0] == 7
    assert x.flags.writeable and x.flags.c_contiguous


def test_normalize_false_gives_raw_uint8(reference):
    x, t, xt, tt = reference
    assert x.dtype == np.uint8 and x.shape == (60000, 784) and x.max() == 255
    assert xt.dtype == np.uint8 and xt.shape == (10000, 784)
    assert x.flags.writeable


def test_normalize_divides_by_255_exactly(mnist_source_dir, reference):
    (x, _), _ = load_mnist(data_dir=mnist_source_dir)
    expected = reference[0].astype(np.float32)
    expected /= 255.0
    assert np.array_equal(x, expected)


def test_flatten_false_shape_and_values(mnist_source_dir, reference):
    (x, t), (xt, tt) = load_mnist(normalize=False, flatten=False, data_dir=mnist_source_dir)
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert np.array_equal(x.reshape(60000, 784), reference[0])
    assert np.array_equal(xt.reshape(10000, 784), reference[2])


def test_one_hot_labels(mnist_source_dir, reference):
    (_, t), (_, tt) = load_mnist(one_hot_label=True, data_dir=mnist_source_dir)
    assert t.shape == (60000, 10) and tt.shape == (10000, 10)
    assert t.dtype == np.float32
    assert np.array_equal(t.sum(axis=1), np.ones(60000, np.float32))
    assert np.array_equal(t.argmax(axis=1), reference[1])
    assert np.array_equal(tt.argmax(axis=1), reference[3])


def test_arrays_equal_an_independent_parse(mnist_source_dir, reference):
    # Read the IDX layout by hand (16-byte image header, 8-byte label header) to check that the
    # loader returns exactly the file content, in order, for all four files.
    def raw(name, offset):
        return np.frombuffer(gzip.decompress((mnist_source_dir / name).read_bytes()), np.uint8)[
            offset:
        ]

    x, t, xt, tt = reference
    assert np.array_equal(x.ravel(), raw(TRAIN_IMG, 16))
    assert np.array_equal(t, raw(TRAIN_LBL, 8))
    assert np.array_equal(xt.ravel(), raw(TEST_IMG, 16))
    assert np.array_equal(tt, raw(TEST_LBL, 8))


def test_env_var_is_used_when_no_data_dir(monkeypatch, mnist_source_dir, reference):
    monkeypatch.setenv("FASTNUM_MNIST_DIR", str(mnist_source_dir))
    _assert_same(_flat(load_mnist(normalize=False)), reference)


# --------------------------------------------------------------------------- what is written


def test_explicit_source_dir_is_never_written(src_copy, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in src_copy.iterdir()}
    load_mnist(data_dir=src_copy, cache_dir=tmp_path / "cache")
    assert {p.name: p.stat().st_mtime_ns for p in src_copy.iterdir()} == before
    assert not (tmp_path / "cache").exists()  # nothing is cached from a named folder


# --------------------------------------------------------------------------- damaged source files


def _truncate(blob):
    return blob[: len(blob) // 2]


def _set_header_word(blob, index, value):
    content = _idx_gunzip(blob)
    content[4 * index : 4 * index + 4] = int(value).to_bytes(4, "big")
    return _regzip(content)


def _drop_last_byte(blob):
    return _regzip(_idx_gunzip(blob)[:-1])


def _flip_content_byte(blob):
    content = _idx_gunzip(blob)
    content[-1] ^= 0x01
    return _regzip(content)


CORRUPTIONS = [
    (TEST_LBL, _truncate, "truncated gzip"),
    (TRAIN_IMG, _truncate, "truncated gzip"),
    (TEST_LBL, lambda b: os.urandom(len(b)), "not a valid gzip"),
    (TEST_LBL, lambda b: b[:-4] + b"\0\0\0\0", "gzip"),  # CRC/length trailer damaged
    (TEST_LBL, lambda b: _set_header_word(b, 0, 2051), "magic number 2051, expected 2049"),
    (TEST_IMG, lambda b: _set_header_word(b, 0, 0x0803_0000), "magic number"),
    (TEST_LBL, lambda b: _set_header_word(b, 1, 9999), r"count/dimensions \(9999,\)"),
    (TEST_IMG, lambda b: _set_header_word(b, 2, 32), r"\(10000, 32, 28\)"),
    (TEST_LBL, _drop_last_byte, "10007 bytes but its header implies exactly 10008"),
    (TRAIN_LBL, _flip_content_byte, "wrong content: MD5"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "problem"),
    CORRUPTIONS,
    ids=[f"{n.split('-')[0]}-{n.split('-')[1]}-{p[:18]}" for n, _, p in CORRUPTIONS],
)
def test_damaged_source_file_is_refused(src_copy, tmp_path, source_bytes, name, corrupt, problem):
    (src_copy / name).write_bytes(corrupt(source_bytes[name]))
    cache = tmp_path / "cache"
    with pytest.raises(MnistError, match=problem) as e:
        load_mnist(data_dir=src_copy, cache_dir=cache)
    msg = str(e.value)
    assert str(src_copy / name) in msg
    assert "Replace it with a good copy" in msg and "FASTNUM_MNIST_DIR" in msg


def test_damaged_file_in_cache_dir_says_delete_it(tmp_path, monkeypatch, source_bytes):
    monkeypatch.delenv("FASTNUM_MNIST_DIR", raising=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, blob in source_bytes.items():
        (cache / name).write_bytes(_truncate(blob) if name == TEST_IMG else blob)
    with pytest.raises(MnistError, match="truncated gzip") as e:
        load_mnist(cache_dir=cache)
    assert str(cache / TEST_IMG) in str(e.value)
    assert "Delete it" in str(e.value)


# --------------------------------------------------------------------------- missing files


def test_missing_files_in_data_dir_are_listed_and_not_downloaded(src_copy, tmp_path, source_bytes):
    (src_copy / TEST_LBL).unlink()
    (src_copy / TRAIN_LBL).unlink()
    with MirrorServer(source_bytes) as server:
        with pytest.raises(MnistError) as e:
            load_mnist(data_dir=src_copy, cache_dir=tmp_path / "cache", mirrors=[server.url])
        assert server.requests == [], "a user-given folder must never be downloaded into"
    msg = str(e.value)
    assert f"lacks {TRAIN_LBL}, {TEST_LBL}" in msg
    assert str(src_copy) in msg and "data_dir=" in msg
    assert all(name in msg for name in MNIST_FILES)  # says which files to put there
    assert _listing(src_copy) == sorted([TRAIN_IMG, TEST_IMG])


def test_missing_env_dir_names_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNUM_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MnistError, match=r"\$FASTNUM_MNIST_DIR\) does not exist") as e:
        load_mnist()
    assert str(tmp_path / "nowhere") in str(e.value)
    assert not (tmp_path / "nowhere").exists()


def test_data_dir_that_is_a_file_says_so(tmp_path):
    a_file = tmp_path / "mnist.gz"
    a_file.write_bytes(b"not a folder")
    with pytest.raises(MnistError, match="is a file, not a folder") as e:
        load_mnist(data_dir=a_file)
    assert str(a_file) in str(e.value) and "does not exist" not in str(e.value)


def test_mnist_files_returns_paths_in_order(mnist_source_dir):
    files = mnist_files(mnist_source_dir)
    assert list(files) == list(MNIST_FILES)
    assert all(p == mnist_source_dir / n for n, p in files.items())


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def no_data_dir(monkeypatch):
    # conftest points FASTNUM_MNIST_DIR at the shared copy; downloads only happen without it.
    monkeypatch.delenv("FASTNUM_MNIST_DIR", raising=False)


def test_clean_download(no_data_dir, tmp_path, source_bytes, reference):
    cache = tmp_path / "cache"
    with MirrorServer(source_bytes) as server:
        loaded = load_mnist(normalize=False, cache_dir=cache, mirrors=[server.url])
        assert server.requests == list(MNIST_FILES)
    _assert_same(_flat(loaded), reference)
    assert _listing(cache) == sorted(MNIST_FILES)  # no temporary files left
    for name in MNIST_FILES:
        assert (cache / name).read_bytes() == source_bytes[name]
    # Everything is local now: the next load needs no mirror at all.
    _assert_same(_flat(load_mnist(normalize=False, cache_dir=cache)), reference)


def test_download_uses_env_cache_dir_and_env_mirrors(
    no_data_dir, tmp_path, monkeypatch, source_bytes
):
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("FASTNUM_CACHE_DIR", str(cache))
    with MirrorServer(source_bytes) as server:
        # Dead first mirror, then a good one without a trailing slash: both must be handled.
        monkeypatch.setenv("FASTNUM_MNIST_MIRRORS", f" {DEAD_MIRROR} , {server.url.rstrip('/')}")
        paths = mnist_files()
    assert paths == {n: cache / n for n in MNIST_FILES}
    assert _listing(cache) == sorted(MNIST_FILES)


@pytest.mark.parametrize("how", [CUT, CUT_NO_LENGTH])
def test_cut_connection_leaves_nothing_then_retry_works(
    no_data_dir, tmp_path, source_bytes, reference, how
):
    cache = tmp_path / "cache"
    with MirrorServer(source_bytes, {TRAIN_IMG: how}) as bad:
        with pytest.raises(MnistError) as e:
            load_mnist(cache_dir=cache, mirrors=[bad.url])
    msg = str(e.value)
    assert TRAIN_IMG in msg and str(cache) in msg and bad.url in msg
    assert "Offline?" in msg and "FASTNUM_MNIST_DIR" in msg
    if how == CUT:
        assert f"connection closed after {len(source_bytes[TRAIN_IMG]) // 2} of" in msg
    else:
        assert "truncated gzip" in msg  # no length to compare: the gzip check catches it
    assert _listing(cache) == [], "no partial or temporary file may survive"

    with MirrorServer(source_bytes) as good:
        loaded = load_mnist(normalize=False, cache_dir=cache, mirrors=[good.url])
    _assert_same(_flat(loaded), reference)


def _other_valid_labels(source_bytes):
    # A well-formed IDX labels file (right magic, count and size) with different labels.
    content = _idx_gunzip(source_bytes[TRAIN_LBL])
    content[8:] = bytes((b + 1) % 10 for b in content[8:])
    return _regzip(content)


@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        (TRAIN_IMG, lambda s: os.urandom(200_000), "not a valid gzip"),
        (TRAIN_LBL, _other_valid_labels, "wrong content: MD5"),
        (TEST_IMG, lambda s: s[TEST_LBL], "magic number 2049, expected 2051"),
    ],
    ids=["random-bytes", "valid-gzip-other-content", "wrong-file"],
)
def test_wrong_bytes_are_refused(no_data_dir, tmp_path, source_bytes, name, payload, problem):
    cache = tmp_path / "cache"
    with MirrorServer(source_bytes, {name: payload(source_bytes)}) as server:
        with pytest.raises(MnistError, match=problem) as e:
            load_mnist(cache_dir=cache, mirrors=[server.url])
    assert name in str(e.value)
    # Files before the bad one were verified and may stay; the bad one and any temp file may not.
    good_before = list(MNIST_FILES[: MNIST_FILES.index(name)])
    assert _listing(cache) == sorted(good_before)


def test_mirror_fallback_after_404(no_data_dir, tmp_path, source_bytes, reference):
    cache = tmp_path / "cache"
    with (
        MirrorServer(source_bytes, {"*": NOT_FOUND}) as first,
        MirrorServer(source_bytes) as second,
    ):
        loaded = load_mnist(normalize=False, cache_dir=cache, mirrors=[first.url, second.url])
        assert first.requests == list(MNIST_FILES)
        assert second.requests == list(MNIST_FILES)
    _assert_same(_flat(loaded), reference)
    assert _listing(cache) == sorted(MNIST_FILES)


def test_all_mirrors_failing_lists_each_one(no_data_dir, tmp_path, source_bytes):
    cache = tmp_path / "cache"
    with MirrorServer(source_bytes, {"*": NOT_FOUND}) as server:
        with pytest.raises(MnistError) as e:
            load_mnist(cache_dir=cache, mirrors=[server.url, DEAD_MIRROR])
    msg = str(e.value)
    assert f"{server.url}{TRAIN_IMG}: HTTPError: HTTP Error 404" in msg
    assert f"{DEAD_MIRROR}{TRAIN_IMG}: URLError" in msg
    assert f"put them in {cache}" in msg
    assert _listing(cache) == []


def test_keyboard_interrupt_mid_download_leaves_nothing(
    no_data_dir, tmp_path, monkeypatch, source_bytes
):
    real_urlopen = urllib.request.urlopen

    class Interrupted:
        # Deliver one block of the real response, then act as if the user pressed Ctrl-C.
        def __init__(self, resp):
            self.resp, self.headers, self.reads = resp, resp.headers, 0

        def read(self, n):
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self.resp.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.resp.close()

    monkeypatch.setattr(
        fd.urllib.request, "urlopen", lambda *a, **k: Interrupted(real_urlopen(*a, **k))
    )
    cache = tmp_path / "cache"
    with MirrorServer(source_bytes) as first, MirrorServer(source_bytes) as second:
        with pytest.raises(KeyboardInterrupt):
            load_mnist(cache_dir=cache, mirrors=[first.url, second.url])
        assert second.requests == [], "an interrupt must stop, not fall through to the next mirror"
    assert _listing(cache) == []


def test_uncreatable_cache_dir_is_a_clear_error(no_data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(MnistError, match="Cannot create the MNIST cache folder") as e:
        load_mnist(cache_dir=blocker / "cache")
    assert "FASTNUM_CACHE_DIR" in str(e.value)


# --------------------------------------------------------------------------- small helpers


def test_cache_dir_resolution(monkeypatch, tmp_path):
    assert mnist_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("FASTNUM_CACHE_DIR", str(tmp_path / "env"))
    assert mnist_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FASTNUM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_cache_dir() == tmp_path / "xdg" / "fastnum" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist_cache_dir() == tmp_path / "home" / ".cache" / "fastnum" / "mnist"


def test_default_mirrors_apply_when_none_are_given(monkeypatch):
    for unset in ("", " , "):  # an empty or blank variable means "not set"
        monkeypatch.setenv("FASTNUM_MNIST_MIRRORS", unset)
        assert fd._mirror_list(None) == list(DEFAULT_MIRRORS)
    monkeypatch.setenv("FASTNUM_MNIST_MIRRORS", "http://a/x, http://b/y/")
    assert fd._mirror_list(None) == ["http://a/x/", "http://b/y/"]


def test_mirrors_argument_validation():
    with pytest.raises(ValueError, match="mirrors is empty"):
        fd._mirror_list([])
    assert fd._mirror_list("http://a/b") == ["http://a/b/"]


def test_one_hot_values():
    out = one_hot(np.array([3, 0, 9], dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (3, 10)
    expected = np.zeros((3, 10), np.float32)
    expected[[0, 1, 2], [3, 0, 9]] = 1
    assert np.array_equal(out, expected)
    assert one_hot([1, 0], n_classes=2).tolist() == [[0, 1], [1, 0]]
    assert one_hot(np.array([], dtype=np.int64)).shape == (0, 10)


@pytest.mark.parametrize(
    ("labels", "n", "exc", "match"),
    [
        ([0, 10], 10, ValueError, "label 10 is outside 0..9"),
        ([-1], 10, ValueError, "label -1"),
        ([[1, 2]], 10, ValueError, "1-D"),
        ([0.5], 10, TypeError, "integer"),
        ([0], 0, ValueError, "at least 1"),
    ],
)
def test_one_hot_rejects_bad_input(labels, n, exc, match):
    with pytest.raises(exc, match=match):
        one_hot(np.array(labels), n_classes=n)
