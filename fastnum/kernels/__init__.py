"""The numba kernels: one family behind one dispatcher, and where a new piece goes.

Every network, the gradient check, the registry and the benchmarks reach these
kernels through :mod:`fastnum.engine`, the only dispatcher: it owns the layer
table (``LAYER_KINDS``), the strategy table (``STRATEGIES``), the delta kernels
(``DELTA_KERNELS``) and the fast paths (``FAST_PATHS``); the functions that the
last two tables' rows name, which call each kernel, are in
:mod:`fastnum._engine_paths`.  How fast each path is:
the benchmark report, ``docs/benchmarks/report.md``.

Map
---
====================  ==========================================  ============================
module                job                                         used by
====================  ==========================================  ============================
``_blocks``           the shared building blocks: one op-code     every module below
                      table (activations and pipeline steps),
                      ``_act``, the affine loop, the ordered
                      sum, the zeroing of work arrays (kernels
                      never call ``np.zeros``: it compiles
                      slowly); non-zero lists, task counts,
                      dense packing and offsets (Python side)
``layered``           a layer stack's batch forward (conv, pool,  ``engine``: ``predict``,
                      activation, affine), the delta cache, and   ``loss``, ``full``, the
                      ``_propagate`` (re-evaluate the dense tail  delta caches
                      from a changed layer); the ops table's
                      column names
``dense_delta``       delta of a perturbed affine layer           ``engine`` delta
``conv_delta``        delta of a perturbed convolution (the       ``engine`` delta
                      channel pipeline pushed from dirty
                      positions)
``dense_relu``        delta of dense ReLU stacks of two or more   ``engine`` delta (first
                      hidden layers: cached logits plus a         row of ``DELTA_KERNELS``)
                      Jacobian column where no corner can be
                      crossed, the exact layers elsewhere (its
                      task kernels in ``dense_relu_tasks``)
``conv_stack``        delta of deep convolution stacks (several   ``engine`` delta, planned
                      convolutions, poolings, dropout; the        by ``_conv_stack_plan``
                      book's chapter 8 net): every stage cached,
                      a perturbed channel's change pushed
                      through the later layers; the linear
                      shortcut of ``conv relu pool affine``
``conv_stack_ops``    its ops table (kinds, named columns) and    ``conv_stack``,
                      each op's step on a change                  ``_conv_stack_plan``
``normalization``     chapter 6: batch norm and dropout forward,  ``engine`` (``LAYER_KINDS``
                      and the delta of dense stacks with them     rows, ``DELTA_KERNELS``)
``two_layer``         the book's two-layer net, hand-written      ``engine.FAST_PATHS`` and
                      (sigmoid; ReLU for the gradient): forward,  ``engine.forward_gradient``
                      full, and the strategy table                (one-sided delta)
``two_layer_delta``   its delta strategy (one evaluation per      ``two_layer``
                      distinct pixel value)
``dense_full``        ``full`` of a dense stack of one hidden     ``engine.FAST_PATHS``
                      activation, parallel over parameters
``losses``            fused softmax + cross-entropy rows          every loss above; registry
                                                                  op ``softmax_cross_entropy``
``generic``           :func:`fastnum.gradient.numerical_gradient` users' own functions
                      of any ``@njit`` scalar function
``_vmath``            vectorizable ``fexp``/``flog``              the kernels above
====================  ==========================================  ============================

Strategies: ``full`` re-runs the whole forward pass of the batch for each
perturbed parameter (the book's algorithm, compiled); ``delta`` caches the
unperturbed forward pass and re-evaluates only what a perturbation moves.  Both
evaluate the loss at theta +- h e_i; neither uses an analytic derivative.

Conventions
-----------
* One validating layer.  The public networks (:mod:`fastnum._frontend`) validate
  their inputs once; nothing in this package re-validates (``losses`` excepted: its
  registry entry point has no network in front of it).  Kernels never import
  :mod:`fastnum.reference`; the problem's constants (``H``, ``LOG_GUARD``) come
  from :mod:`fastnum.constants`.
* ``*_trusted`` Python entry points take validated inputs and allocate their
  outputs; ``_private`` ``@njit`` kernels fill preallocated arrays.  Long kernels
  take grouped arguments (NamedTuples such as ``layered.DenseTail``,
  ``conv_delta.ConvBlock``) and are split at their seams.
* numba options live in :mod:`fastnum._jit` only.  Results must not depend on the
  thread count: each output cell is written by one task, sums run in a fixed order.
  ``scripts/bitwise_gradients.py`` records every engine result and compares a
  refactor's bit for bit.

Where a new piece goes
----------------------
an activation
    A name in ``_blocks.OP_NAMES`` (its code follows; no other code can collide)
    and a branch in ``_blocks._act``; a name -> code entry in
    ``_blocks.ACTIVATION_CODES``; one row in :data:`fastnum.activations.ACTIVATIONS`
    (NumPy forward and backward); one ``LAYER_KINDS`` row in
    :mod:`fastnum._engine_layers` (like ``"relu"``).  Every kernel then computes it
    (forward, ``full``, both delta kernels, the conv pipeline).
a layer type
    One class in :mod:`fastnum.layers` (the NumPy reference, with the book's
    attribute names) and one builder row in ``fastnum.convnet.LAYER_TYPES``; one
    ``LAYER_KINDS`` row (output shape, batch forward, parameter slots) and its batch
    kernel in ``layered``, which makes it usable by ``predict``, ``loss`` and
    ``full`` at once.  For ``delta``: an elementwise or per-channel step joins the
    conv pipeline (a name in ``_blocks.OP_NAMES``, a case in
    ``conv_delta._pipeline_step``, a row in ``_engine_delta._ops_table``); a layer
    that mixes channels needs its own delta kernel (a module here) and a row in
    ``engine.DELTA_KERNELS`` (a plan function: which stacks it covers; a run
    function; both in :mod:`fastnum._engine_paths`).  Until then ``delta`` falls back
    to ``full`` for stacks with it (the ``fallback`` column of ``engine.STRATEGIES``).
    The gradient check recognises the book's layers by their attributes
    (:mod:`fastnum.gradcheck._stack`): a new kind needs one branch in ``_layer_spec``
    there.
a strategy
    One row in ``engine.STRATEGIES``: its gradient function (returns None for a
    stack it does not cover) and its fallback (None: such a stack is refused with
    ``engine.StrategyNotImplementedError``).  The backend's names (the networks'
    ``strategy=``, the CLI's ``--strategy``), the registry's ``numba-<name>``
    implementations (hence the equivalence tests and the benchmarks) derive from it.
    A fast path that also computes it lists it in its ``FAST_PATHS`` row.
a faster kernel for some stacks
    A module here and a row in ``engine.FAST_PATHS`` (the strategies it computes,
    whether it serves sampled gradients, a function in :mod:`fastnum._engine_paths`
    that returns None for a stack it does not cover), or a row in
    ``engine.DELTA_KERNELS`` for a delta kernel.  Any new kernel must be reached by a
    network of ``fastnum.warmup.NETWORKS`` (what ``fastnum warmup`` compiles); the slow
    test ``tests/test_warmup.py::test_warmup_compiles_every_kernel`` names any that is
    not.
an operation or a benchmark
    One :class:`fastnum.registry.Operation` in ``registry.COMPARISONS`` (setup, the
    NumPy reference, the implementations through the engine or a public network, a
    tolerance); ``tests/test_kernels.py`` checks it and ``benchmarks/`` times it;
    sizes and skips live in ``benchmarks/bench_plan.py``.
"""
