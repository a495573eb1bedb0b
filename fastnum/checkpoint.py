"""The checkpoint of a training run, in one place: its keys, version, writing and reading.

``checkpoint.npz`` holds one JSON string ``meta`` and float arrays:

``loss``
    The batch loss of every iteration done.
the network's parameters (``W1``, ``b1``, ...)
    As ``net.params`` names them.
``optimizer.<slot>.<param>``
    The optimizer's state arrays (:meth:`fastnum.optimizers.Optimizer.state_dict`).
``batchnorm.running_mean.<k>``, ``batchnorm.running_var.<k>``
    Batch norm's running statistics of hidden layer ``k`` (format 3).

``meta`` has the keys of :data:`META_KEYS` (the run's config, backend, data fingerprint,
iteration, batch sampler state, epoch records and times, and a SHA-256 over everything
else), ``optimizer`` (its name, hyperparameters and step count) and, format 3, ``network``
(``dropout_rng``: the state of the generator the dropout masks come from, for networks
with dropout).  With all of that a resumed run is bit-identical to an uninterrupted one.

The format number is :data:`FORMAT`; older readable formats are :data:`READABLE_FORMATS`,
and what their configs lacked is filled in by :data:`OLD_CONFIG_DEFAULTS`.  A damaged or
hand-edited checkpoint, or one of another run, is refused with a :class:`CheckpointError`
that says why.  The run folder (:mod:`fastnum.rundir`) decides where the file lives and
writes it atomically.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np

from fastnum._io import atomic_open
from fastnum._validate import Message

__all__ = [
    "FORMAT",
    "MAY_CHANGE_ON_RESUME",
    "META_KEYS",
    "READABLE_FORMATS",
    "CheckpointError",
    "check_resumable",
    "checkpoint_refused",
    "checksum",
    "pack",
    "read",
    "unpack",
    "write",
]

#: Version of checkpoint.npz (and history.json): 2 added the checksum, 3 batch norm's
#: running statistics and the dropout generator (and the config's chapter 6 settings).
FORMAT = 3
#: Formats this version resumes from; a format 2 checkpoint has no chapter 6 state.
READABLE_FORMATS = (2, 3)
#: Config fields a resumed run may change: they do not alter any number computed.
#: ``backend`` is compared after resolution ("auto" -> "numba"), not literally.
MAY_CHANGE_ON_RESUME = ("iters", "threads", "backend")
#: Keys every readable checkpoint's metadata has.
META_KEYS = (
    "format",
    "config",
    "backend",
    "data",
    "iteration",
    "rng",
    "history",
    "epoch_seconds",
    "seconds",
    "checksum",
)
#: Config fields added after checkpoints existed, with the values runs had before them:
#: plain SGD (optimizers), the estimator defaults (SPSA) and no chapter 6 layers.
OLD_CONFIG_DEFAULTS = {
    "optimizer": "sgd",
    **dict.fromkeys(("momentum", "decay_rate", "beta1", "beta2")),
    "directions": 1,
    "spsa_distribution": "rademacher",
    "use_batchnorm": False,
    "dropout_ratio": None,
    "weight_decay_lambda": 0.0,
}
EPOCH_KEYS = ("epoch_iter", "train_acc", "test_acc")
#: Prefixes of the state arrays: optimizer.<slot>.<param>, batchnorm.<statistic>.<layer>.
OPTIMIZER_PREFIX = "optimizer."
BATCHNORM_PREFIX = "batchnorm."
_STATISTICS = ("running_mean", "running_var")


class CheckpointError(ValueError):
    """``checkpoint.npz`` is unreadable, damaged, edited, or from another run."""


def checkpoint_refused(problem):
    """A :class:`CheckpointError`: ``problem``, then the two ways on (a new run or folder)."""
    return CheckpointError(
        Message(
            "{problem}; start a new run (overwrite=True, --overwrite) or use another {out_dir}.",
            problem=problem,
        )
    )


def checksum(meta, arrays):
    """SHA-256 over the metadata (without its checksum) and every array's name, type and bytes."""
    digest = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "checksum"}
    digest.update(json.dumps(body, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def write(path, meta, loss, params):
    """Write ``meta`` (JSON), the loss list and ``params`` (all state arrays) to ``path``,
    atomically and signed with :func:`checksum`; the caller reports OSErrors."""
    arrays = {"loss": np.asarray(loss, dtype=np.float64), **params}
    meta = {**meta, "format": FORMAT}
    meta["checksum"] = checksum(meta, arrays)
    with atomic_open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read(path, param_names):
    """Return ``(meta, arrays)`` of the checkpoint at ``path``, or raise :class:`CheckpointError`.

    ``arrays`` holds ``loss``, the parameters ``param_names`` and every other array the
    file holds (optimizer and batch norm state): the checksum covers them all.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in ("loss", *param_names)}
            # And every other array (an optimizer's state): the checksum covers them all.
            arrays.update({k: z[k] for k in z.files if k not in arrays and k != "meta"})
            meta = json.loads(str(z["meta"]))
    # Whatever a damaged file makes np.load raise (EOFError for zero bytes, BadZipFile,
    # KeyError for a missing array, ValueError for bad JSON) means one thing to the user.
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise checkpoint_refused(f"{path} is not a readable fastnum checkpoint ({exc})") from exc
    if not isinstance(meta, dict):
        raise checkpoint_refused(
            f"{path} is not a readable fastnum checkpoint (its metadata is not a mapping)"
        )
    if meta.get("format") not in READABLE_FORMATS:
        raise checkpoint_refused(
            f"{path} has checkpoint format {meta.get('format')!r}; this fastnum reads "
            f"formats {', '.join(map(str, READABLE_FORMATS))}"
        )
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise checkpoint_refused(
            f"{path} is not a readable fastnum checkpoint (its metadata lacks {', '.join(missing)})"
        )
    for name in param_names:
        if not np.isfinite(arrays[name]).all():
            raise checkpoint_refused(
                f"{path} holds non-finite parameters ({name} contains NaN or inf): no "
                f"fastnum run writes such a checkpoint, so the file was damaged or edited"
            )
    if meta["checksum"] != checksum(meta, arrays):
        raise checkpoint_refused(
            f"{path} does not match its checksum: it was damaged or edited after it was "
            f"written (parameters, loss list or metadata), and resuming from it would not "
            f"give the uninterrupted run's numbers"
        )
    _check_lengths(meta, arrays, path)
    return meta, arrays


def _check_lengths(meta, arrays, path):
    it, h = meta["iteration"], meta["history"]
    problems = []
    if not isinstance(it, int) or it < 0:
        problems.append(f"iteration {it!r} is not a count")
    elif len(arrays["loss"]) != it:
        problems.append(f"iteration {it} but {len(arrays['loss'])} recorded losses")
    if not isinstance(h, dict) or any(not isinstance(h.get(k), list) for k in EPOCH_KEYS):
        problems.append("the epoch history is incomplete")
    elif len({len(h[k]) for k in EPOCH_KEYS} | {len(meta["epoch_seconds"])}) != 1:
        problems.append("the epoch records have different lengths")
    if problems:
        raise checkpoint_refused(f"{path} is inconsistent ({'; '.join(problems)})")


def check_resumable(meta, config, backend, data_info, per_epoch, path):
    """Raise :class:`CheckpointError` unless ``meta`` is a checkpoint of the same run.

    ``config`` is the new run's config as a dict, ``backend`` its resolved backend,
    ``data_info`` its data description and ``per_epoch`` its iterations per epoch.
    """
    saved = meta["config"]
    diffs, values = [], {}
    for k, now in config.items():
        was = saved.get(k)
        if k not in MAY_CHANGE_ON_RESUME and was != now:
            # The setting's name is a field of the Message, so that a caller can spell it.
            diffs.append("{" + k + "}={" + k + "_was!r} there, {" + k + "_now!r} now")
            values.update({f"{k}_was": was, f"{k}_now": now})
    if meta["backend"] != backend:
        diffs.append("backend {backend_was!r} there, {backend_now!r} now")
        values.update(backend_was=meta["backend"], backend_now=backend)
    if meta["data"] != data_info:
        diffs.append("different training/test data")
    if diffs:
        raise CheckpointError(
            Message(
                "cannot resume from {path}: it was made with other settings ("
                + "; ".join(diffs)
                + "). Resume with the original settings, or start a new run in another "
                "{out_dir}.",
                path=path,
                **values,
            )
        )
    it = meta["iteration"]
    # The book evaluates after iterations 1, 1 + per_epoch, ...: the records must say so.
    if meta["history"]["epoch_iter"] != list(range(1, it + 1, per_epoch)):
        raise checkpoint_refused(
            f"{path} is inconsistent (its epoch records do not follow the "
            f"schedule of {it} iterations, {per_epoch} per epoch)"
        )
    if it > config["iters"]:
        raise CheckpointError(
            Message(
                "cannot resume from {path}: it is at iteration {it}, past {name}={value}; pass "
                "{name} >= {it}.",
                "iters",
                path=path,
                it=it,
                value=config["iters"],
            )
        )


# --- a run's state <-> a checkpoint ----------------------------------------------------------


def _network_state(net):
    """(meta, arrays) of the network's training state besides its parameters."""
    meta, arrays = {}, {}
    if getattr(net, "use_dropout", False):  # the masks of the steps to come
        meta["dropout_rng"] = net.dropout_rng.bit_generator.state
    for k, stats in getattr(net, "running_stats", {}).items():
        for name, a in zip(_STATISTICS, stats, strict=True):
            arrays[f"{BATCHNORM_PREFIX}{name}.{k}"] = a
    return meta, arrays


def pack(run):
    """``(meta, loss, arrays)`` of a training run's state, as :func:`write` takes them.

    ``run`` is the trainer's run (:mod:`fastnum.train`): its config ``cfg``, ``backend``,
    ``data``, ``iteration``, batch sampler ``rng``, ``history``, ``epoch_seconds``,
    ``seconds()``, ``optimizer`` and ``net``.
    """
    state = run.optimizer.state_dict()
    arrays = {
        f"{OPTIMIZER_PREFIX}{slot}.{key}": a
        for slot, slot_arrays in state.pop("state").items()
        for key, a in slot_arrays.items()
    }
    net_meta, net_arrays = _network_state(run.net)
    meta = {
        "config": run.cfg.to_dict(),
        "backend": run.backend,
        "data": run.data.info,
        "iteration": run.iteration,
        "rng": run.rng.bit_generator.state,
        "history": {k: v for k, v in run.history.items() if k != "loss"},
        "epoch_seconds": run.epoch_seconds,
        "seconds": run.seconds(),
        "optimizer": state,  # name, hyperparameters, iterations; its arrays beside params
        "network": net_meta,
    }
    return meta, run.history["loss"], {**run.net.params, **arrays, **net_arrays}


def _saved_optimizer(meta, arrays, optimizer, lr):
    """The optimizer state of a checkpoint, as ``Optimizer.load_state_dict`` takes it."""
    saved = meta.get("optimizer")
    if saved is None:  # written before optimizers existed: plain SGD, no state
        saved = {"name": "sgd", "hyperparameters": {"lr": lr}}
        saved["iterations"] = meta["iteration"]
    slots = {slot: {} for slot in optimizer.SLOTS}
    for name, a in arrays.items():
        if name.startswith(OPTIMIZER_PREFIX):
            slot, key = name[len(OPTIMIZER_PREFIX) :].split(".", 1)
            slots.setdefault(slot, {})[key] = a
    return {**saved, "state": slots}


def _restore_network(net, meta, arrays):
    """Put batch norm's running statistics and the dropout generator back into ``net``."""
    saved = meta.get("network", {})
    if getattr(net, "use_dropout", False):
        net.dropout_rng.bit_generator.state = saved["dropout_rng"]
    for k in getattr(net, "running_stats", {}):
        net.running_stats[k] = tuple(
            np.array(arrays[f"{BATCHNORM_PREFIX}{name}.{k}"]) for name in _STATISTICS
        )


def unpack(run, meta, arrays):
    """Continue ``run`` (fresh, of the new config) from a checkpoint read by :func:`read`.

    Checks that the checkpoint is of the same run (:func:`check_resumable`), then
    restores the parameters, the optimizer's state, the batch sampler, the network's
    batch norm statistics and dropout generator, the iteration and the history.
    """
    meta["config"] = {**OLD_CONFIG_DEFAULTS, **meta["config"]}
    path = run.folder.checkpoint
    check_resumable(meta, run.cfg.to_dict(), run.backend, run.data.info, run.per_epoch, path)
    try:
        state = _saved_optimizer(meta, arrays, run.optimizer, run.cfg.lr)
        if state["iterations"] != meta["iteration"]:
            raise ValueError(f"{state['iterations']} optimizer steps")
        run.optimizer.load_state_dict(state)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise checkpoint_refused(f"{path} is inconsistent (its optimizer state: {exc})") from exc
    try:
        _restore_network(run.net, meta, arrays)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise checkpoint_refused(
            f"{path} is inconsistent (its batch norm or dropout state: {exc!r})"
        ) from exc
    for key in run.net.params:
        run.net.params[key][...] = arrays[key]
    run.rng.bit_generator.state = meta["rng"]
    run.iteration = meta["iteration"]
    run.history = {"loss": arrays["loss"].tolist(), **meta["history"]}
    run.epoch_seconds, run.seconds_before = meta["epoch_seconds"], meta["seconds"]
