"""The data of a training run: MNIST or the caller's arrays, subset, validated, fingerprinted.

:func:`prepare_data` runs once before training, so the steps can use the networks'
trusted methods on rows of validated arrays; the fingerprint in ``info`` lets a resumed
run check that it trains on the same data.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from fastnum._validate import ParameterError, as_float_batch, as_image_batch, as_labels
from fastnum.train_nets import NETS

__all__ = ["MAX_CLASSES", "MNIST_CLASSES", "TrainData", "prepare_data"]

MNIST_CLASSES = 10
MAX_CLASSES = 65536  # a label beyond this is a data bug, not a class index


class TrainData(NamedTuple):
    """Validated training and test sets, the class count and what identifies them."""

    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    n_classes: int
    info: dict  # sizes and a content hash, checked on resume


def _n_classes(t_train):
    t = np.asarray(t_train)
    if t.ndim == 2 and t.shape[1] > 1:  # one-hot
        return t.shape[1]
    finite = t[np.isfinite(t)] if t.dtype.kind == "f" else t
    if t.dtype.kind not in "iuf" or finite.size == 0:
        return 2  # as_labels reports the real problem
    top = int(finite.max()) + 1
    if top > MAX_CLASSES:
        raise ValueError(
            f"t_train contains label {finite.max()}; labels must be class indices "
            f"0..n_classes-1 (at most {MAX_CLASSES} classes)."
        )
    return max(top, 2)


def _first(a, size, name, option):
    a = np.asarray(a)
    n = a.shape[0] if a.ndim else 0
    if size is not None and size > n:
        raise ParameterError(
            option,
            "{name}={value} is larger than the {n} samples of {of}; use {name} {n} or less.",
            value=size,
            n=n,
            of=name,
        )
    return a if size is None else a[:size]


def _fingerprint(*arrays):
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return digest.hexdigest()


def prepare_data(config, data, data_dir):
    """Load (if needed), subset and validate the data of a run of ``config``.

    Parameters
    ----------
    config : fastnum.train_config.TrainConfig
    data : ((x_train, t_train), (x_test, t_test)) or None
        None loads MNIST (flat rows, or images for the networks that take them).
    data_dir : str or Path or None
        MNIST folder for ``load_mnist`` when ``data`` is None.

    Returns
    -------
    TrainData
    """
    images = NETS[config.net].images
    if data is None:
        from fastnum.data import load_mnist  # lazy: keeps this module importable without it

        data = load_mnist(
            normalize=True,
            flatten=not images,
            one_hot_label=False,
            data_dir=data_dir,
        )
        n_classes = MNIST_CLASSES
    else:
        n_classes = None
    try:
        (x_train, t_train), (x_test, t_test) = data
    except (TypeError, ValueError):
        raise ValueError(
            "data must be ((x_train, t_train), (x_test, t_test)), "
            "as fastnum.data.load_mnist returns."
        ) from None
    n_classes = n_classes or _n_classes(t_train)
    if images:  # (N, C, H, W), validated by the network's checks
        x_train = np.asarray(_first(x_train, config.train_size, "x_train", "train_size"))
        if x_train.ndim != 4:
            raise ValueError(
                f"x_train has shape {x_train.shape}; net={config.net!r} needs images "
                "(N, C, H, W), e.g. load_mnist(flatten=False)."
            )
        x_train = as_image_batch(x_train, x_train.shape[1:], name="x_train")
        x_test = as_image_batch(
            _first(x_test, config.test_size, "x_test", "test_size"),
            x_train.shape[1:],
            name="x_test",
        )
    else:
        x_train = as_float_batch(
            _first(x_train, config.train_size, "x_train", "train_size"), name="x_train"
        )
        x_test = as_float_batch(
            _first(x_test, config.test_size, "x_test", "test_size"), x_train.shape[1], name="x_test"
        )
    t_train = as_labels(
        _first(t_train, config.train_size, "t_train", "train_size"),
        len(x_train),
        n_classes,
        name="t_train",
    )
    t_test = as_labels(
        _first(t_test, config.test_size, "t_test", "test_size"),
        len(x_test),
        n_classes,
        name="t_test",
    )
    if config.batch_size > len(x_train):
        raise ParameterError(
            "batch_size",
            "{name}={value} is larger than the training set ({n} samples); use {name} {n} "
            "or less, or a larger {train_size}.",
            value=config.batch_size,
            n=len(x_train),
        )
    info = {
        "train_size": len(x_train),
        "test_size": len(x_test),
        "n_features": x_train[0].size,
        "n_classes": n_classes,
        "sha256": _fingerprint(x_train, t_train, x_test, t_test),
    }
    return TrainData(x_train, t_train, x_test, t_test, n_classes, info)
