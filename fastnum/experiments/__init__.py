"""Experiments: grids of seeded training runs that answer the questions the book's readers ask.

Each experiment is a module you run with ``python -m``::

    python -m fastnum.experiments.batch_size --quick
    python -m fastnum.experiments.depth_width --out docs/experiments/depth_width
    python -m fastnum.experiments.learning_rate --scheduler tcp://host:8786

Modules:

``grid``
    :func:`~fastnum.experiments.grid.run_one` (one seeded run of a *spec*) and
    :func:`~fastnum.experiments.grid.run_grid` (many, here or on a Dask cluster).
``output``
    CSV tables, the figure of an experiment, ``summary.md``.
``command``
    The command line every experiment shares (:class:`~fastnum.experiments.command.Experiment`).
``batch_size``, ``depth_width``, ``learning_rate``, ``estimators``
    One experiment each: its settings, specs, table, figure and findings.
``optimizers``, ``weight_init``, ``batch_norm``, ``overfitting``, ``hyperparameters``
    The book's chapter 6 experiments, with ``--grad backprop|numerical``; their runs
    go through ``_chapter6.run`` (a MultiLayerNet, an optimizer, per-iteration losses,
    per-epoch accuracies) instead of :func:`~fastnum.experiments.grid.run_one`.

A new experiment is one more module of that kind: an ``Experiment`` and a ``main``.
"""
