"""The reader's own network for ``fastnum gradcheck``: ``--model``, ``--model-args``, ``--params``.

``--model FILE.py:CLASS`` imports the reader's file as a module (Dask workers get it
by value), ``--model-args`` is checked against the class's constructor before it is
called, and ``--params FILE.npz`` loads arrays into any network's ``params`` in place.
Everything the reader's code raises, and every malformed file, ends as one
``ValueError`` line quoting the reader's own names: the command exits with 2.

This is command-line work (parsing ``FILE.py:CLASS`` and JSON text, messages that name
the options), so it lives with the CLI; :func:`fastnum.gradcheck.gradcheck` itself
takes any built network and knows nothing of files.
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
from pathlib import Path

from fastnum.gradcheck._errors import describe_exception


def _where_in(file, exc):
    """`` (FILE, line N)`` of the deepest frame of ``exc`` inside ``file``, else ``""``."""
    import traceback as tb

    if isinstance(exc, SyntaxError):  # its message already names the file and line
        return ""
    target = file.resolve()
    lines = [f.lineno for f in tb.extract_tb(exc.__traceback__) if Path(f.filename) == target]
    return f" ({file.name}, line {lines[-1]})" if lines else ""


def _load_model_class(spec):
    """``path/to/file.py:ClassName`` -> the class, importing the file as a module."""
    import importlib.util

    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"--model {spec!r} must be FILE.py:CLASS, e.g. my_net.py:TwoLayerNet.")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--model file {path} does not exist.")
    module_name = f"fastnum_model_{file.stem}"
    # An absolute path, so that tracebacks (and _where_in) name the file wherever we run.
    module_spec = importlib.util.spec_from_file_location(module_name, file.resolve())
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # pickling for worker processes finds it here
    sys.path.insert(0, str(file.resolve().parent))  # the file's own imports (e.g. common/)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # whatever the reader's file raises: one line
        del sys.modules[module_name]
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = "; run fastnum from the folder the file's imports expect"
        raise ValueError(
            f"--model {path} could not be imported: {describe_exception(exc)}"
            f"{_where_in(file, exc)}{hint}."
        ) from exc
    finally:
        sys.path.remove(str(file.resolve().parent))
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)  # Dask workers cannot import it
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        pass
    if not isinstance(getattr(module, name, None), type):
        classes = sorted(
            k
            for k, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module_name
        )
        defined = f"; it defines {', '.join(classes)}" if classes else ""
        raise ValueError(f"--model: {path} defines no class {name!r}{defined}.")
    return getattr(module, name)


# Values for the constructor arguments of the book's networks (and ones named like them),
# for a --model-args example when the argument has no default.
_BOOK_ARGS = {
    "input_size": 784,
    "hidden_size": 50,
    "output_size": 10,
    "hidden_size_list": [100, 100],
    "input_dim": [1, 28, 28],
    "weight_init_std": 0.01,
}


def _as_json(value):
    """``value`` as JSON text if JSON gives it back (tuples as arrays), else None."""

    def lists(v):
        if isinstance(v, tuple | list):
            return [lists(x) for x in v]
        if isinstance(v, dict):
            return {k: lists(x) for k, x in v.items()}
        return v

    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == lists(value) else None  # e.g. int dict keys


def _constructor(cls):
    """The keyword parameters of ``cls(...)`` and whether it takes ``**kwargs``, or None."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a class built in C)
        return None
    keywords = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return keywords, any(p.kind == p.VAR_KEYWORD for p in params)


def _model_args_example(cls):
    """``--model-args '{...}'`` for ``cls`` as valid JSON, and a note on placeholders."""
    ctor = _constructor(cls)
    if ctor is None or (not ctor[0] and ctor[1]):  # nothing to read: the book's names
        return f"--model-args {shlex.quote(json.dumps(_BOOK_ARGS))}", ""
    fields, placeholders = [], []
    for p in ctor[0]:
        if p.default is p.empty:
            if p.name in _BOOK_ARGS:
                fields.append(f"{json.dumps(p.name)}: {json.dumps(_BOOK_ARGS[p.name])}")
            else:
                fields.append(f"{json.dumps(p.name)}: 0")
                placeholders.append(p.name)
        elif (default := _as_json(p.default)) is not None:
            fields.append(f"{json.dumps(p.name)}: {default}")
        # A default JSON cannot hold (an object, NaN) is left out: the class keeps it.
    example = f"--model-args {shlex.quote('{' + ', '.join(fields) + '}')}"
    note = f" (0 stands for your value of {', '.join(placeholders)})" if placeholders else ""
    return example, note


def _model_kwargs(cls, text):
    """--model-args parsed and checked against ``cls``'s constructor."""
    example, note = _model_args_example(cls)
    write = f"write e.g. {example}{note}"
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-args {text!r} is not valid JSON ({exc}); {write}.") from None
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"--model-args must be a JSON object of {cls.__name__}'s keyword arguments, "
            f"not {type(kwargs).__name__} {text!r}; {write}."
        )
    ctor = _constructor(cls)
    if ctor is None:
        return kwargs
    names = [p.name for p in ctor[0]]
    unknown = [k for k in kwargs if k not in names]
    if unknown and not ctor[1]:
        accepted = ", ".join(names) if names else "no arguments"
        raise ValueError(
            f"--model-args: {cls.__name__} takes no argument {', '.join(map(repr, unknown))}; "
            f"it accepts {accepted}; {write}."
        )
    missing = [p.name for p in ctor[0] if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise ValueError(
            f"--model-args lacks {', '.join(map(repr, missing))}, which {cls.__name__} needs "
            f"(no default); {write}."
        )
    return kwargs


def build_model(args):
    """--model's class built with --model-args, NumPy's global generator seeded as the book's."""
    import numpy as np

    cls = _load_model_class(args.model)  # first: the --model-args example uses its names
    kwargs = _model_kwargs(cls, args.model_args)
    np.random.seed(args.seed)  # noqa: NPY002 - the book's classes draw from it
    try:
        return cls(**kwargs)
    except Exception as exc:  # the reader's constructor: one line, exit 2
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        if len(call) > 120:
            call = call[:117] + "..."
        file = Path(args.model.rpartition(":")[0])
        raise ValueError(
            f"--model: {cls.__name__}({call}) raised {describe_exception(exc)}"
            f"{_where_in(file, exc)}."
        ) from exc


def read_npz(path):
    """The named arrays of an .npz archive; one line saying what the file is otherwise."""
    import zipfile
    import zlib

    import numpy as np

    npz = str(Path(path).with_suffix(".npz"))  # np.savez adds .npz to any other name
    how = f"write one with np.savez({npz!r}, **net.params) (fastnum train writes params.npz)"
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise ValueError(f"--params {path} does not exist; {how}.") from None
    except OSError as exc:
        raise ValueError(f"--params {path} cannot be read ({describe_exception(exc)}).") from None
    if not head:
        what = "is empty"
    elif head == b"\x93NUMPY":
        what = "is a .npy file (one unnamed array)"
    elif not head.startswith(b"PK"):  # every zip archive, hence every .npz, starts so
        what = "is not a zip archive"
    else:
        what = None
    if what:
        raise ValueError(f"--params {path} {what}: not an .npz archive of named arrays; {how}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(
            f"--params {path} is a damaged .npz archive ({describe_exception(exc)}); {how}."
        ) from exc


def load_params_into(net, stored, path):
    """Copy FILE.npz's arrays ``stored`` into net.params in place (layers keep them)."""
    from fastnum._validate import as_shaped_params

    try:
        checked = as_shaped_params(stored, {name: v.shape for name, v in net.params.items()})
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ValueError(
            f"--params {path}: {message} Build the same network (e.g. --hidden N)."
        ) from None
    for name, value in net.params.items():
        value[...] = checked[name]
