"""What the training tests share: small labelled blobs, a quick config, a quiet train(),
an interruption from the epoch callback."""

from __future__ import annotations

import numpy as np

from fastnum.train import TrainConfig, train


def blob_data(seed, dtype=np.float64, label_dtype=np.int64, dim=6, classes=4):
    """Gaussian blobs around ``classes`` centres in ``dim``-D: (train 300, test 100) pairs."""
    rng = np.random.default_rng(seed)
    centers = rng.random((classes, dim)) * 2

    def sample(n):
        labels = rng.integers(0, classes, n)
        x = centers[labels] + 0.15 * rng.standard_normal((n, dim))
        return x.astype(dtype), labels.astype(label_dtype)

    return sample(300), sample(100)


def small(**kw):
    """A config quick enough for tests: 30 iterations of 30 samples, 10 per epoch, NumPy."""
    base = dict(
        grad="backprop",
        iters=30,
        batch_size=30,
        lr=1.0,
        hidden_size=5,
        weight_init_std=0.5,
        backend="numpy",
    )
    return TrainConfig(**{**base, **kw})


class SimulatedInterruptError(Exception):
    """Simulates an interruption from the epoch callback."""


def stop_at_epoch(n):
    """An epoch callback that interrupts the run when epoch ``n`` ends."""

    def callback(info):
        if info["epoch"] == n:
            raise SimulatedInterruptError(info["iteration"])

    return callback


def quiet_train(config, data=None, out_dir=None, **kw):
    """train() without progress bar or log lines."""
    return train(config, data, out_dir, progress=False, log=None, **kw)
