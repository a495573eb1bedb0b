"""The one place where numba is imported and its options are set.

Everything else does ``from fastnum._jit import njit, run_tasks``.  Without numba
installed, ``njit`` returns the plain Python function and :func:`run_tasks` runs the
tasks one after another, so every kernel stays valid Python and the NumPy fallback is
real.  No kernel is ``parallel=True``: each is a serial ``nogil`` task that
:func:`run_tasks` spreads over a thread pool (they compile several times faster).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

try:  # numba is a hard dependency, but the library must still work without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by the no-numba CI leg
    numba = None
    HAVE_NUMBA = False

#: True when kernels are really compiled (numba present and JIT not disabled).
JIT_ENABLED = HAVE_NUMBA and os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")

# fastmath stays off: it reorders sums and changes results, which would break the
# 1e-9 equivalence with the reference.  error_model="numpy" lets divisions
# vectorize (no ZeroDivisionError checks); cache=True keeps compiled kernels on
# disk so a second process skips the compile.
# FASTNUM_JIT_CACHE=0 turns the disk cache off (numba cannot inspect cached code).
# no_cfunc_wrapper: no kernel is used as a C callback or a first-class function value,
# so the C wrapper numba builds for each would only cost compile time (~5% of it).
JIT_OPTIONS = {
    "nogil": True,
    "cache": os.environ.get("FASTNUM_JIT_CACHE", "1") != "0",
    "fastmath": False,
    "error_model": "numpy",
    "no_cfunc_wrapper": True,
}


def _plain_types(args, kws):
    """The argument types with numba's literal types replaced by their plain types."""
    plain = tuple(numba.types.unliteral(a) for a in args)
    return plain, {k: numba.types.unliteral(v) for k, v in kws.items()}


def _compile_inner_copy(dispatcher, options):
    """Make calls from jitted code use a copy of ``dispatcher`` made for them alone.

    Calls from Python keep ``dispatcher`` itself.  The copy differs in three ways, none
    of which changes a result (the same code, compiled with the same options):

    - it compiles for plain types, never literals.  numba types a constant argument
      (``_act(v, RELU)``, ``one_sided=True``) as a literal and would compile the callee
      once per literal value as well as for the plain type; the kernels branch on such
      flags at run time anyway (after inlining, LLVM folds the constant all the same);
    - it has no Python entry point (``no_cpython_wrapper``): a helper that only jitted
      code calls would otherwise get a wrapper built and compiled for nothing;
    - it is not cached on disk: its callers are, with its code inlined into theirs, so
      a warm start never needs it, and a cold one need not write it.

    What each saved is measured in the README, "First call".  Python calls still work:
    they compile ``dispatcher`` (with its wrapper) for their own types.
    """
    inner = numba.njit(**{**options, "cache": False, "no_cpython_wrapper": True})(
        dispatcher.py_func
    )
    typed_for = inner.get_call_template

    def get_call_template(args, kws):
        return typed_for(*_plain_types(args, kws))

    # What numba asks a dispatcher called from jitted code: the call's type (compiling
    # it) when typing the caller, and the compiled overload when lowering the call.
    dispatcher.get_call_template = get_call_template
    dispatcher.get_overload = inner.get_overload
    dispatcher.inner_copy = inner  # for inspection and tests


if HAVE_NUMBA:

    class _NoAliasCompiler(numba.core.compiler.Compiler):
        """numba's default pipeline, with the data of the kernel's arrays marked noalias.

        What numba does for the body of a ``prange`` loop when no two of its arrays
        alias: LLVM then vectorizes loops that write one array while reading another
        without a runtime overlap check.  The serial two-layer kernels were slower than
        their ``prange`` versions without it (README, the book's path).
        """

        def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
            flags.noalias = True  # numba builds fresh flags for every compile
            super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


def njit(func=None, *, cache: bool = True, noalias: bool = False):
    """Compile ``func`` with the project's numba options (identity without numba).

    ``cache=False`` is for kernels that take other jitted functions as arguments,
    which numba cannot cache on disk.  ``noalias=True`` promises that no array the
    kernel writes shares memory with another of its array arguments (outputs allocated
    by the caller, as the public API does), so that its loops vectorize; a broken
    promise gives wrong results.
    """

    def wrap(f):
        if not HAVE_NUMBA:
            return f
        options = {**JIT_OPTIONS, "cache": cache and JIT_OPTIONS["cache"]}
        if noalias:
            options["pipeline_class"] = _NoAliasCompiler
        dispatcher = numba.njit(**options)(f)
        if JIT_ENABLED:
            _compile_inner_copy(dispatcher, options)
        return dispatcher

    return wrap(func) if func is not None else wrap


#: Tasks per thread in :func:`run_tasks`: a few, so that a task that runs long (an
#: image with many non-zero pixels) does not leave the other threads idle.
TASKS_PER_THREAD = 4

_pool = None  # run_tasks' helper threads, started on first use
_TASK_THREAD_PREFIX = "fastnum-task"
_pool_lock = threading.Lock()


def _forget_pool():
    """In a forked child: the parent's pool threads do not exist here, start a new pool."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()  # a parent's thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _helper_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            limit = numba.config.NUMBA_NUM_THREADS if HAVE_NUMBA else 1
            _pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=_TASK_THREAD_PREFIX)
        return _pool


def run_tasks(kernel, n_items, *args, min_items=1, tasks_per_thread=TASKS_PER_THREAD):
    """Call ``kernel(task, n_tasks, *args)`` for every task, on get_num_threads() threads.

    The serial counterpart of a ``prange`` loop over ``n_items`` (rows, samples,
    parameters): the kernel, compiled ``nogil``, handles items
    ``task * n_items // n_tasks`` up to ``(task + 1) * n_items // n_tasks``, so Python
    threads run the tasks truly in parallel.  A serial kernel compiles several times
    faster than a ``parallel=True`` one (no parfor passes, no gufunc), and runs as
    fast.  Every output cell must belong to one item, computed in a fixed order, so
    that neither the split nor the schedule can change a result.  Safe to call from
    several threads at once (no launch lock is needed) and after a fork.

    ``min_items``: the fewest items worth a task of their own.  Handing a task to
    another thread costs tens of microseconds (more on a loaded machine), so a
    kernel whose items take microseconds each runs small batches on one thread.
    ``tasks_per_thread``: 1 for a kernel called thousands of times a second on items
    of even cost (the book's two-layer path), where each extra task costs more in
    handing over than it gains in balance.
    """
    threads = get_num_threads()
    n_tasks = max(1, min(int(n_items) // max(1, min_items), tasks_per_thread * threads))
    helpers = min(threads, n_tasks) - 1
    if helpers <= 0 or not JIT_ENABLED:
        for task in range(n_tasks):
            kernel(task, n_tasks, *args)
        return
    tasks = itertools.count()  # next() on it is atomic: each task is taken once

    def work():
        while (task := next(tasks)) < n_tasks:
            kernel(task, n_tasks, *args)

    futures = [_helper_pool().submit(work) for _ in range(helpers)]
    try:
        work()  # the calling thread takes tasks too
    finally:
        for future in futures:
            future.result()  # re-raises a helper's exception here


# The thread count is kept here, per calling thread as numba keeps its own, rather than
# by numba: asking numba starts its threading layer (OpenMP's threads), which no kernel
# uses, and after which forking this process is unsafe, so gradcheck's worker processes
# would have to be fresh interpreters (and a network defined in a notebook could then
# only be checked serially, unless cloudpickle is installed).
_thread_counts = threading.local()


def get_num_threads() -> int:
    """The number of threads fastnum's kernels use when called from this thread.

    Returns
    -------
    int
        What :func:`set_num_threads` last set in this thread; else ``NUMBA_NUM_THREADS``
        (numba's default: the CPU count); 1 without numba.  ``numba.set_num_threads``
        does not change it.
    """
    if not HAVE_NUMBA:
        return 1
    return getattr(_thread_counts, "n", numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n: int) -> None:
    """Set the number of threads fastnum's kernels use when called from this thread.

    Parameters
    ----------
    n : int
        From 1 to ``NUMBA_NUM_THREADS`` (numba's limit, the CPU count unless that
        environment variable is set before numba is imported).  Without numba the count
        is still checked, against the CPU count, so that a bad ``--threads`` fails the
        same way on every install.  Results do not depend on it, bit for bit.

    Raises
    ------
    ParameterTypeError
        ``n`` is not an integer.
    ParameterError
        ``n`` is out of range; the message gives the range.
    """
    from fastnum._validate import ParameterError, check_int  # here: _validate imports NumPy

    n = check_int("threads", n)
    limit = numba.config.NUMBA_NUM_THREADS if HAVE_NUMBA else (os.cpu_count() or 1)
    if n > limit:
        raise ParameterError(
            "threads",
            "{name}={value} is out of range: use a value from 1 to {limit} "
            "(or set NUMBA_NUM_THREADS before importing fastnum).",
            value=n,
            limit=limit,
        )
    _thread_counts.n = n


@contextlib.contextmanager
def num_threads(n):
    """A context in which kernels called from this thread use ``n`` threads (None: as now).

    ``n`` is checked on entry as :func:`set_num_threads` checks it; on exit the thread
    gets back the count it had, so that a run with ``threads=1`` leaves nothing behind.
    """
    before = _thread_counts.__dict__.get("n")
    if n is not None:
        set_num_threads(n)
    try:
        yield
    finally:
        if before is None:
            _thread_counts.__dict__.pop("n", None)
        else:
            _thread_counts.n = before


def is_task_thread(thread) -> bool:
    """True for a thread of :func:`run_tasks`' pool: it runs nothing but kernel tasks."""
    return thread.name.startswith(_TASK_THREAD_PREFIX)


_blas_controller = None  # threadpoolctl's controller, found once: the lookup costs ~0.2 ms


def one_blas_thread():
    """A context in which BLAS (NumPy's matrix products) uses one thread.

    For code that calls BLAS between numba's parallel kernels: BLAS worker
    threads keep spinning for a while after each call and take the cores the
    kernels need (on 2 cores the book's backprop training ran about 10 times
    slower, and a gradient check of the chapter 5 network about 4 times).
    Entering costs ~6 us.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")
