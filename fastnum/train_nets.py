"""The networks ``fastnum train`` trains: one table, :data:`NETS`, name -> :class:`NetKind`.

Each entry says what the network is, whether it trains on images, which settings of a
:class:`fastnum.train_config.TrainConfig` it cannot take (checked when the config is
made, so a bad run fails before it loads data) and how to build it freshly from a
config.  A new network is one more entry
here and one more ``--net`` choice, which the command line reads from this table.

A network with batch norm, dropout or weight decay says so with a true ``chapter6``
attribute and offers what :func:`fastnum.train_step.step_gradient` and the checkpoint
(:mod:`fastnum.checkpoint`) use, as :class:`fastnum.MultiLayerNet` does:
``new_dropout_masks(batch)``, ``dropout_masks``, ``dropout_rng`` (the generator the
masks come from), ``use_dropout``, ``running_stats`` (layer -> (mean, var)) and
``update_running_stats(x, masks)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from fastnum._validate import ParameterError, Setting
from fastnum.activations import layer_init_std

__all__ = ["CHAPTER6_OPTIONS", "NETS", "NetKind", "build_net"]

#: The chapter 6 settings of a config with their "off" values, in the order they are
#: reported: batch normalisation, dropout (None: no dropout layers), weight decay.
CHAPTER6_OPTIONS = {"use_batchnorm": False, "dropout_ratio": None, "weight_decay_lambda": 0.0}


class NetKind(NamedTuple):
    """One network of :data:`NETS`."""

    #: One line for ``--help``.
    description: str
    #: True: trains on (N, C, H, W) images (``load_mnist(flatten=False)``), else flat rows.
    images: bool
    #: ``check(config)`` raises ParameterError on a setting this network does not take.
    check: Callable
    #: ``build(config, n_features, n_classes, input_dim, backend)`` -> a fresh network.
    build: Callable


def chapter6_options_set(config):
    """The chapter 6 settings of ``config`` that are on, in :data:`CHAPTER6_OPTIONS` order."""
    return [name for name, off in CHAPTER6_OPTIONS.items() if getattr(config, name) != off]


def _check_dense(config):
    """TwoLayerNet (no hidden_sizes) has none of chapter 6's layers: MultiLayerNet has."""
    used = chapter6_options_set(config)
    if used and config.hidden_sizes is None:
        raise ParameterError(
            used[0],
            "{name} needs {hidden_sizes}: the book's TwoLayerNet has no batch norm, dropout "
            "or weight decay; pass e.g. {example} (the same network as a MultiLayerNet).",
            example=Setting("hidden_sizes", (config.hidden_size,)),
        )


def _build_dense(config, n_features, n_classes, input_dim, backend):
    from fastnum.multilayer import MultiLayerNet
    from fastnum.network import TwoLayerNet

    if config.hidden_sizes is None:
        named = isinstance(config.weight_init_std, str)
        net = TwoLayerNet(
            n_features,
            config.hidden_size,
            n_classes,
            1.0 if named else config.weight_init_std,
            seed=config.seed,
            backend=backend,
            strategy=config.strategy,
        )
        if named:  # std * draw == (1.0 * draw) * std bit for bit: MultiLayerNet's weights
            for key, n_in in (("W1", n_features), ("W2", config.hidden_size)):
                net.params[key] *= layer_init_std(config.weight_init_std, n_in)
        return net
    dropout = config.dropout_ratio is not None
    return MultiLayerNet(
        n_features,
        config.hidden_sizes,
        n_classes,
        activation=config.activation,
        weight_init_std=config.weight_init_std,
        seed=config.seed,
        backend=backend,
        strategy=config.strategy,
        weight_decay_lambda=config.weight_decay_lambda,
        use_dropout=dropout,
        dropout_ratio=config.dropout_ratio if dropout else 0.5,
        use_batchnorm=config.use_batchnorm,
    )


def _check_simpleconv(config):
    """SimpleConvNet: one hidden layer, numeric initial std, no chapter 6 layers."""
    if config.hidden_sizes is not None:
        raise ParameterError(
            "hidden_sizes",
            "{name} is for {dense}; SimpleConvNet has one hidden layer of {hidden_size} "
            "units (the book uses 100).",
            dense=Setting("net", "dense"),
        )
    if isinstance(config.weight_init_std, str):
        raise ParameterError(
            "weight_init_std",
            "{name}={value!r} is for the dense networks; SimpleConvNet takes a number "
            "(the book uses 0.01).",
            value=config.weight_init_std,
        )
    used = chapter6_options_set(config)
    if used:
        raise ParameterError(
            used[0],
            "{name} is for {dense} with {hidden_sizes} (a MultiLayerNet); the book's "
            "SimpleConvNet has no batch norm, dropout or weight decay.",
            dense=Setting("net", "dense"),
        )


def _build_simpleconv(config, n_features, n_classes, input_dim, backend):
    from fastnum.convnet import SimpleConvNet

    return SimpleConvNet(
        input_dim,
        hidden_size=config.hidden_size,
        output_size=n_classes,
        weight_init_std=config.weight_init_std,
        seed=config.seed,
        backend=backend,
        strategy=config.strategy,
    )


def _check_deepconv(config):
    """DeepConvNet: the book's He initialisation, dropout only (its ratio may be set)."""
    if config.hidden_sizes is not None:
        raise ParameterError(
            "hidden_sizes",
            "{name} is for {dense}; DeepConvNet has one hidden affine layer of "
            "{hidden_size} units (the book uses 50).",
            dense=Setting("net", "dense"),
        )
    if config.weight_init_std not in (0.01, "he", "relu"):  # 0.01: the option's default
        raise ParameterError(
            "weight_init_std",
            "{name}={value!r}: DeepConvNet always starts from the book's He initialisation; "
            "drop the option or pass 'he'.",
            value=config.weight_init_std,
        )
    if config.use_batchnorm or config.weight_decay_lambda:
        name = "use_batchnorm" if config.use_batchnorm else "weight_decay_lambda"
        raise ParameterError(
            name,
            "{name} is for {dense} with {hidden_sizes} (a MultiLayerNet); the book's "
            "DeepConvNet has dropout only (its ratio: {dropout}).",
            dense=Setting("net", "dense"),
            dropout=Setting("dropout_ratio", 0.5),
        )


def _build_deepconv(config, n_features, n_classes, input_dim, backend):
    from fastnum.deepconv import DeepConvNet

    return DeepConvNet(
        input_dim,
        hidden_size=config.hidden_size,
        output_size=n_classes,
        dropout_ratio=0.5 if config.dropout_ratio is None else config.dropout_ratio,
        seed=config.seed,
        backend=backend,
        strategy=config.strategy,
    )


#: name -> :class:`NetKind`; the names are ``fastnum train --net``'s choices.
NETS = {
    "dense": NetKind(
        "the book's TwoLayerNet, or a MultiLayerNet given hidden layer widths",
        False,
        _check_dense,
        _build_dense,
    ),
    "simpleconv": NetKind(
        "the book's chapter 7 SimpleConvNet on 28x28 images",
        True,
        _check_simpleconv,
        _build_simpleconv,
    ),
    "deepconv": NetKind(
        "the book's chapter 8 DeepConvNet (6 convolutions, dropout) on 28x28 images",
        True,
        _check_deepconv,
        _build_deepconv,
    ),
}


def build_net(config, n_features, n_classes, input_dim=None):
    """The network a run of ``config`` trains, freshly initialised from ``config.seed``.

    Parameters
    ----------
    config : fastnum.train_config.TrainConfig
    n_features : int
        Features per sample (the dense networks' input width).
    n_classes : int
    input_dim : tuple of int, optional
        (C, H, W) of the images, for the networks that train on images.

    Returns
    -------
    fastnum.network.TwoLayerNet, fastnum.multilayer.MultiLayerNet or fastnum.SimpleConvNet
        A MultiLayerNet when ``config.hidden_sizes`` is given (with the config's batch
        norm, dropout and weight decay); a SimpleConvNet of ``input_dim`` images when
        ``config.net == "simpleconv"``.
    """
    from fastnum.backend import resolve_backend

    kind = NETS[config.net]
    return kind.build(config, n_features, n_classes, input_dim, resolve_backend(config.backend))
