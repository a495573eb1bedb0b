"""The public two-layer network: validated inputs, and a backend switch for the heavy parts."""

from __future__ import annotations

import numpy as np

from fastnum import reference
from fastnum._validate import as_float_batch, as_labels, check_step
from fastnum.backend import check_strategy, resolve_backend


class TwoLayerNet(reference.TwoLayerNet):
    """The book's 784-50-10 style network, with numba kernels behind the same methods.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        Layer widths (the book uses 784, 50, 10).
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian initial weights; biases start at zero.
    seed : int or None
        Seed for the initial weights, so that a run is reproducible.
    backend : {"auto", "numba", "numpy"} or None
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        weight_init_std=0.01,
        seed=None,
        backend=None,
        strategy="delta",
    ):
        for name, size in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("output_size", output_size)):
            if int(size) != size or size < 1:
                raise ValueError(f"{name}={size!r} must be a positive integer.")
        if output_size < 2:
            raise ValueError(f"output_size={output_size} must be at least 2 for a softmax.")
        super().__init__(int(input_size), int(hidden_size), int(output_size), weight_init_std, seed)
        self.backend = resolve_backend(backend)
        self.strategy = check_strategy(strategy)

    @property
    def sizes(self):
        """(input_size, hidden_size, output_size)."""
        return self.params["W1"].shape + (self.params["W2"].shape[1],)

    def _inputs(self, x, t=None):
        x = as_float_batch(x, self.sizes[0])
        if t is None:
            return x
        return x, as_labels(t, x.shape[0], self.sizes[2])

    def _kernel_params(self):
        from fastnum.kernels import two_layer

        return two_layer, two_layer.as_params(self.params)

    def predict(self, x):
        """Class probabilities, shape (batch, output_size)."""
        x = self._inputs(x)
        if self.backend == "numba":
            kernels, params = self._kernel_params()
            return kernels.predict_trusted(params, x)
        return super().predict(x)

    def loss(self, x, t):
        """Batch-mean cross-entropy with the book's 1e-7 guard."""
        x, t = self._inputs(x, t)
        if self.backend == "numba":
            kernels, params = self._kernel_params()
            return kernels.loss_trusted(params, x, t)
        return super().loss(x, t)

    def accuracy(self, x, t):
        """Fraction of samples classified correctly (integer or one-hot labels)."""
        x, t = self._inputs(x, t)
        return float(np.mean(self.predict(x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=reference.H, strategy=None):
        """Central-difference gradient of the loss for W1, b1, W2, b2.

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
            Gradients with the shapes of ``params``.
        """
        x, t = self._inputs(x, t)
        h = check_step(h)
        if self.backend == "numba":
            kernels, params = self._kernel_params()
            strategy = check_strategy(strategy or self.strategy)
            return kernels.numerical_gradient_trusted(params, x, t, h, strategy)
        return super().numerical_gradient(x, t, h)

    def gradient(self, x, t):
        """Analytic backprop gradient (the oracle for gradient checks)."""
        x, t = self._inputs(x, t)
        return super().gradient(x, t)
