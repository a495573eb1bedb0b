"""MNIST for the book's chapter 4: ``load_mnist`` with verified files and safe downloads.

Where the four ``.gz`` files come from, first match wins:

1. the ``data_dir`` argument;
2. the ``FASTNUM_MNIST_DIR`` environment variable;
3. the per-user cache folder (``cache_dir`` argument, else ``FASTNUM_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/fastnum/mnist``, else ``~/.cache/fastnum/mnist``). Only here are missing
   files downloaded, from ``DEFAULT_MIRRORS`` (or ``mirrors=`` / ``FASTNUM_MNIST_MIRRORS``).

Every file is checked before use: gzip integrity, IDX header, size and the MD5 of the
decompressed content. A file that fails is never used; the error names the file and the fix.
Every load reads and checks the four files again: a cache of the parsed arrays saved too little
time to be worth its code path (see the README).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnum._io import atomic_path
from fastnum._validate import Message

__all__ = [
    "DEFAULT_MIRRORS",
    "MNIST_FILES",
    "MnistError",
    "load_mnist",
    "mnist_cache_dir",
    "mnist_files",
    "one_hot",
]

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: Seconds to wait for a mirror to connect or to send the next block before moving on.
DOWNLOAD_TIMEOUT = 30.0

ENV_DATA_DIR = "FASTNUM_MNIST_DIR"
ENV_CACHE_DIR = "FASTNUM_CACHE_DIR"
ENV_MIRRORS = "FASTNUM_MNIST_MIRRORS"

_CHUNK = 1 << 20


class MnistError(ValueError):
    """An MNIST file is missing, damaged or could not be downloaded; the message says the fix."""


@dataclass(frozen=True)
class _IdxSpec:
    key: str  # the book's dataset key
    filename: str
    magic: int  # 2051: unsigned-byte 3-D (images), 2049: unsigned-byte 1-D (labels)
    shape: tuple[int, ...]
    md5: str  # of the decompressed file: one re-compressed mirror copy differs only in gzip bytes

    @property
    def header(self) -> bytes:
        return np.array([self.magic, *self.shape], dtype=">u4").tobytes()

    @property
    def nbytes(self) -> int:
        return len(self.header) + int(np.prod(self.shape))


_SPECS = (
    _IdxSpec("train_img", "train-images-idx3-ubyte.gz", 2051, (60000, 28, 28),
             "6bbc9ace898e44ae57da46a324031adb"),
    _IdxSpec("train_label", "train-labels-idx1-ubyte.gz", 2049, (60000,),
             "a25bea736e30d166cdddb491f175f624"),
    _IdxSpec("test_img", "t10k-images-idx3-ubyte.gz", 2051, (10000, 28, 28),
             "2646ac647ad5339dbf082846283269ea"),
    _IdxSpec("test_label", "t10k-labels-idx1-ubyte.gz", 2049, (10000,),
             "27ae3e4e09519cfbb04c329615203637"),
)  # fmt: skip

#: The four file names, in the order the book lists them.
MNIST_FILES = tuple(s.filename for s in _SPECS)
_KIND = {2051: "an images file (magic 2051)", 2049: "a labels file (magic 2049)"}


class _BadFileError(Exception):
    """Internal: the bytes are not the expected MNIST file; ``str()`` says what is wrong."""


def _say(verbose, msg):
    if verbose:
        print(f"fastnum.data: {msg}", file=sys.stderr, flush=True)


def _md5(raw):
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _read_idx(path, spec):
    """Decompress and fully verify one IDX file; return its payload as a writable uint8 array.

    Raises ``_BadFileError`` with a one-line description of the problem; the caller adds the
    path and the fix, which depend on where the file lives.
    """
    try:
        with gzip.open(path, "rb") as f:
            # One byte more than a good file holds: enough to notice "too long" without letting a
            # hostile or wrong file inflate without bound. Reading to the end also checks the CRC.
            data = f.read(spec.nbytes + 1)
    except EOFError:
        raise _BadFileError(
            "is a truncated gzip file (the compressed stream ends early; "
            "an interrupted copy or download?)"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise _BadFileError(f"is not a valid gzip file ({e})") from None
    except OSError as e:
        raise _BadFileError(f"could not be read ({e.strerror or e})") from None

    hlen = len(spec.header)
    if len(data) < hlen:
        raise _BadFileError(f"decompresses to only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != spec.magic:
        hint = (
            f"; it looks like {_KIND[magic]}: files swapped or misnamed?" if magic in _KIND else ""
        )
        raise _BadFileError(
            f"has IDX magic number {magic}, expected {spec.magic} for {_KIND[spec.magic]}{hint}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data[4:hlen], dtype=">u4"))
    if dims != spec.shape:
        raise _BadFileError(
            f"has header count/dimensions {dims}, expected {spec.shape} "
            f"({spec.shape[0]} {'images of 28x28' if len(dims) > 1 else 'labels'})"
        )
    if len(data) != spec.nbytes:
        size = f"more than {spec.nbytes}" if len(data) > spec.nbytes else str(len(data))
        raise _BadFileError(
            f"decompresses to {size} bytes but its header implies exactly {spec.nbytes}"
        )
    digest = _md5(data)
    if digest != spec.md5:
        raise _BadFileError(
            f"has the right header and size but wrong content: MD5 of the decompressed data is "
            f"{digest}, expected {spec.md5} (corrupted or not the standard MNIST)"
        )
    # Copy so callers get a writable array that does not pin the decompressed bytes object.
    return np.frombuffer(data, dtype=np.uint8, offset=hlen).reshape(spec.shape).copy()


def _bad_source(path, problem, in_cache):
    if in_cache:
        fix = "Delete it and call load_mnist() again to download a fresh copy."
    else:  # data_dir a field of the Message: the command line writes --data-dir
        fix = (
            "Replace it with a good copy (delete it and download it again, e.g. from "
            "{mirror}), or point {env} (or {data_dir}=) at a folder with intact files."
        )
    return MnistError(
        Message(
            "MNIST file {path} {problem}. " + fix,
            path=path,
            problem=problem,
            mirror=DEFAULT_MIRRORS[0],
            env=ENV_DATA_DIR,
        )
    )


def mnist_cache_dir(cache_dir=None):
    """Return the per-user folder where MNIST is downloaded.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Use this folder. Default: ``$FASTNUM_CACHE_DIR`` if set, else
        ``$XDG_CACHE_HOME/fastnum/mnist``, else ``~/.cache/fastnum/mnist``.

    Returns
    -------
    pathlib.Path
        The folder (it is not created here).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "fastnum" / "mnist"


def _mirror_list(mirrors):
    if mirrors is None:
        env = os.environ.get(ENV_MIRRORS, "")
        mirrors = [m for m in (s.strip() for s in env.split(",")) if m] or DEFAULT_MIRRORS
    elif isinstance(mirrors, str):
        mirrors = [mirrors]
    mirrors = [str(m) for m in mirrors]
    if not mirrors:
        raise ValueError("mirrors is empty; pass at least one base URL or None for the defaults.")
    # Base URLs name a folder; without the slash urljoin-style concatenation would drop a segment.
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _fetch(url, dest, limit, timeout):
    """Stream ``url`` into the temporary file ``dest``; raise if cut short or too big."""
    req = urllib.request.Request(url, headers={"User-Agent": "fastnum-mnist"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if length is not None and length > limit:
            raise _BadFileError(f"announces {length} bytes, more than any MNIST file ({limit})")
        got = 0
        while chunk := resp.read(_CHUNK):
            got += len(chunk)
            if got > limit:
                raise _BadFileError(f"sent more than {limit} bytes, more than any MNIST file")
            out.write(chunk)
        # http.client returns EOF rather than raising when the peer closes early, so the length
        # has to be compared here to report a cut connection as such.
        if length is not None and got != length:
            raise _BadFileError(f"connection closed after {got} of {length} bytes")
        out.flush()
        os.fsync(out.fileno())


def _download(spec, folder, mirrors, timeout, verbose):
    dest = folder / spec.filename
    failures = []
    for base in mirrors:
        url = base + spec.filename
        _say(verbose, f"downloading {url}")
        try:
            # atomic_path removes the temporary file on any exception (KeyboardInterrupt too), and
            # the real name only appears after the bytes passed the full check.
            with atomic_path(dest) as tmp:
                _fetch(url, tmp, limit=spec.nbytes + _CHUNK, timeout=timeout)
                _read_idx(tmp, spec)
        except _BadFileError as e:
            failures.append(f"{url}: {e}")
        # URLError/HTTPError/timeouts are OSError; http.client raises HTTPException for protocol
        # garbage; urllib raises ValueError for a malformed mirror URL. Anything else is a bug.
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url}: {type(e).__name__}: {e}")
        else:
            _say(verbose, f"saved {dest}")
            return dest
    tried = "\n".join(f"  - {f}" for f in failures)
    raise MnistError(
        f"Could not download {spec.filename} into {folder}; every mirror failed:\n{tried}\n"
        f"No partial file was left behind. Offline? Download the four files "
        f"{', '.join(MNIST_FILES)} (e.g. from {DEFAULT_MIRRORS[0]}) and put them in {folder}, "
        f"or set {ENV_DATA_DIR} to a folder that holds them. Other mirrors can be given with "
        f"mirrors= or {ENV_MIRRORS} (comma-separated base URLs)."
    )


def _source(data_dir, cache_dir, mirrors, verbose):
    """Resolve the source folder and make sure all four files exist there.

    Returns ``(folder, in_cache, paths)``; ``paths`` maps file name to path.
    """
    if data_dir is not None:
        folder, origin = Path(data_dir).expanduser(), "data_dir="
    elif os.environ.get(ENV_DATA_DIR):
        folder, origin = Path(os.environ[ENV_DATA_DIR]).expanduser(), f"${ENV_DATA_DIR}"
    else:
        folder, origin = mnist_cache_dir(cache_dir), None
    paths = {name: folder / name for name in MNIST_FILES}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if not missing:
        return folder, origin is None, paths

    if origin is not None:
        # A folder the user named may be shared or read-only (e.g. a course's data share), so
        # it is never downloaded into: say exactly what to put where instead.
        if folder.is_dir():
            state = f"lacks {', '.join(missing)}"
        else:
            state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise MnistError(
            f"MNIST folder {folder} (from {origin}) {state}. Put the four files "
            f"{', '.join(MNIST_FILES)} there (e.g. from {DEFAULT_MIRRORS[0]}), or fix {origin} / "
            f"unset {ENV_DATA_DIR} to let fastnum download them into "
            f"{mnist_cache_dir(cache_dir)}."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistError(
            f"Cannot create the MNIST cache folder {folder} ({e.strerror or e}). Pass a writable "
            f"cache_dir= or set {ENV_CACHE_DIR}, or set {ENV_DATA_DIR} to a folder that already "
            "holds the four files."
        ) from None
    mirror_list = _mirror_list(mirrors)
    for name in missing:
        spec = next(s for s in _SPECS if s.filename == name)
        _download(spec, folder, mirror_list, DOWNLOAD_TIMEOUT, verbose)
    return folder, True, paths


def mnist_files(data_dir=None, *, mirrors=None, cache_dir=None, verbose=False):
    """Locate the four MNIST ``.gz`` files, downloading missing ones into the cache folder.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Folder holding the files. Default: ``$FASTNUM_MNIST_DIR``, else the cache folder.
        A folder given here or by the environment variable is only read, never written.
    mirrors : sequence of str, optional
        Base URLs tried in order for missing files. Default: ``$FASTNUM_MNIST_MIRRORS``
        (comma-separated), else ``DEFAULT_MIRRORS``.
    cache_dir : str or os.PathLike, optional
        Cache folder; see `mnist_cache_dir`.
    verbose : bool, optional
        Print download progress to stderr.

    Returns
    -------
    dict of str to pathlib.Path
        File name to path, in the order of ``MNIST_FILES``. Downloaded files are verified;
        files that were already present are verified when `load_mnist` reads them.

    Raises
    ------
    MnistError
        A named folder lacks files, or a download failed on every mirror.
    """
    return _source(data_dir, cache_dir, mirrors, verbose)[2]


def _raw_arrays(data_dir, cache_dir, mirrors, verbose):
    folder, in_cache, paths = _source(data_dir, cache_dir, mirrors, verbose)
    arrays = {}
    for spec in _SPECS:
        path = paths[spec.filename]
        try:
            arrays[spec.key] = _read_idx(path, spec)
        except _BadFileError as e:
            raise _bad_source(path, e, in_cache) from None
    _say(verbose, f"read and verified the four files in {folder}")
    return arrays


def one_hot(labels, n_classes=10):
    """Return one-hot rows for integer class labels.

    Parameters
    ----------
    labels : array_like of int, shape (n,)
        Class indices in ``0 .. n_classes - 1``.
    n_classes : int, optional
        Number of classes (columns). Default 10.

    Returns
    -------
    numpy.ndarray of float32, shape (n, n_classes)
        Row ``i`` is 1 at column ``labels[i]`` and 0 elsewhere.

    Raises
    ------
    TypeError
        ``labels`` is not an integer array.
    ValueError
        ``labels`` is not 1-D, or a label is outside ``0 .. n_classes - 1``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels have dtype {labels.dtype}; pass integer class indices.")
    if labels.ndim != 1:
        raise ValueError(f"labels have shape {labels.shape}; pass a 1-D array of class indices.")
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes} must be at least 1.")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)][0]
        raise ValueError(f"label {bad} is outside 0..{n_classes - 1}.")
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def load_mnist(
    normalize=True,
    flatten=True,
    one_hot_label=False,
    data_dir=None,
    *,
    mirrors=None,
    cache_dir=None,
    verbose=False,
):
    """Load MNIST as the book's ``dataset/mnist.py`` does, from verified files.

    Parameters
    ----------
    normalize : bool, optional
        If True (default) images are float32 in [0, 1] (pixel / 255); else uint8 0..255.
    flatten : bool, optional
        If True (default) images have shape (n, 784); else (n, 1, 28, 28).
    one_hot_label : bool, optional
        If True labels are float32 one-hot rows of shape (n, 10); else (default) uint8 of
        shape (n,).
    data_dir : str or os.PathLike, optional
        Folder holding the four ``.gz`` files; only read, never written. Default:
        ``$FASTNUM_MNIST_DIR``, else the cache folder, where missing files are downloaded.
    mirrors : sequence of str, optional
        Base URLs for downloads. Default: ``$FASTNUM_MNIST_MIRRORS`` (comma-separated), else
        ``DEFAULT_MIRRORS``.
    cache_dir : str or os.PathLike, optional
        Folder for downloads; see `mnist_cache_dir`.
    verbose : bool, optional
        Print what is read and downloaded to stderr.

    Returns
    -------
    (x_train, t_train), (x_test, t_test) : tuple of tuple of numpy.ndarray
        60000 training and 10000 test samples.

    Raises
    ------
    MnistError
        A file is missing, damaged (bad gzip, header, size or MD5) or could not be downloaded.
        The message names the file and how to fix it.

    Examples
    --------
    >>> (x_train, t_train), (x_test, t_test) = load_mnist()  # doctest: +SKIP
    >>> x_train.shape, x_train.dtype, t_train[0]  # doctest: +SKIP
    ((60000, 784), dtype('float32'), 5)
    """
    raw = _raw_arrays(data_dir, cache_dir, mirrors, verbose)

    def images(x):
        if normalize:
            # Same arithmetic as the book (cast, then divide in float32) so values match exactly.
            x = x.astype(np.float32)
            x /= np.float32(255.0)
        return x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, 28, 28)

    def labels(t):
        return one_hot(t) if one_hot_label else t

    return (
        (images(raw["train_img"]), labels(raw["train_label"])),
        (images(raw["test_img"]), labels(raw["test_label"])),
    )
