"""The public two-layer network: validated inputs, and a backend switch for the heavy parts."""

from __future__ import annotations

from fastnum import reference
from fastnum._frontend import NetworkFrontend
from fastnum._validate import check_int, check_positive
from fastnum.backend import DEFAULT_STRATEGY


class TwoLayerNet(NetworkFrontend, reference.TwoLayerNet):
    """The book's 784-50-10 style network, with numba kernels behind the same methods.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        Layer widths (the book uses 784, 50, 10); integers (not bool or float),
        ``output_size`` at least 2.
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian initial weights, finite and > 0;
        biases start at zero.
    seed : int or None
        Seed for the initial weights, so that a run is reproducible.
    backend : {"auto", "numba", "numpy"} or None
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.

    Notes
    -----
    Every public method checks ``params`` first (keys, shapes chaining, float
    dtype, finite values), so arrays replaced after construction are checked
    too.  float16 and float32 parameters and inputs are computed in float64 on
    both backends, and results are float64.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        weight_init_std=0.01,
        seed=None,
        backend=None,
        strategy=DEFAULT_STRATEGY,
    ):
        input_size = check_int("input_size", input_size, 1, "the book uses 784.")
        hidden_size = check_int("hidden_size", hidden_size, 1, "the book uses 50.")
        output_size = check_int(
            "output_size", output_size, 2, "a softmax needs at least 2 classes; the book uses 10."
        )
        weight_init_std = check_positive("weight_init_std", weight_init_std, "the book uses 0.01.")
        super().__init__(input_size, hidden_size, output_size, weight_init_std, seed)
        self._init_backend(backend, strategy)

    @property
    def param_names(self):
        """("W1", "b1", "W2", "b2")."""
        return self.PARAM_NAMES

    @property
    def sizes(self):
        """(input_size, hidden_size, output_size)."""
        return self.params["W1"].shape + (self.params["W2"].shape[1],)

    #: The layers as a stack of :mod:`fastnum.engine`, which runs them on the
    #: hand-written two-layer kernels (its fast path for exactly this network).
    stack = (("affine", "W1", "b1"), ("sigmoid",), ("affine", "W2", "b2"))
