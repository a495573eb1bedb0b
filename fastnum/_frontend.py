"""What the public networks share: input validation, then NumPy or numba per call.

:class:`NetworkFrontend` goes first in a public network's bases, before its
reference class, so ``super().predict`` and friends reach the NumPy oracle.  A
subclass supplies ``sizes`` and the three ``_numba_*`` hooks that call its
trusted kernels.
"""

from __future__ import annotations

import numpy as np

from fastnum import reference
from fastnum._validate import as_float_batch, as_labels, check_step
from fastnum.backend import check_strategy, resolve_backend


class NetworkFrontend:
    """Validates inputs once, then runs the NumPy reference or the numba kernels."""

    def _init_backend(self, backend, strategy):
        self.backend = resolve_backend(backend)
        self.strategy = check_strategy(strategy)

    def _inputs(self, x, t=None):
        x = as_float_batch(x, self.sizes[0])
        if t is None:
            return x
        return x, as_labels(t, x.shape[0], self.sizes[-1])

    def predict(self, x):
        """Class probabilities for a batch.

        Parameters
        ----------
        x : array (batch, input_size)

        Returns
        -------
        ndarray (batch, output_size)
        """
        x = self._inputs(x)
        if self.backend == "numba":
            return self._numba_predict(x)
        return super().predict(x)

    def loss(self, x, t):
        """Batch-mean cross-entropy with the book's 1e-7 guard.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot

        Returns
        -------
        float
        """
        x, t = self._inputs(x, t)
        if self.backend == "numba":
            return self._numba_loss(x, t)
        return super().loss(x, t)

    def accuracy(self, x, t):
        """Fraction of samples classified correctly.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot

        Returns
        -------
        float
        """
        x, t = self._inputs(x, t)
        return float(np.mean(self.predict(x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=reference.H, strategy=None):
        """Central-difference gradient of the loss for every parameter.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot
        h : float, default 1e-4
        strategy : {"delta", "full"} or None
            Overrides the network's strategy for the numba backend.

        Returns
        -------
        dict of str to ndarray
            Gradients keyed and shaped like ``params``.
        """
        x, t = self._inputs(x, t)
        h = check_step(h)
        strategy = check_strategy(strategy or self.strategy)
        if self.backend == "numba":
            return self._numba_numerical_gradient(x, t, h, strategy)
        return super().numerical_gradient(x, t, h)

    def gradient(self, x, t):
        """Analytic backprop gradient (ignores the log guard), the oracle for gradient checks.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot

        Returns
        -------
        dict of str to ndarray
            Gradients keyed and shaped like ``params``.
        """
        x, t = self._inputs(x, t)
        return super().gradient(x, t)
