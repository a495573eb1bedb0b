"""What the subcommands share: common options, their parsers, and how errors spell them.

Library errors name Python parameters (``batch_size``) in a
:class:`~fastnum._validate.Message`; :class:`OptionSpelling` writes them as the
options of the subcommand that ran (``--batch-size``), read from its own parser.
"""

from __future__ import annotations

import argparse

from fastnum._validate import Spelling
from fastnum.backend import BACKEND_ENV, BACKENDS, STRATEGIES, describe_backend, resolve_backend
from fastnum.train_config import TrainConfig

#: The book's settings, which ``fastnum train`` starts from.
DEFAULTS = TrainConfig()


class OptionSpelling(Spelling):
    """Parameter names written as the options of ``parser`` (``batch_size`` -> ``--batch-size``).

    An option's destination is the library's name for it (``--hidden`` stores
    ``hidden_size``, which ``TrainConfig`` takes); ``aliases`` adds library names whose
    option stores under another name (``{"rtol": "tol"}``).  Other names stay as they are.
    """

    def __init__(self, parser, aliases=None):
        # argparse lists its options only in _actions; argument groups share that list.
        self.options = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
        for name, dest in (aliases or {}).items():
            self.options[name] = self.options[dest]

    def name(self, name):
        """``--batch-size`` for ``batch_size``, ``--hidden-sizes[1]`` for ``hidden_sizes[1]``."""
        base, bracket, index = name.partition("[")
        return self.options.get(base, base) + bracket + index

    def setting(self, name, value):
        """As typed on the command line: ``--hidden-sizes 100,50``, ``--method engine``."""
        if name not in self.options:
            return super().setting(name, value)
        if value is True:
            return self.options[name]
        if isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        return f"{self.options[name]} {value}"


def layer_widths(text):
    """Parse ``--hidden-sizes 100,50`` into ``(100, 50)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer widths; write e.g. 100,50"
        ) from None


def add_backend_options(p):
    """--backend, --strategy, --data-dir and --verbose, which every subcommand takes."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="where the network runs: numba kernels, the NumPy reference, or auto "
        f"(numba when it compiles) (default: ${BACKEND_ENV}, else auto)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULTS.strategy,
        help="numba numerical gradient: delta reuses cached activations, full reruns "
        "the forward pass per perturbation (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four MNIST .gz files (default: $FASTNUM_MNIST_DIR, "
        "else the cache folder, downloading if needed)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the backend chosen and the settings; tracebacks on errors",
    )


def say_backend(args, backend=None):
    """Print (for --verbose) the backend that runs and, for numba, its threads."""
    backend = backend or resolve_backend(args.backend)
    print(describe_backend(backend))
    if backend == "numba":
        from fastnum._jit import get_num_threads

        print(f"threads: {getattr(args, 'threads', None) or get_num_threads()}")
