"""The contract: every numba kernel computes what the NumPy reference computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastnum import backend, constants, engine, reference
from fastnum._jit import JIT_ENABLED, get_num_threads, set_num_threads
from fastnum.kernels import _blocks, losses, two_layer, two_layer_delta
from fastnum.kernels._vmath import SMALL_EXP_BOUND, fexp, fexp_small, flog, flog_guarded
from fastnum.network import TwoLayerNet
from fastnum.registry import COMPARISONS, make_problem, max_errors, numba_impl
from tests._backends import on_kernels

# Shapes chosen to be multiples of nothing, plus the degenerate ones (batch 1, hidden 1).
ODD_SHAPES = [(1, 5, 1, 2), (3, 7, 2, 3), (5, 13, 3, 10), (9, 11, 7, 4)]  # batch, in, hidden, out


def sparse_batch(rng, batch, features, zero_fraction=0.6):
    """Random inputs in [0, 1) with about ``zero_fraction`` exact zeros, like MNIST."""
    x = rng.random((batch, features))
    x[x < zero_fraction] = 0.0
    return x


def random_problem(batch, features, hidden, out, seed):
    rng = np.random.default_rng(seed)
    x = sparse_batch(rng, batch, features)
    t = rng.integers(0, out, batch)
    return make_problem(x, t, hidden_size=hidden, seed=seed, weight_init_std=0.7, output_size=out)


@pytest.fixture(scope="module")
def mnist_batch(mnist_source_dir):
    """A real MNIST batch; smaller when kernels run as plain Python."""
    from fastnum.data import load_mnist

    (x, t), _ = load_mnist(data_dir=mnist_source_dir)
    batch = 100 if JIT_ENABLED else 3
    return x[:batch], t[:batch]


def kernel_net(params):
    """A public TwoLayerNet on the numba kernels, carrying copies of ``params``."""
    W1, W2 = params["W1"], params["W2"]
    net = on_kernels(TwoLayerNet(W1.shape[0], W1.shape[1], W2.shape[1], backend="numpy"))
    net.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    return net


def check_operation(op, problem, skip=()):
    """Every implementation of ``op`` (but ``skip``) against the reference result, computed once."""
    ref_ = op.implementations[op.reference](*op.args(op.reference, problem))
    others = {
        name: impl
        for name, impl in op.implementations.items()
        if name != op.reference and name not in skip
    }
    assert others, f"{op.name} has nothing to compare with its reference"
    for name, impl in others.items():
        comp_ = impl(*op.args(name, problem))
        abs_err, rel_err = max_errors(ref_, comp_)
        if name in op.yardsticks:
            assert rel_err <= op.yardsticks[name], (op.name, name, rel_err)
        else:
            assert abs_err <= op.atol or rel_err <= op.rtol, (op.name, name, abs_err, rel_err)


@pytest.mark.parametrize("op_name", sorted(COMPARISONS))
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "b{}-d{}-h{}-k{}".format(*s))
def test_registry_operations_match_reference_on_odd_shapes(op_name, shape):
    check_operation(COMPARISONS[op_name], random_problem(*shape, seed=sum(shape)))


@pytest.mark.parametrize("op_name", sorted(COMPARISONS))
def test_registry_operations_match_reference_on_mnist(op_name, mnist_batch):
    x, t = mnist_batch
    hidden = 10 if JIT_ENABLED else 2
    # "book-float32" is the reference's own loop on float32 images: the odd shapes check
    # it, and at this size it would repeat the slowest call of the suite (~20 s).
    check_operation(
        COMPARISONS[op_name], make_problem(x, t, hidden_size=hidden, seed=3), skip=("book-float32",)
    )


@pytest.mark.parametrize("hidden", [(3, 7), (7, 1, 3)], ids=lambda h: "h" + "x".join(map(str, h)))
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_registry_multilayer_gradient_on_deeper_networks(hidden, activation):
    rng = np.random.default_rng(len(hidden))
    x = sparse_batch(rng, 5, 9)
    t = rng.integers(0, 4, 5)
    problem = make_problem(
        x, t, hidden_size=hidden, seed=1, weight_init_std=0.7, output_size=4, activation=activation
    )
    assert problem.label == "b5-h" + "x".join(map(str, hidden))
    # Non-zero biases keep relu's pre-activations off its kink at exactly 0, where a
    # central difference (slope 1/2) and backprop (slope 0) legitimately disagree.
    for k in problem.param_names[1::2]:
        problem.params[k][...] = rng.normal(0, 0.5, problem.params[k].shape)
    check_operation(COMPARISONS["multilayer_gradient"], problem)


@pytest.mark.slow
def test_book_network_gradient_matches_reference(mnist_source_dir):
    """The book's 784-50-10 on a batch of 100: the reference alone takes ~10 s."""
    from fastnum.data import load_mnist

    (x, t), _ = load_mnist(data_dir=mnist_source_dir)
    problem = make_problem(x[:100], t[:100], hidden_size=50, seed=0)
    net = reference.TwoLayerNet(784, 50, 10, seed=0)
    ref_ = net.numerical_gradient(problem.x, problem.t)
    comp_ = kernel_net(net.params).numerical_gradient(problem.x, problem.t, strategy="delta")
    assert max_errors(ref_, comp_)[0] <= 1e-9


@pytest.mark.parametrize("strategy", backend.STRATEGIES)
def test_public_gradient_accepts_float32_noncontiguous_and_one_hot(strategy):
    rng = np.random.default_rng(7)
    wide = sparse_batch(rng, 4, 22).astype(np.float32)
    x = wide[:, ::2]  # non-contiguous float32 view, 11 features
    assert not x.flags.c_contiguous
    labels = np.array([0, 2, 1, 2])
    one_hot = np.eye(3)[labels]
    net = reference.TwoLayerNet(11, 3, 3, weight_init_std=0.5, seed=1)
    ref_ = net.numerical_gradient(x.astype(np.float64), labels)
    for t in (labels, one_hot):
        comp_ = kernel_net(net.params).numerical_gradient(x, t, strategy=strategy)
        assert max_errors(ref_, comp_)[0] <= 1e-9
        assert {k: v.shape for k, v in comp_.items()} == {k: v.shape for k, v in ref_.items()}


@pytest.mark.parametrize("strategy", backend.STRATEGIES)
def test_numerical_gradient_agrees_with_backprop(strategy, mnist_batch):
    x, t = mnist_batch
    net = on_kernels(TwoLayerNet(784, 4, 10, seed=5, backend="numpy"))
    comp_ = net.numerical_gradient(x[:20], t[:20], strategy=strategy)
    ref_ = net.gradient(x[:20], t[:20])
    for k in ref_:
        rel = np.abs(comp_[k] - ref_[k]).max() / np.abs(ref_[k]).max()
        # The 1e-7 guard inside log() alone moves the numerical gradient ~1e-6 relative.
        assert rel <= 1e-5, (k, rel)


def test_delta_kernel_handles_inputs_beyond_the_small_exp_range():
    """Large inputs make (z1' - z1) * W2 exceed the cheap-exp bound: the general exp path."""
    rng = np.random.default_rng(2)
    x = sparse_batch(rng, 3, 6) * 4e3
    t = np.array([0, 1, 2])
    net = reference.TwoLayerNet(6, 3, 3, weight_init_std=1.0, seed=4)
    with np.errstate(over="ignore"):  # the book's sigmoid overflows exp to inf, giving 0: fine
        ref_ = net.numerical_gradient(x, t)
    comp_ = kernel_net(net.params).numerical_gradient(x, t, strategy="delta")
    assert max_errors(ref_, comp_)[0] <= 1e-9


def test_numerical_sgd_trajectory_matches_reference():
    """A few SGD steps with numerical gradients: numba and NumPy stay within 1e-9."""
    rng = np.random.default_rng(11)
    x_all = sparse_batch(rng, 40, 12)
    t_all = rng.integers(0, 4, 40)
    ref_net = reference.TwoLayerNet(12, 5, 4, weight_init_std=0.3, seed=9)
    comp_net = kernel_net(ref_net.params)
    for _ in range(5):
        batch = rng.choice(40, 8)
        ref_grads = ref_net.numerical_gradient(x_all[batch], t_all[batch])
        comp_grads = comp_net.numerical_gradient(x_all[batch], t_all[batch])
        for k in comp_net.params:
            ref_net.params[k] -= 0.5 * ref_grads[k]
            comp_net.params[k] -= 0.5 * comp_grads[k]
    assert max_errors(ref_net.params, comp_net.params)[0] <= 1e-9


@pytest.mark.threads
@pytest.mark.parametrize("strategy", backend.STRATEGIES)
def test_gradient_is_bit_identical_for_any_thread_count(strategy, mnist_batch):
    x, t = mnist_batch
    x, t = (x, t) if strategy == "delta" else (x[:10], t[:10])
    net = kernel_net(reference.TwoLayerNet(784, 6, 10, seed=1).params)
    all_threads = get_num_threads()
    try:
        set_num_threads(1)
        one = net.numerical_gradient(x, t, strategy=strategy)
        set_num_threads(2)
        many = net.numerical_gradient(x, t, strategy=strategy)
    finally:
        set_num_threads(all_threads)
    assert all(np.array_equal(one[k], many[k]) for k in one)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 40)),
        elements=st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5, 1.0, 3.0, -0.5]),
    )
)
def test_distinct_inputs_are_each_samples_sorted_values_and_where_each_pixel_went(x):
    # The delta kernel evaluates each sample once per distinct non-zero pixel value (and
    # once for the bias's input, 1.0): those values, sorted, and each pixel's place.
    n, d = x.shape
    values, n_values = np.empty((n, d + 1)), np.empty(n, dtype=np.int64)
    value_index, one_index = np.empty((n, d), dtype=np.int32), np.empty(n, dtype=np.int64)
    two_layer_delta._distinct_inputs(0, 1, x, values, n_values, value_index, one_index)
    for s in range(n):
        nonzero = x[s] != 0.0
        comp_values = values[s, : n_values[s]]
        assert np.array_equal(comp_values, np.unique(np.append(x[s][nonzero], 1.0)))
        assert np.array_equal(comp_values[value_index[s][nonzero]], x[s][nonzero])
        assert np.all(value_index[s][~nonzero] == -1)
        assert comp_values[one_index[s]] == 1.0


@given(
    st.lists(
        st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, np.inf, np.nan]) | st.floats(0, 1),
        min_size=1,
        max_size=200,
    )
)
def test_stable_argsort_is_numpys_mergesort_permutation(keys):
    # The kernels' own sort (the dense ReLU grouping and the delta kernel's distinct
    # inputs; it replaced np.argsort to cut the cold compile): ties keep index order and
    # NaN goes last, as NumPy's stable sort does.
    keys = np.array(keys)
    ref_order = np.argsort(keys, kind="mergesort")
    padded = np.concatenate([keys, [-1.0, 2.0]])  # keys past m must be ignored
    comp_order = np.full(len(padded), -1, dtype=np.int64)
    spare = np.empty(len(padded), dtype=np.int64)
    _blocks._stable_argsort(padded, len(keys), comp_order, spare)
    assert np.array_equal(comp_order[: len(keys)], ref_order)
    assert np.all(comp_order[len(keys) :] == -1)


@pytest.mark.parametrize(
    "shape, dtype", [((5,), np.float64), ((7,), np.int8), ((3, 4), np.int64), ((2, 3), np.float64)]
)
def test_zeroed_clears_every_element_of_a_work_array(shape, dtype):
    garbage = np.full(shape, 7, dtype=dtype)
    zeroed = _blocks._zeroed if len(shape) == 1 else _blocks._zeroed_2d
    comp_ = zeroed(garbage)
    assert np.shares_memory(comp_, garbage)  # in place, as the kernels use it
    assert comp_.shape == shape and comp_.dtype == dtype
    assert not garbage.any()


def test_fused_softmax_cross_entropy_is_stable_and_label_agnostic():
    logits = np.array([[1e3, -1e3, 0.0], [-1e3, 999.0, 1e3], [2.0, 1.0, 0.1]])
    labels = np.array([0, 2, 1])
    mean, per_sample = losses.softmax_cross_entropy(logits, labels, per_sample=True)
    ref_ = reference.cross_entropy_error(reference.softmax(logits), labels)
    assert np.isfinite(per_sample).all()
    assert mean == pytest.approx(ref_, rel=1e-12)
    assert losses.softmax_cross_entropy(logits, np.eye(3)[labels]) == mean
    # a row whose label has probability ~0 is capped by the 1e-7 guard: -log(1e-7)
    assert losses.softmax_cross_entropy(np.array([[1e3, -1e3]]), [1]) == pytest.approx(
        -np.log(1e-7), rel=1e-12
    )


def test_fast_exp_and_log_are_within_two_ulp_of_libm():
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-700, 700, 2000), rng.uniform(-1, 1, 2000), [0.0]])
    comp_ = np.array([fexp(v) for v in xs])
    ref_ = np.exp(xs)
    assert np.all(np.abs(comp_ - ref_) <= 2 * np.spacing(ref_))
    ys = np.concatenate([rng.uniform(1e-7, 1.0 + 1e-7, 2000), np.exp(rng.uniform(-700, 700, 2000))])
    comp_ = np.array([flog(v) for v in ys])
    ref_ = np.log(ys)
    assert np.all(np.abs(comp_ - ref_) <= 2 * np.spacing(np.abs(ref_)) + 1e-300)
    small = rng.uniform(-SMALL_EXP_BOUND, SMALL_EXP_BOUND, 2000)
    assert np.all(np.abs([fexp_small(v) for v in small] - np.exp(small)) <= np.spacing(1.0))


def test_guarded_log_equals_the_full_log_on_guarded_probabilities_and_keeps_nan():
    rng = np.random.default_rng(1)
    ps = np.concatenate([rng.uniform(0.0, 1.0, 2000), [0.0, 1.0, 1e-300, 5e-324]])
    xs = ps + constants.LOG_GUARD  # what the kernels take the log of
    assert all(flog_guarded(v) == flog(v) for v in xs)
    assert np.isnan(flog_guarded(np.nan))


def test_the_engine_strategy_table_drives_the_backend_and_the_registry():
    """The engine's STRATEGIES table is the one list of strategies."""
    assert backend.STRATEGIES == tuple(engine.STRATEGIES)
    assert backend.DEFAULT_STRATEGY in backend.STRATEGIES
    for op_name in ("numerical_gradient", "sgd_step", "multilayer_gradient"):
        impls = list(COMPARISONS[op_name].implementations)
        assert [i for i in impls if i.startswith("numba-")] == [
            numba_impl(s) for s in engine.STRATEGIES
        ]
    # A fast path computes only strategies the engine has, and its kernel has them too.
    for fast in engine.FAST_PATHS:
        assert set(fast.strategies) <= set(engine.STRATEGIES), fast.name
        if fast.name.startswith("two-layer"):
            assert set(fast.strategies) <= set(two_layer.STRATEGIES), fast.name
    with pytest.raises(ValueError, match="strategy='fast'") as refused:
        backend.check_strategy("fast")
    assert all(repr(s) in str(refused.value) for s in backend.STRATEGIES)


def test_one_op_code_table_for_activations_and_pipeline_steps():
    codes = list(_blocks.OP_CODES.values())
    assert len(set(codes)) == len(codes) == len(_blocks.OP_NAMES)
    assert set(_blocks.ACTIVATION_CODES.items()) <= set(_blocks.OP_CODES.items())
    assert _blocks.POOL not in _blocks.ACTIVATION_CODES.values()
    # One _act for every kernel family: NONE passes a value through, NaN stays NaN.
    comp_ = [_blocks._act(v, _blocks.NONE) for v in (-2.0, 0.0, 3.5)]
    assert comp_ == [-2.0, 0.0, 3.5]
    assert np.isnan(_blocks._act(np.nan, _blocks.RELU))
    assert np.isnan(_blocks._act(np.nan, _blocks.SIGMOID))
    assert _blocks._act(-0.5, _blocks.RELU) == 0.0 and _blocks._act(0.5, _blocks.RELU) == 0.5


def test_dense_packing_offsets_and_nonzero_lists():
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((4, 3)), rng.standard_normal((3, 2))]
    biases = [rng.standard_normal(3), rng.standard_normal(2)]
    packed = _blocks.pack_dense(weights, biases)
    assert packed.sizes.tolist() == [4, 3, 2]
    for layer, (W, b) in enumerate(zip(weights, biases, strict=True)):
        wo, bo = packed.w_off[layer], packed.b_off[layer]
        assert np.array_equal(packed.w[wo : wo + W.size].reshape(W.shape), W)
        assert np.array_equal(packed.b[bo : bo + b.size], b)
    assert _blocks.batch_offsets(5, packed.sizes).tolist() == [0, 5 * 3]
    x = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -3.0]])
    nz_ptr, nz_idx = _blocks.nonzeros(x)
    rows = [nz_idx[nz_ptr[s] : nz_ptr[s + 1]].tolist() for s in range(3)]
    assert rows == [[1], [], [0, 2]]


def _noalias_marks(dispatcher):
    """How many ``noalias`` attributes the compiled function's LLVM definition carries."""
    ir = next(iter(dispatcher.inspect_llvm().values()))
    name = dispatcher.py_func.__name__
    (define,) = [
        line
        for line in ir.splitlines()
        if line.startswith("define") and name in line and "cpython" not in line
    ]
    return define.count("noalias")


@pytest.mark.numba
def test_noalias_kernels_mark_their_arrays_and_the_two_layer_kernels_ask_for_it():
    # Without numba's noalias flag LLVM left _assemble_delta's loops scalar, 2.8x slower
    # than its prange version; nothing else would notice. Guard that numba still honours
    # the flag through _jit's pipeline class, and that the two-layer task kernels use it.
    from fastnum._jit import _NoAliasCompiler, njit
    from fastnum.kernels import two_layer_delta

    def doubled(out, a):
        for i in range(a.shape[0]):
            out[i] = 2.0 * a[i]

    marked, plain = njit(doubled, noalias=True, cache=False), njit(doubled, cache=False)
    comp_out, ref_out, a = np.zeros(5), np.zeros(5), np.arange(5.0)
    marked(comp_out, a)
    plain(ref_out, a)
    assert np.array_equal(comp_out, ref_out)
    assert _noalias_marks(marked) > _noalias_marks(plain)
    kernels = (
        two_layer._forward_logits,
        two_layer._softmax_rows,
        two_layer._numerical_gradient_full,
        two_layer_delta._distinct_inputs,
        two_layer_delta._delta_sample_terms,
        two_layer_delta._assemble_delta,
    )
    assert all(kernel._compiler.pipeline_class is _NoAliasCompiler for kernel in kernels)


@pytest.mark.numba
def test_calls_from_jitted_code_compile_one_plain_copy_without_a_python_entry():
    # _jit gives every kernel an inner copy for calls from jitted code: compiled for
    # plain types only (a literal flag would compile a copy per value) and without the
    # Python wrapper nothing would use.  Guard both, and that Python calls still work.
    from numba import types

    from fastnum._jit import njit

    def scaled(v, flip):
        return -2.0 * v if flip else 2.0 * v

    helper = njit(scaled, cache=False)

    def caller(v):
        return helper(v, True) + helper(v, False) + helper(v, 1 > 0)

    ref_value = scaled(1.5, True) + scaled(1.5, False) + scaled(1.5, True)
    comp_value = njit(caller, cache=False)(1.5)
    assert comp_value == ref_value
    assert helper.inner_copy.signatures == [(types.float64, types.boolean)]
    assert helper.inner_copy.targetoptions["no_cpython_wrapper"]
    assert helper.signatures == []  # nothing compiled for Python yet
    assert helper(1.5, True) == -3.0  # a Python call compiles the entry-point copy
    assert helper.signatures == [(types.float64, types.boolean)]
