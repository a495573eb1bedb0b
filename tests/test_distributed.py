"""The numerical gradient in parameter blocks on Dask (fastnum.distributed).

The Dask results are compared with one process by ``np.array_equal``: a block runs the
engine's own kernels on its cells, so nothing may differ, not even rounding.  The
tests that need Dask skip (with the reason) where it is not installed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnum import distributed, engine
from fastnum.convnet import SimpleConvNet
from fastnum.multilayer import MultiLayerNet
from fastnum.network import TwoLayerNet
from tests._backends import on_kernels

NO_DASK = "Dask not installed: pip install 'fastnum[distributed]'"


@pytest.fixture(scope="module")
def client():
    """A Client of an in-process cluster of 2 one-thread workers (shared by the module)."""
    dask = pytest.importorskip("distributed", reason=NO_DASK)
    with (
        dask.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        dask.Client(cluster) as c,
    ):
        yield c


def _dense_batch(n=6, d=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), rng.integers(0, classes, n)


def _image_batch(n=3, seed=0, size=6):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, size, size)), rng.integers(0, 3, n)


def _small_conv(seed=2):
    conv = {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}
    return SimpleConvNet((1, 6, 6), conv, 5, 3, weight_init_std=0.3, seed=seed)


def _chapter6(activation="relu", seed=1):
    return MultiLayerNet(
        12,
        [5, 4],
        4,
        activation=activation,
        weight_init_std=0.5,
        seed=seed,
        use_batchnorm=True,
        use_dropout=True,
        dropout_ratio=0.3,
        weight_decay_lambda=0.1,
    )


def _same(ref_grads, comp_grads):
    return list(ref_grads) == list(comp_grads) and all(
        np.array_equal(ref_grads[k], comp_grads[k]) for k in ref_grads
    )


# ---------------------------------------------------------------------------- the partition


@settings(max_examples=50)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    block_size=st.integers(1, 50),
)
def test_blocks_cover_every_cell_once_in_order(sizes, block_size):
    named = {f"p{i}": n for i, n in enumerate(sizes)}
    blocks = distributed.parameter_blocks(named, block_size)
    cells = [(k, i) for b in blocks for k, (start, stop) in b.items() for i in range(start, stop)]
    assert cells == [(k, i) for k, n in named.items() for i in range(n)]
    counts = [sum(stop - start for start, stop in b.values()) for b in blocks]
    assert all(c == block_size for c in counts[:-1])
    assert not counts or 0 < counts[-1] <= block_size


def test_blocks_depend_on_the_sizes_only():
    blocks = distributed.parameter_blocks({"W1": 10, "b1": 3, "W2": 6}, 4)
    assert blocks == [
        {"W1": (0, 4)},
        {"W1": (4, 8)},
        {"W1": (8, 10), "b1": (0, 2)},
        {"b1": (2, 3), "W2": (0, 3)},
        {"W2": (3, 6)},
    ]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_block_size_is_refused_by_name(bad):
    with pytest.raises((ValueError, TypeError), match="block_size"):
        distributed.parameter_blocks({"W1": 4}, bad)


# ---------------------------------------------------------------------------- no Dask


def test_without_dask_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    net = on_kernels(TwoLayerNet(12, 3, 4, seed=0))
    x, t = _dense_batch()
    with pytest.raises(ImportError, match=r"fastnum\[distributed\]"):
        net.numerical_gradient(x, t, scheduler="local")


def test_the_numpy_backend_refuses_a_scheduler():
    net = TwoLayerNet(12, 3, 4, seed=0, backend="numpy")
    x, t = _dense_batch()
    with pytest.raises(ValueError, match="backend='numba'"):
        net.numerical_gradient(x, t, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="numba backend"):
        with distributed.scheduled(net, "tcp://127.0.0.1:1"):
            pass


# ---------------------------------------------------------------------------- identical results


def _engine_cases():
    """(id, stack, params, x, t, masks, weight_decay, strategies) on small networks."""
    x, t = _dense_batch()
    xi, ti = _image_batch()
    two = TwoLayerNet(12, 5, 4, weight_init_std=0.5, seed=1)
    relu = MultiLayerNet(12, [5, 4], 4, activation="relu", weight_init_std=0.5, seed=1)
    sig = MultiLayerNet(12, [5], 4, activation="sigmoid", weight_init_std=0.5, seed=1)
    ch6 = _chapter6()
    masks = ch6.new_dropout_masks(len(x))
    conv = _small_conv()
    # The engine's ``full`` gradient of a plain dense stack runs on the dense full kernel
    # and its ``numerical_gradient_at`` on the generic loop, which round differently
    # (1e-12): that pair is compared in test_dense_full_agrees_to_rounding instead.
    return [
        ("two_layer", two.stack, two.params, x, t, None, 0.0, ("delta", "full")),
        ("relu_2_hidden", relu.stack, relu.params, x, t, None, 0.0, ("delta",)),
        ("sigmoid_deep", sig.stack, sig.params, x, t, None, 0.0, ("delta",)),
        ("bn_dropout_decay", ch6.stack, ch6.params, x, t, masks, 0.1, ("delta", "full")),
        ("conv", conv.stack, conv.params, xi, ti, None, 0.0, ("delta", "full")),
    ]


@pytest.mark.parametrize("case", _engine_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("block_size", [13, 10_000], ids=["cut", "one_block"])
def test_blocks_on_dask_equal_one_process(client, case, block_size):
    _, stack, params, x, t, masks, decay, strategies = case
    for strategy in strategies:
        ref_grads = engine.numerical_gradient(
            stack, params, x, t, strategy=strategy, masks=masks, weight_decay=decay
        )
        comp_grads = distributed.numerical_gradient(
            stack,
            params,
            x,
            t,
            strategy=strategy,
            masks=masks,
            weight_decay=decay,
            scheduler=client,
            block_size=block_size,
        )
        assert _same(ref_grads, comp_grads), strategy
        assert all(comp_grads[k].shape == params[k].shape for k in comp_grads)


def test_dense_full_agrees_to_rounding(client):
    net = MultiLayerNet(12, [5, 4], 4, activation="relu", weight_init_std=0.5, seed=1)
    x, t = _dense_batch()
    ref_grads = engine.numerical_gradient(net.stack, net.params, x, t, strategy="full")
    comp_grads = distributed.numerical_gradient(
        net.stack, net.params, x, t, strategy="full", scheduler=client, block_size=9
    )
    for k in ref_grads:
        np.testing.assert_allclose(comp_grads[k], ref_grads[k], rtol=0, atol=1e-9)


def _small_deepconv(seed=2):
    """The chapter 8 net's layer sequence at a 4x4 input, 2 filters per convolution."""
    from fastnum.deepconv import DeepConvNet

    convs = [{"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1} for _ in range(6)]
    convs[3] = {**convs[3], "pad": 2}  # the book's fourth convolution pads by 2
    return DeepConvNet((1, 4, 4), *convs, hidden_size=4, output_size=3, seed=seed)


def _networks():
    return [
        ("two_layer", lambda: TwoLayerNet(12, 5, 4, weight_init_std=0.5, seed=1), _dense_batch),
        ("chapter6", _chapter6, _dense_batch),
        ("conv", _small_conv, _image_batch),
        ("deepconv", _small_deepconv, lambda: _image_batch(n=3, size=4)),
    ]


@pytest.mark.parametrize(
    "make,batch", [n[1:] for n in _networks()], ids=[n[0] for n in _networks()]
)
def test_the_networks_scheduler_argument_gives_the_same_gradient(client, monkeypatch, make, batch):
    # Small blocks, so that these small networks are really cut into several.
    monkeypatch.setattr(distributed, "DEFAULT_BLOCK_SIZE", 11)
    ref_net, comp_net = on_kernels(make()), on_kernels(make())
    x, t = batch()
    for _ in range(2):  # a second step: new dropout masks, moved running statistics
        ref_grads = ref_net.numerical_gradient(x, t)
        comp_grads = comp_net.numerical_gradient(x, t, scheduler=client)
        assert _same(ref_grads, comp_grads)
    if hasattr(ref_net, "dropout_rng"):
        # One set of masks per gradient, drawn in this process: the generator and the
        # batch-norm statistics moved exactly as in one process.
        assert ref_net.dropout_rng.random() == comp_net.dropout_rng.random()
        for k, stats in ref_net.running_stats.items():
            assert all(
                np.array_equal(a, b) for a, b in zip(stats, comp_net.running_stats[k], strict=True)
            )


def test_scheduled_runs_every_step_on_one_client(client, monkeypatch):
    monkeypatch.setattr(distributed, "DEFAULT_BLOCK_SIZE", 13)
    calls = []
    real = distributed.numerical_gradient

    def counting(*args, **kwargs):
        calls.append(kwargs["scheduler"])
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "numerical_gradient", counting)
    ref_net, comp_net = on_kernels(_chapter6()), on_kernels(_chapter6())
    x, t = _dense_batch()
    with distributed.scheduled(comp_net, client) as net:
        assert net is comp_net and comp_net.scheduler is client
        for _ in range(2):  # as the trainer calls it, step after step
            ref_grads = ref_net.numerical_gradient_trusted(x, t, 1e-4, "delta")
            assert _same(ref_grads, comp_net.numerical_gradient_trusted(x, t, 1e-4, "delta"))
    assert calls == [client, client]
    assert comp_net.scheduler is None


def test_local_scheduler_runs_in_process():
    pytest.importorskip("distributed", reason=NO_DASK)
    net = on_kernels(_small_conv())
    x, t = _image_batch()
    ref_grads = net.numerical_gradient(x, t)
    assert _same(ref_grads, net.numerical_gradient(x, t, scheduler="local"))


def test_worker_processes_give_the_same_gradient():
    dask = pytest.importorskip("distributed", reason=NO_DASK)
    net = _chapter6()
    x, t = _dense_batch()
    masks = net.new_dropout_masks(len(x))
    ref_grads = engine.numerical_gradient(
        net.stack, net.params, x, t, masks=masks, weight_decay=0.1
    )
    # Worker processes: the batch, parameters and masks reach them by pickle.
    with dask.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        comp_grads = distributed.numerical_gradient(
            net.stack,
            net.params,
            x,
            t,
            masks=masks,
            weight_decay=0.1,
            scheduler=cluster,
            block_size=17,
        )
    assert _same(ref_grads, comp_grads)
