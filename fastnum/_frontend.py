"""What the public networks share: validation, then NumPy or numba per call.

:class:`NetworkFrontend` goes first in a public network's bases, before its
reference class, so that ``super()`` reaches the NumPy oracle.  A subclass
supplies ``param_names`` and ``stack``, its layers as :mod:`fastnum.engine` specs:
the numba backend hands that stack to the engine, which picks the kernel.

Each public method validates, then calls its ``*_trusted`` twin (the naming the
kernels' entry points share), which trusts its inputs (float64 C-contiguous
``x``, int64 labels ``t`` in range, and parameters as
:func:`~fastnum._validate.as_network_params` returns them).  The public methods
check the parameters on every call (shapes chain, float dtype, finite): they may
have been replaced or edited since the last call, and a wrong shape must never
reach a kernel that indexes with the sizes it is given.
The check is one pass over the parameters, negligible next to a gradient.
float16 and float32 parameters are computed in float64 on every backend and
the results are float64; the network's own arrays are left as they are.

The trainer validates its data once and calls the twins without ``params``,
which then use ``self.params`` as they are (float64, built by the network).
"""

from __future__ import annotations

import copy

import numpy as np

from fastnum._validate import as_float_batch, as_labels, as_network_params, check_step
from fastnum.backend import check_strategy, resolve_backend
from fastnum.constants import H


class NetworkFrontend:
    """Validates parameters and inputs on each public call, then runs NumPy or numba."""

    def _init_backend(self, backend, strategy):
        self.backend = resolve_backend(backend)
        self.strategy = check_strategy(strategy)

    def _checked(self, x, t=None):
        """(params, x) or (params, x, t), all validated; the parameters first, since
        the expected input and output widths come from them."""
        names = self.param_names
        params = as_network_params(self.params, names)
        x = as_float_batch(x, params[names[0]].shape[0])
        if t is None:
            return params, x
        return params, x, as_labels(t, x.shape[0], params[names[-1]].shape[0])

    def _oracle(self, params):
        """``super()`` of this network (the NumPy reference) seeing ``params``.

        A shallow copy carries converted parameters, so the reference never
        writes into the caller's dict and concurrent calls do not interfere.
        """
        if params is None or params is self.params:
            return super()
        shadow = copy.copy(self)
        shadow.params = params
        return super(NetworkFrontend, shadow)

    # The numba backend: the engine runs the network's stack on the fastest kernel
    # that covers it (imported on first use, so that importing fastnum compiles nothing).

    def _numba_predict(self, x, params):
        from fastnum import engine

        return engine.predict(self.stack, params, x)

    def _numba_loss(self, x, t, params):
        from fastnum import engine

        return engine.loss(self.stack, params, x, t)

    def _numba_numerical_gradient(self, x, t, h, strategy, params, scheduler=None):
        from fastnum.distributed import gradient_function

        return gradient_function(scheduler)(self.stack, params, x, t, h, strategy)

    def predict(self, x):
        """Class probabilities for a batch.

        Parameters
        ----------
        x : array (batch, input_size)

        Returns
        -------
        ndarray (batch, output_size)
        """
        params, x = self._checked(x)
        return self.predict_trusted(x, params)

    def predict_trusted(self, x, params=None):
        """:meth:`predict` for a validated ``x`` (and ``params``, default ``self.params``)."""
        if self.backend == "numba":
            return self._numba_predict(x, self.params if params is None else params)
        return self._oracle(params).predict(x)

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
        params, x, t = self._checked(x, t)
        return self.loss_trusted(x, t, params)

    def loss_trusted(self, x, t, params=None):
        """:meth:`loss` for validated ``x``, integer labels ``t`` and ``params``."""
        if self.backend == "numba":
            return self._numba_loss(x, t, self.params if params is None else params)
        return self._oracle(params).loss(x, t)

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
        params, x, t = self._checked(x, t)
        return self.accuracy_trusted(x, t, params)

    def accuracy_trusted(self, x, t, params=None):
        """:meth:`accuracy` for validated ``x``, integer labels ``t`` and ``params``."""
        return float(np.mean(self.predict_trusted(x, params).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=H, strategy=None, scheduler=None):
        """Central-difference gradient of the loss for every parameter.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot
        h : float, default 1e-4
            At least :data:`fastnum._validate.MIN_STEP` (1e-12): below that the
            float64 rounding of the loss swamps the difference.
        strategy : {"delta", "full"} or None
            Overrides the network's strategy for the numba backend.
        scheduler : str, distributed.Client or cluster, optional
            Compute the gradient in parameter blocks on a Dask cluster
            (:mod:`fastnum.distributed`; ``"local"`` for an in-process one).  The
            result equals the one-process gradient.  Default: the network's
            ``scheduler`` attribute, None (this process) unless set.

        Returns
        -------
        dict of str to ndarray
            float64 gradients keyed and shaped like ``params`` (float16/float32
            parameters are perturbed and evaluated in float64).
        """
        params, x, t = self._checked(x, t)
        return self.numerical_gradient_trusted(
            x, t, check_step(h), check_strategy(strategy or self.strategy), params, scheduler
        )

    def numerical_gradient_trusted(self, x, t, h, strategy, params=None, scheduler=None):
        """:meth:`numerical_gradient` for validated inputs, positive ``h``, known strategy."""
        # The trainer calls this method: a scheduler set on the network reaches every step.
        scheduler = scheduler if scheduler is not None else getattr(self, "scheduler", None)
        if self.backend == "numba":
            params = self.params if params is None else params
            if scheduler is None:  # subclasses' overrides need not know about schedulers
                return self._numba_numerical_gradient(x, t, h, strategy, params)
            return self._numba_numerical_gradient(x, t, h, strategy, params, scheduler)
        if scheduler is not None:
            raise ValueError(
                f"scheduler={scheduler!r} runs the engine's numba kernels on the workers, but "
                "this network's backend is 'numpy'; use backend='numba' (or no scheduler)."
            )
        # The reference perturbs the arrays it is given in place: give it copies, so
        # that another thread using this network never sees a perturbed parameter.
        params = {k: np.array(v) for k, v in (self.params if params is None else params).items()}
        return self._oracle(params).numerical_gradient(x, t, h)

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
        params, x, t = self._checked(x, t)
        return self.gradient_trusted(x, t, params)

    def gradient_trusted(self, x, t, params=None):
        """:meth:`gradient` for validated ``x``, integer labels ``t`` and ``params``."""
        return self._oracle(params).gradient(x, t)


class SampledGradient:
    """``numerical_gradient_at`` for the convolutional networks, whose whole gradient
    has hundreds of thousands of entries: central differences at chosen ones."""

    def _gradient_masks(self, batch_size):
        """The dropout masks every evaluation of one gradient shares (None: no dropout)."""
        return None

    def _checked_indices(self, indices):
        """``numerical_gradient_at``'s indices as int64 arrays, each checked against its
        parameter (a KeyError or ValueError naming the parameter and the valid range)."""
        checked = {}
        for name, flat in indices.items():
            if name not in self.params:
                raise KeyError(f"indices names {name!r}; parameters are {self.param_names}.")
            flat, size = np.asarray(flat), self.params[name].size
            if (
                flat.ndim != 1
                or flat.dtype.kind not in "iu"
                or (flat.size and (flat.min() < 0 or flat.max() >= size))
            ):
                raise ValueError(
                    f"indices[{name!r}] must be a 1-D integer array of flat indices in "
                    f"0..{size - 1} (params[{name!r}] has shape {self.params[name].shape})."
                )
            checked[name] = np.ascontiguousarray(flat, dtype=np.int64)
        return checked

    def numerical_gradient_at(self, x, t, indices, h=H, strategy=None):
        """Central-difference gradient at chosen entries of the parameters.

        A network with dropout draws one new set of masks for all of them.

        Parameters
        ----------
        x : array (batch, C, H, W)
        t : array (batch,) of int labels, or (batch, output_size) one-hot
        indices : dict of str to array of int
            Flat indices into ``params[name]`` for each parameter to sample.
        h : float, default 1e-4
        strategy : {"delta", "full"} or None
            Overrides the network's strategy for the numba backend.

        Returns
        -------
        dict of str to ndarray
            For each name in ``indices``, the 1-D gradient at those indices.
        """
        params, x, t = self._checked(x, t)
        h, strategy = check_step(h), check_strategy(strategy or self.strategy)
        checked = self._checked_indices(indices)
        if self.backend == "numba":
            from fastnum import engine

            masks = self._gradient_masks(len(x))
            return engine.numerical_gradient_at(
                self.stack, params, x, t, checked, h, strategy, masks=masks
            )
        # The reference perturbs what it is given in place: copies keep self.params intact.
        return self._oracle({k: v.copy() for k, v in params.items()}).numerical_gradient_at(
            x, t, checked, h
        )
