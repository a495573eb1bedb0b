"""How each row of the engine's tables reaches its kernel: the functions the rows name.

:data:`fastnum.engine.FAST_PATHS` rows name a ``gradient`` function here (the book's
two-layer kernel, the dense ``full`` kernel), :data:`fastnum.engine.DELTA_KERNELS` rows a
``plan`` and a ``run`` function.  Each takes the engine's arguments (stack, params,
batch, ...), checks whether its kernel covers the stack (None when it does not) and calls
the kernel's trusted API.  The kernels' modules are imported on first use, so that a
network never loads the kernels it does not run.
"""

from __future__ import annotations

from fastnum.kernels._blocks import ACTIVATION_CODES, RELU, SIGMOID, pack_dense

# ---------------------------------------------------------------------------- fast paths


def two_layer_names(stack, x, activation="sigmoid"):
    """The stack's (W1, b1, W2, b2) names when it is the book's two-layer net (by default
    the sigmoid one of chapter 4)."""
    if x.ndim == 2 and tuple(spec[0] for spec in stack) == ("affine", activation, "affine"):
        return (stack[0][1], stack[0][2], stack[2][1], stack[2][2])
    return None


def two_layer_params(params, names):
    """The two-layer kernel's parameter tuple from the stack's names."""
    from fastnum.kernels import two_layer

    book = zip(two_layer.PARAM_NAMES, names, strict=True)
    return two_layer.as_params({k: params[nm] for k, nm in book})


def _by_stack_names(grads, names):
    """The two-layer kernel's {W1, b1, W2, b2} gradients under the stack's own names."""
    from fastnum.kernels import two_layer

    return {nm: grads[k] for nm, k in zip(names, two_layer.PARAM_NAMES, strict=True)}


def two_layer_gradient(activation, code):
    """A fast path through the book's two-layer kernel for one hidden activation."""

    def gradient(stack, params, x, t, h, strategy):
        names = two_layer_names(stack, x, activation)
        if names is None:
            return None
        from fastnum.kernels import two_layer

        g = two_layer.numerical_gradient_trusted(
            two_layer_params(params, names), x, t, h, strategy, code
        )
        return _by_stack_names(g, names)

    return gradient


def two_layer_forward(stack, params, x, t, h):
    """Forward differences on the book's two-layer kernel (its one-sided delta) for the
    two-layer stacks it serves, else None."""
    for activation, code in (("sigmoid", SIGMOID), ("relu", RELU)):
        names = two_layer_names(stack, x, activation)
        if names is not None:
            from fastnum.kernels import two_layer

            g = two_layer.forward_gradient_trusted(two_layer_params(params, names), x, t, h, code)
            return _by_stack_names(g, names)
    return None


def dense_full_gradient(stack, params, x, t, h, strategy):
    """The dense ``full`` kernel for affine (act affine)* stacks of one hidden activation."""
    kinds = tuple(spec[0] for spec in stack)
    hidden = set(kinds[1::2])
    if not (
        len(kinds) % 2 == 1
        and set(kinds[0::2]) == {"affine"}
        and len(hidden) == 1
        and hidden <= set(ACTIVATION_CODES)
    ):
        return None
    from fastnum.kernels import dense_full

    specs = stack[0::2]
    packed = pack_dense([params[s[1]] for s in specs], [params[s[2]] for s in specs])
    g = dense_full.numerical_gradient_trusted(packed, x, t, h, ACTIVATION_CODES[hidden.pop()])
    names = [nm for s in specs for nm in (s[1], s[2])]
    return dict(zip(names, g, strict=True))


# ------------------------------------------------------------------------- delta kernels
# In the order of DELTA_KERNELS: each kernel's plan, then its run.


def cells(whole, indices):
    """The cells ``indices`` (name -> flat indices) of a whole gradient; all when None."""
    if indices is None:
        return whole
    return {k: whole[k].reshape(-1)[idx] for k, idx in indices.items()}


def dense_relu_plan(stack, x):
    """The stack itself when the corner-aware dense ReLU kernel covers it, else None."""
    from fastnum.kernels import dense_relu

    if not dense_relu.ENABLED or x.ndim != 2 or dense_relu.relu_stack_names(stack) is None:
        return None
    return stack


def dense_relu_delta(stack, params, x, t, h, log_guard, indices, masks):
    """The corner-aware kernel's whole gradient (cells from it: it costs about as much as
    its cache), or None when a loss is not finite (the next kernel then gives NaN)."""
    from fastnum.kernels import dense_relu

    whole = dense_relu.engine_gradient(stack, params, x, t, h, log_guard)
    return None if whole is None else cells(whole, indices)


def chapter6_plan(stack, x):
    """The batch norm / dropout kernel's plan of a dense stack it covers, else None."""
    from fastnum._engine_delta import _is_chapter6, _norm_plan

    return _norm_plan(stack, x) if _is_chapter6(stack) else None


def chapter6_delta(plan, params, x, t, h, log_guard, indices, masks):
    """The batch norm / dropout kernel's whole gradient, or its cells at ``indices``."""
    # The kernel's whole gradient costs about as much as its cache: cells from it.
    from fastnum._engine_delta import _norm_delta_at

    return cells(_norm_delta_at(plan, params, x, t, h, log_guard, masks), indices)


def layered_plan(stack, x):
    """The conv-block + dense kernel's plan of a stack it covers, else None."""
    from fastnum._engine_delta import _delta_plan

    return _delta_plan(stack)


def layered_delta(plan, params, x, t, h, log_guard, indices, masks):
    """The conv-block + dense delta kernel, after the memory guard."""
    from fastnum._engine_delta import _delta_at
    from fastnum._engine_memory import _check_delta_memory

    _check_delta_memory(plan, params, x)
    return _delta_at(plan, params, x, t, h, log_guard, indices)


def conv_stack_plan(stack, x):
    """The deep conv-stack kernel's plan of a stack it covers, else None."""
    from fastnum import _conv_stack_plan

    return _conv_stack_plan.plan(stack)


def conv_stack_delta(plan, params, x, t, h, log_guard, indices, masks):
    """The deep conv-stack delta kernel (it checks its own memory)."""
    from fastnum import _conv_stack_plan

    return _conv_stack_plan.delta_gradient(plan, params, x, t, h, log_guard, masks, indices)
