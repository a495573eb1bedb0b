"""fastnum: the numerical-gradient training of "Deep Learning from Scratch" ch. 4, made fast.

The book's functions, in plain NumPy, are re-exported under the book's names;
:class:`TwoLayerNet` is the validating network whose heavy parts run on numba.
"""

import importlib

# Where each public name lives.  They are imported on first use (PEP 562), so that
# ``import fastnum`` stays cheap and a process that only trains the book's network
# never imports the convolution kernels or the gradient checker: on a warm numba
# cache, imports are most of a first call.
_EXPORTS = {
    "SGD": "fastnum.optimizers",
    "AdaGrad": "fastnum.optimizers",
    "Adam": "fastnum.optimizers",
    "Momentum": "fastnum.optimizers",
    "Nesterov": "fastnum.optimizers",
    "RMSprop": "fastnum.optimizers",
    "DeepConvNet": "fastnum.deepconv",
    "MultiLayerNet": "fastnum.multilayer",
    "SimpleConvNet": "fastnum.convnet",
    "TwoLayerNet": "fastnum.network",
    "numerical_gradient": "fastnum.gradient",
    "resolve_backend": "fastnum.backend",
    "get_num_threads": "fastnum._jit",
    "set_num_threads": "fastnum._jit",
    **{
        name: "fastnum.reference"
        for name in (
            "cross_entropy_error",
            "function_1",
            "function_2",
            "gradient_descent",
            "numerical_diff",
            "sigmoid",
            "simpleNet",
            "softmax",
            "sum_squares_error",
        )
    },
}
# Submodules offered as attributes; fastnum.gradcheck is a callable module:
# fastnum.gradcheck(net, x, t) runs the check and fastnum.gradcheck.GradcheckResult
# still names the module's contents.
_SUBMODULES = ("gradcheck", "optimizers")


def __getattr__(name):
    """Import a public name's module on first access."""
    if name in _SUBMODULES:
        return importlib.import_module(f"fastnum.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'fastnum' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "DeepConvNet",
    "Momentum",
    "MultiLayerNet",
    "Nesterov",
    "RMSprop",
    "SimpleConvNet",
    "TwoLayerNet",
    "cross_entropy_error",
    "function_1",
    "function_2",
    "get_num_threads",
    "gradcheck",
    "gradient_descent",
    "numerical_diff",
    "numerical_gradient",
    "optimizers",
    "resolve_backend",
    "set_num_threads",
    "sigmoid",
    "simpleNet",
    "softmax",
    "sum_squares_error",
]
