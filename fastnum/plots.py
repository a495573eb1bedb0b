"""fastnum's one figure factory, and the book's two training figures (figs. 4-11 and 4-12).

Every figure of the package, the experiments and the benchmark report comes from
:func:`new_figure`.  matplotlib is imported inside the functions so that
``import fastnum`` stays fast and works without it.  Figures are drawn on a bare
Agg canvas (no pyplot), so nothing opens a window, no global figure state leaks
between calls, and it works on headless machines.
"""

from __future__ import annotations

import numpy as np

from fastnum._io import save_png


def new_figure(ncols=1, nrows=1, panel_size=(6.4, 4.8), layout=None):
    """A matplotlib figure on an Agg canvas (no pyplot, no window) and its axes.

    Parameters
    ----------
    ncols, nrows : int
        Grid of panels.
    panel_size : (float, float)
        Width and height of one panel in inches.
    layout : {None, "constrained", "tight"}
        matplotlib's layout engine (None: fixed margins).

    Returns
    -------
    (Figure, list of Axes)
        Axes in row-major order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def plain_ticks(axis, ticks=None):
    """Label a log axis 0.1, 1, 10 instead of 10^-1, 10^0, 10^1.

    Parameters
    ----------
    axis : matplotlib.axis.Axis
        ``ax.xaxis`` or ``ax.yaxis``.
    ticks : sequence of float, optional
        Put the major ticks exactly here (e.g. the batch sizes of a sweep).
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())
    if ticks is not None:
        axis.set_major_locator(FixedLocator(list(ticks)))


def plot_loss(history, path):
    """Plot the training loss per iteration (the book's figure 4-11, left).

    Parameters
    ----------
    history : mapping
        Needs ``"loss"``: one loss value per iteration.  Non-finite values are
        left out, so a diverged run still gives a readable plot.
    path : str or os.PathLike
        PNG file to write (atomically).

    Returns
    -------
    pathlib.Path
        The ``path`` argument.
    """
    loss = np.asarray(history["loss"], dtype=np.float64)
    iters = np.arange(1, loss.size + 1)
    keep = np.isfinite(loss)
    fig, (ax,) = new_figure()
    ax.plot(iters[keep], loss[keep], linewidth=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_ylim(bottom=0)
    return save_png(fig, path)


def plot_accuracy(history, path):
    """Plot train and test accuracy per epoch (the book's figure 4-12).

    Parameters
    ----------
    history : mapping
        Needs ``"train_acc"`` and ``"test_acc"``: one value per evaluation.
    path : str or os.PathLike
        PNG file to write (atomically).

    Returns
    -------
    pathlib.Path
        The ``path`` argument.
    """
    epochs = np.arange(len(history["train_acc"]))
    fig, (ax,) = new_figure()
    ax.plot(epochs, history["train_acc"], marker="o", markersize=3, label="train acc")
    ax.plot(epochs, history["test_acc"], marker="s", markersize=3, linestyle="--", label="test acc")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.0)
    ax.legend(loc="lower right")
    return save_png(fig, path)
