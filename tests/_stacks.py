"""The small layer stacks the engine and SimpleConvNet tests share, and their problems."""

from __future__ import annotations

import numpy as np

from fastnum.convnet import ReferenceLayeredNet, param_names

SIMPLE = (
    ("conv", "W1", "b1", 1, 0),
    ("relu",),
    ("pool", 2, 2, 2, 0),
    ("affine", "W2", "b2"),
    ("relu",),
    ("affine", "W3", "b3"),
)


def simple_stack(stride=1, pad=0, pool=(2, 2, 2, 0)):
    return (
        ("conv", "W1", "b1", stride, pad),
        ("relu",),
        ("pool", *pool),
        ("affine", "W2", "b2"),
        ("relu",),
        ("affine", "W3", "b3"),
    )


# name -> (stack, parameter shapes, input shape per sample)
STACKS = {
    # Beyond SimpleConvNet: a pooling window of 3, two conv blocks, sigmoid, pad 2.
    "pool3": (
        (("conv", "W1", "b1", 1, 1), ("relu",), ("pool", 3, 3, 1, 0), ("affine", "W2", "b2")),
        {"W1": (2, 3, 3, 3), "b1": (2,), "W2": (2 * 5 * 4, 3), "b2": (3,)},
        (3, 7, 6),
    ),
    "two-blocks": (
        (
            ("conv", "W1", "b1", 1, 1),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("conv", "W2", "b2", 1, 0),
            ("sigmoid",),
            ("pool", 3, 3, 2, 1),
            ("affine", "W3", "b3"),
            ("relu",),
            ("affine", "W4", "b4"),
        ),
        {
            "W1": (3, 2, 3, 3),
            "b1": (3,),
            "W2": (2, 3, 2, 2),
            "b2": (2,),
            "W3": (2 * 2 * 3, 4),
            "b3": (4,),
            "W4": (4, 3),
            "b4": (3,),
        },
        (2, 8, 12),
    ),
    "pad2-stride2-sigmoid": (
        (("conv", "W1", "b1", 2, 2), ("sigmoid",), ("pool", 2, 3, 1, 0), ("affine", "W2", "b2")),
        {"W1": (2, 1, 4, 4), "b1": (2,), "W2": (2 * 3 * 3, 4), "b2": (4,)},
        (1, 6, 8),
    ),
    "simpleconv": (
        SIMPLE,
        {"W1": (3, 1, 3, 3), "b1": (3,), "W2": (27, 5), "b2": (5,), "W3": (5, 4), "b3": (4,)},
        (1, 8, 8),
    ),
    "pad1-3ch-nonsquare": (
        simple_stack(pad=1),
        {
            "W1": (2, 3, 3, 3),
            "b1": (2,),
            "W2": (2 * 3 * 2, 4),
            "b2": (4,),
            "W3": (4, 3),
            "b3": (3,),
        },
        (3, 6, 4),
    ),
    "pad2-filter4": (
        simple_stack(pad=2),
        {
            "W1": (2, 2, 4, 4),
            "b1": (2,),
            "W2": (2 * 3 * 4, 3),
            "b2": (3,),
            "W3": (3, 3),
            "b3": (3,),
        },
        (2, 5, 7),
    ),
    "stride2": (
        simple_stack(stride=2, pad=1),
        {
            "W1": (2, 1, 3, 3),
            "b1": (2,),
            "W2": (2 * 2 * 3, 4),
            "b2": (4,),
            "W3": (4, 3),
            "b3": (3,),
        },
        (1, 7, 11),
    ),
    "pool3-stride2-pad1": (
        simple_stack(pool=(3, 3, 2, 1)),
        {
            "W1": (2, 1, 3, 3),
            "b1": (2,),
            "W2": (2 * 4 * 3, 3),
            "b2": (3,),
            "W3": (3, 3),
            "b3": (3,),
        },
        (1, 9, 7),
    ),
    "sigmoid-pool-first": (
        (("conv", "W1", "b1", 1, 0), ("pool", 2, 3, 1, 0), ("sigmoid",), ("affine", "W2", "b2")),
        {"W1": (2, 1, 3, 3), "b1": (2,), "W2": (2 * 3 * 2, 4), "b2": (4,)},
        (1, 6, 6),
    ),
    "conv-only": (
        (("conv", "W1", "b1", 1, 1), ("affine", "W2", "b2")),
        {"W1": (2, 2, 3, 3), "b1": (2,), "W2": (2 * 4 * 3, 3), "b2": (3,)},
        (2, 4, 3),
    ),
    # Not covered by the delta kernels: "delta" falls back to "full".
    "two-convs": (
        (("conv", "W1", "b1", 1, 0), ("relu",), ("conv", "W2", "b2", 1, 0), ("affine", "W3", "b3")),
        {
            "W1": (2, 1, 2, 2),
            "b1": (2,),
            "W2": (2, 2, 2, 2),
            "b2": (2,),
            "W3": (2 * 3 * 3, 3),
            "b3": (3,),
        },
        (1, 5, 5),
    ),
    # Batch normalisation (chapter 6): dense (its own delta kernel) and after a conv
    # (every (channel, row, column) a feature, as in the book; delta falls back to full).
    "dense-bn": (
        (
            ("affine", "W1", "b1"),
            ("batchnorm", "gamma1", "beta1"),
            ("relu",),
            ("affine", "W2", "b2"),
            ("batchnorm", "gamma2", "beta2"),
            ("sigmoid",),
            ("affine", "W3", "b3"),
        ),
        {
            "W1": (6, 5),
            "b1": (5,),
            "gamma1": (5,),
            "beta1": (5,),
            "W2": (5, 4),
            "b2": (4,),
            "gamma2": (4,),
            "beta2": (4,),
            "W3": (4, 3),
            "b3": (3,),
        },
        (6,),
    ),
    "conv-bn": (
        (
            ("conv", "W1", "b1", 1, 1),
            ("batchnorm", "gamma1", "beta1"),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("affine", "W2", "b2"),
        ),
        {
            "W1": (2, 1, 3, 3),
            "b1": (2,),
            "gamma1": (2 * 4 * 6,),
            "beta1": (2 * 4 * 6,),
            "W2": (2 * 2 * 3, 3),
            "b2": (3,),
        },
        (1, 4, 6),
    ),
    # Dense stacks; the first three take the hand-written fast paths at the book's guard.
    "two-layer-sigmoid": (
        (("affine", "W1", "b1"), ("sigmoid",), ("affine", "W2", "b2")),
        {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)},
        (7,),
    ),
    "two-layer-relu": (
        (("affine", "W1", "b1"), ("relu",), ("affine", "W2", "b2")),
        {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)},
        (7,),
    ),
    "dense-relu-3": (
        (
            ("affine", "W1", "b1"),
            ("relu",),
            ("affine", "W2", "b2"),
            ("relu",),
            ("affine", "W3", "b3"),
        ),
        {"W1": (6, 5), "b1": (5,), "W2": (5, 4), "b2": (4,), "W3": (4, 3), "b3": (3,)},
        (6,),
    ),
    "dense-mixed": (
        (
            ("affine", "A", "a"),
            ("relu",),
            ("affine", "B", "b"),
            ("sigmoid",),
            ("affine", "C", "c"),
            ("sigmoid",),
        ),
        {"A": (6, 4), "a": (4,), "B": (4, 5), "b": (5,), "C": (5, 3), "c": (3,)},
        (6,),
    ),
}


#: Stacks with dropout: their masks are inputs (``ref.masks``), so the tests that give
#: the engine no masks cannot take them.  The book's order: affine, batchnorm, activation,
#: dropout.
DROPOUT_STACKS = {
    "book-ch6": (
        (
            ("affine", "W1", "b1"),
            ("batchnorm", "gamma1", "beta1"),
            ("relu",),
            ("dropout", "mask1"),
            ("affine", "W2", "b2"),
            ("batchnorm", "gamma2", "beta2"),
            ("relu",),
            ("dropout", "mask2"),
            ("affine", "W3", "b3"),
        ),
        {
            "W1": (7, 6),
            "b1": (6,),
            "gamma1": (6,),
            "beta1": (6,),
            "W2": (6, 5),
            "b2": (5,),
            "gamma2": (5,),
            "beta2": (5,),
            "W3": (5, 3),
            "b3": (3,),
        },
        (7,),
    ),
    "dense-dropout": (
        (
            ("affine", "W1", "b1"),
            ("relu",),
            ("dropout", "mask1"),
            ("affine", "W2", "b2"),
            ("sigmoid",),
            ("dropout", "mask2"),
            ("affine", "W3", "b3"),
        ),
        {"W1": (6, 5), "b1": (5,), "W2": (5, 4), "b2": (4,), "W3": (4, 3), "b3": (3,)},
        (6,),
    ),
    "bn-dropout-mixed": (  # a layer with batch norm only, one with dropout only
        (
            ("affine", "W1", "b1"),
            ("batchnorm", "gamma1", "beta1"),
            ("sigmoid",),
            ("affine", "W2", "b2"),
            ("relu",),
            ("dropout", "mask2"),
            ("affine", "W3", "b3"),
        ),
        {
            "W1": (5, 4),
            "b1": (4,),
            "gamma1": (4,),
            "beta1": (4,),
            "W2": (4, 5),
            "b2": (5,),
            "W3": (5, 3),
            "b3": (3,),
        },
        (5,),
    ),
    "conv-bn-dropout": (
        (
            ("conv", "W1", "b1", 1, 0),
            ("batchnorm", "gamma1", "beta1"),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("dropout", "mask1"),
            ("affine", "W2", "b2"),
        ),
        {
            "W1": (2, 1, 3, 3),
            "b1": (2,),
            "gamma1": (2 * 4 * 4,),
            "beta1": (2 * 4 * 4,),
            "W2": (2 * 2 * 2, 3),
            "b2": (3,),
        },
        (1, 6, 6),
    ),
}


def _mask_sizes(stack, params, input_shape):
    """Features per sample at each dropout layer of the stack."""
    from fastnum.engine import LAYER_KINDS

    sizes, shape = {}, tuple(input_shape)
    for spec in stack:
        if spec[0] == "dropout":
            sizes[spec[1]] = int(np.prod(shape))
        shape = LAYER_KINDS[spec[0]].out_shape(spec, params, shape)
    return sizes


def problem(name, batch=3, seed=0, scale=0.5, weight_decay=0.0, keep=0.5):
    """Reference net, engine params (copies), x, t: O(1) weights, biases, sparse inputs.

    A stack with dropout gets masks keeping each unit with probability ``keep`` (in
    ``ref.masks``, (batch, features) of 0.0/1.0); ``ref.weight_decay_lambda`` is
    ``weight_decay``.
    """
    stack, shapes, input_shape = {**STACKS, **DROPOUT_STACKS}[name]
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(0, scale, s) for k, s in shapes.items()}
    for k in params:  # batch norm's scale near the book's initial 1
        if k.startswith("gamma"):
            params[k] += 1.0
    x = rng.random((batch, *input_shape))
    x[rng.random(x.shape) < 0.4] = 0.0  # zeros, like MNIST's background
    n_out = shapes[param_names(stack)[-1]][0]
    t = rng.integers(0, n_out, batch)
    masks = {
        nm: (rng.random((batch, size)) < keep).astype(np.float64)
        for nm, size in _mask_sizes(stack, params, input_shape).items()
    }
    ref = ReferenceLayeredNet(
        stack, {k: v.copy() for k, v in params.items()}, masks, weight_decay_lambda=weight_decay
    )
    return ref, params, x, t


#: Stacks whose oracle is also checked against backprop: at their seeds no relu or pooling
#: input sits within h of a kink, where central differences and backprop rightly differ
#: (stride2's does, at scale 0.1).
BACKPROP_STACKS = ("pool3", "two-blocks", "pad2-stride2-sigmoid")


def max_abs_diff(a, b):
    """Largest absolute difference over two dicts of arrays with the same keys."""
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)
