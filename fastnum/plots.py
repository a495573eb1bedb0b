"""The book's two training figures: loss per iteration (fig. 4-11) and accuracy per epoch (4-12).

matplotlib is imported inside the functions so that ``import fastnum`` stays fast
and works without it.  Figures are drawn on a bare Agg canvas (no pyplot), so
nothing opens a window, no global figure state leaks between calls, and it
works on headless machines.
"""

from __future__ import annotations

import numpy as np

from fastnum._io import save_png


def _new_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


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
    fig, ax = _new_axes()
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
    fig, ax = _new_axes()
    ax.plot(epochs, history["train_acc"], marker="o", markersize=3, label="train acc")
    ax.plot(epochs, history["test_acc"], marker="s", markersize=3, linestyle="--",
            label="test acc")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.0)
    ax.legend(loc="lower right")
    return save_png(fig, path)
