"""What the public networks share: input validation, then NumPy or numba per call.

:class:`NetworkFrontend` goes first in a public network's bases, before its
reference class, so ``super().predict`` and friends reach the NumPy oracle.  A
subclass supplies ``sizes`` and the three ``_numba_*`` hooks that call its
trusted kernels.

Each public method validates and then calls its ``*_trusted`` twin, which
trusts its inputs (float64 C-contiguous ``x``, int64 labels ``t`` in range; for
the gradient also a positive ``h`` and a known ``strategy``).  The trainer
validates its data once and calls the twins, so a step does not re-check the
same batch for every call.  The kernels' entry points follow the same naming.
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
        return self.predict_trusted(self._inputs(x))

    def predict_trusted(self, x):
        """:meth:`predict` for an already validated ``x``."""
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
        return self.loss_trusted(*self._inputs(x, t))

    def loss_trusted(self, x, t):
        """:meth:`loss` for already validated ``x`` and integer labels ``t``."""
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
        return self.accuracy_trusted(*self._inputs(x, t))

    def accuracy_trusted(self, x, t):
        """:meth:`accuracy` for already validated ``x`` and integer labels ``t``."""
        return float(np.mean(self.predict_trusted(x).argmax(axis=1) == t))

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
        return self.numerical_gradient_trusted(x, t, check_step(h),
                                               check_strategy(strategy or self.strategy))

    def numerical_gradient_trusted(self, x, t, h, strategy):
        """:meth:`numerical_gradient` for validated inputs, positive ``h``, known strategy."""
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
        return self.gradient_trusted(*self._inputs(x, t))

    def gradient_trusted(self, x, t):
        """:meth:`gradient` for already validated ``x`` and integer labels ``t``."""
        return super().gradient(x, t)
