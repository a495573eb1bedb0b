"""The numba kernels: which one serves which network, operation and strategy, and how to extend.

Map
---
=======================  ===========================================  ==========================
module                   serves                                       entry points
=======================  ===========================================  ==========================
``two_layer``            :class:`fastnum.network.TwoLayerNet`         ``predict_trusted``,
                         (the book's affine-sigmoid-affine-softmax;   ``loss_trusted``,
                         the gradient also with ReLU, chapter 5);     ``numerical_gradient_trusted``
                         registry ops ``numerical_gradient``,         (``STRATEGIES``: full, delta)
                         ``forward``, ``sgd_step``                    ``forward_gradient_trusted``
                                                                      (one-sided delta,
                                                                      :mod:`fastnum.estimators`)
``multilayer``           :class:`fastnum.multilayer.MultiLayerNet`    ``predict_trusted``,
                         (any depth, any activation of the table);    ``loss_trusted``,
                         registry op ``multilayer_gradient``          ``numerical_gradient_trusted``
                                                                      (``STRATEGIES``: full, delta)
``losses``               the fused softmax + cross-entropy rows that  ``softmax_cross_entropy``
                         ``two_layer`` uses; registry op              (validating: no network
                         ``softmax_cross_entropy``                    stands in front of it)
``generic``              :func:`fastnum.gradient.numerical_gradient`  ``numerical_gradient_jitted``
                         of any ``@njit`` scalar function
``_vmath``               vectorizable ``fexp``/``flog`` for the       (helpers)
                         kernels above
``layered``              :mod:`fastnum.engine`: sequential stacks of  ``engine.predict``,
                         conv, pool, affine and activation layers     ``engine.loss``,
                         (:class:`fastnum.convnet.SimpleConvNet`,     ``engine.numerical_gradient``
                         the gradient check's fast path); registry    (``_at``; full, delta);
                         op ``convolution``                           ``two_layer`` and
                                                                      ``multilayer`` are its
                                                                      fast paths
``normalization``        :mod:`fastnum.engine`'s chapter 6 layers:    (engine entry points as
                         batch norm and dropout forward, and the      for ``layered``)
                         delta gradient of dense stacks with them
                         (:class:`fastnum.multilayer.MultiLayerNet`
                         with ``use_batchnorm`` / ``use_dropout``)
=======================  ===========================================  ==========================

Strategies: ``full`` re-runs the whole forward pass of the batch for each
perturbed parameter (the book's algorithm, compiled and parallel); ``delta``
caches the unperturbed forward pass and re-evaluates only what a perturbation
moves.  Both evaluate the loss at theta +- h e_i; neither uses an analytic
derivative.

Conventions
-----------
* One validating layer.  The public networks (:mod:`fastnum._frontend`) validate
  their inputs once; nothing in this package re-validates (``losses`` excepted,
  as noted above).  Kernels never import :mod:`fastnum.reference`; the problem's
  constants (``H``, ``LOG_GUARD``) come from :mod:`fastnum.constants`.
* One naming for the trusted path: a public function or method whose name ends
  in ``_trusted`` takes validated inputs (float64 C-contiguous ``x``, int64
  labels in range, positive ``h``, a known strategy) and allocates its outputs.
  Every network method ``predict``/``loss``/``accuracy``/``numerical_gradient``/
  ``gradient`` validates and then calls its ``*_trusted`` twin, which the trainer
  calls directly.  ``_private`` ``@njit`` kernels fill preallocated arrays.
* numba options live in :mod:`fastnum._jit` only.  Results must not depend on the
  thread count: each output cell is written by one task, sums run in a fixed order.

How to add
----------
a strategy
    Write ``_<name>_strategy`` in ``two_layer`` and ``multilayer`` (same
    signature as the existing ones) and add it to each module's ``STRATEGIES``
    table.  The strategy names of :mod:`fastnum.backend` (hence the networks'
    ``strategy=`` and the CLI's ``--strategy`` choices), the registry's
    ``numba-<name>`` implementations (hence the equivalence tests and the
    benchmarks, in table order) and the report labels all derive from the tables.
an activation
    Give it a code in ``multilayer`` (next to ``SIGMOID``, ``RELU``) and a branch
    in ``multilayer._act``, then one entry in :data:`fastnum.multilayer.ACTIVATIONS`
    (NumPy forward, NumPy backward, kernel code).  ``MultiLayerNet``, the trainer
    and the CLI's ``--activation`` read that table.
an operation
    One :class:`fastnum.registry.Operation` in ``registry.COMPARISONS``: a setup
    (problem -> arguments), the NumPy reference and the kernel implementations
    (``_per_strategy`` for a gradient), a tolerance.  ``tests/test_kernels.py``
    checks it against the reference and ``benchmarks/`` times it, with no other edit.
a benchmark
    Sizes and skips live in ``benchmarks/bench_plan.py``; the implementations and
    their order come from the registry, so a new operation or strategy is timed
    without touching the benchmark code.
a layer type
    One class in :mod:`fastnum.layers` (the NumPy reference, with the book's
    attribute names) and one builder row in ``fastnum.convnet.LAYER_TYPES``; one
    row in ``fastnum.engine.LAYER_KINDS`` (output shape, batch forward, where the
    parameter names sit in the spec) plus its map kernel in ``layered``, which
    makes it usable by ``predict``, ``loss`` and the ``full`` gradient at once.
    For ``delta``, an elementwise or per-channel op joins the conv channel
    pipeline as one more code in ``layered._pipeline_step``; a layer that mixes
    channels needs its own delta kernel beside ``layered._conv_delta_task`` and a
    case in ``engine._delta_plan``.  Until then ``delta`` falls back to ``full``
    for stacks with it, which stays correct.  The gradient check recognises the
    book's layers by their attributes (:mod:`fastnum.gradcheck._stack`): a new
    kind needs one branch in ``_layer_spec`` there.
"""
