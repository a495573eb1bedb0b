"""The public two-layer network: validated inputs, and a backend switch for the heavy parts."""

from __future__ import annotations

from fastnum import reference
from fastnum._frontend import NetworkFrontend


class TwoLayerNet(NetworkFrontend, reference.TwoLayerNet):
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
        self._init_backend(backend, strategy)

    @property
    def sizes(self):
        """(input_size, hidden_size, output_size)."""
        return self.params["W1"].shape + (self.params["W2"].shape[1],)

    # The numba hooks of NetworkFrontend; inputs arrive validated.  Parameters are
    # packed on every call so that in-place updates and replaced arrays are seen.

    def _numba_predict(self, x):
        from fastnum.kernels import two_layer

        return two_layer.predict_trusted(two_layer.as_params(self.params), x)

    def _numba_loss(self, x, t):
        from fastnum.kernels import two_layer

        return two_layer.loss_trusted(two_layer.as_params(self.params), x, t)

    def _numba_numerical_gradient(self, x, t, h, strategy):
        from fastnum.kernels import two_layer

        return two_layer.numerical_gradient_trusted(two_layer.as_params(self.params), x, t, h,
                                                    strategy)
