"""The numba kernels: which one serves which network, operation and strategy, and how to extend.

Map
---
=======================  ===========================================  ==========================
module                   serves                                       entry points
=======================  ===========================================  ==========================
``two_layer``            :class:`fastnum.network.TwoLayerNet`         ``predict_trusted``,
                         (the book's affine-sigmoid-affine-softmax);  ``loss_trusted``,
                         registry ops ``numerical_gradient``,         ``numerical_gradient_trusted``
                         ``forward``, ``sgd_step``                    (``STRATEGIES``: full, delta)
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
``fastnum.engine``       (planned) layer stacks: conv, pool, affine,  see ENGINE_CONTRACT;
                         activations; uses the two modules above as   ``two_layer``/``multilayer``
                         fast paths for the stacks they cover         stay its fast paths
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
    In :mod:`fastnum.layers` (the NumPy reference) and ``fastnum.engine`` (the
    stack kernels, ENGINE_CONTRACT.md); the hand-written modules here remain the
    engine's fast paths for the stacks they cover.
"""
