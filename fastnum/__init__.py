"""fastnum: the numerical-gradient training of "Deep Learning from Scratch" ch. 4, made fast.

The book's functions, in plain NumPy, are re-exported under the book's names;
:class:`TwoLayerNet` is the validating network whose heavy parts run on numba.
"""

# fastnum.gradcheck is a callable module: fastnum.gradcheck(net, x, t) runs the check and
# fastnum.gradcheck.GradcheckResult still names the module's contents (no shadowing).
from fastnum import gradcheck, optimizers
from fastnum.backend import resolve_backend
from fastnum.convnet import SimpleConvNet
from fastnum.deepconv import DeepConvNet
from fastnum.gradient import numerical_gradient
from fastnum.multilayer import MultiLayerNet
from fastnum.network import TwoLayerNet
from fastnum.optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop
from fastnum.reference import (
    cross_entropy_error,
    function_1,
    function_2,
    gradient_descent,
    numerical_diff,
    sigmoid,
    simpleNet,
    softmax,
    sum_squares_error,
)

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
    "gradcheck",
    "gradient_descent",
    "numerical_diff",
    "numerical_gradient",
    "optimizers",
    "resolve_backend",
    "sigmoid",
    "simpleNet",
    "softmax",
    "sum_squares_error",
]
