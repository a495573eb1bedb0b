"""The run folder: one run per folder, leftovers of killed writes, checked checkpoints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastnum import checkpoint, rundir
from fastnum.cli import main
from fastnum.rundir import CheckpointError, RunFolderError
from tests._training import SimulatedInterruptError, blob_data, quiet_train, small, stop_at_epoch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blobs():
    """Four Gaussian blobs in 6-D: 300 training and 100 test samples."""
    return blob_data(7)


def read_checkpoint(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        return json.loads(str(z["meta"])), arrays


def write_checkpoint(path, meta, arrays, sign=False):
    if sign:  # as a forger who knows the checksum would
        meta = {**meta, "checksum": checkpoint.checksum(meta, arrays)}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


@pytest.fixture
def finished(blobs, tmp_path):
    """A completed run's folder (30 iterations, checkpoint at iteration 30)."""
    quiet_train(small(), blobs, tmp_path)
    return tmp_path


# --- one run per folder -----------------------------------------------------------------------


def _wait_for(path, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _endless_run(out, mnist_source_dir):
    """``fastnum train`` arguments of a run that lasts until stopped, checkpointing often."""
    return [
        "train",
        "--grad",
        "numerical",
        "--backend",
        "numpy",
        "--iters",
        "100000",
        "--batch-size",
        "10",
        "--train-size",
        "100",
        "--test-size",
        "100",
        "--hidden",
        "3",
        "--data-dir",
        str(mnist_source_dir),
        "--out",
        str(out),
        "-q",
    ]


def _outputs(out):
    """The folder's files, without the running run's half-written temporary copies."""
    return sorted(p.name for p in out.iterdir() if ".part." not in p.name)


def test_a_second_run_in_the_same_folder_is_refused_and_a_stale_lock_reported(
    tmp_path, mnist_source_dir, capsys
):
    out = tmp_path / "run"
    argv = _endless_run(out, mnist_source_dir)
    first = subprocess.Popen(
        [sys.executable, "-m", "fastnum.cli", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Each save writes checkpoint.npz, then history.json: waiting for the checkpoint
        # alone left a window in which history.json appeared after `before` was taken.
        _wait_for(out / "checkpoint.npz")
        _wait_for(out / "history.json")
        owner = json.loads((out / "run.lock").read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        before = _outputs(out)
        # The first try, without options, must already say why (not "already holds a run,
        # continue it with --resume"); --overwrite would delete the running run's files.
        in_use = f"is in use by PID {first.pid} ({socket.gethostname()}, started "
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main([*argv, *extra]) == 2
            line = capsys.readouterr().err.strip()
            assert in_use in line and "\n" not in line, line
        assert before == _outputs(out)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL and (out / "run.lock").exists()

    assert main([*argv, "--resume"]) == 2
    line = capsys.readouterr().err.strip()
    assert "stale lock" in line and f"process {first.pid}" in line and "no longer runs" in line
    assert f"delete {out / 'run.lock'}, then continue with" in line and "--resume" in line
    (out / "run.lock").unlink()  # as the message says
    done = read_checkpoint(out / "checkpoint.npz")[0]["iteration"]
    longer = [str(done + 3) if a == "100000" else a for a in argv]
    assert main([*longer, "--resume"]) == 0
    assert read_checkpoint(out / "checkpoint.npz")[0]["iteration"] == done + 3
    assert not (out / "run.lock").exists()


def test_sigterm_stops_a_run_cleanly_and_unlocks_its_folder(tmp_path, mnist_source_dir):
    out = tmp_path / "run"
    argv = _endless_run(out, mnist_source_dir)
    run = subprocess.Popen(
        [sys.executable, "-m", "fastnum.cli", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(out / "checkpoint.npz")
        run.send_signal(signal.SIGTERM)  # as kill, timeout or a job scheduler stop a run
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 143, err
    assert err.strip() == (
        f"fastnum train: terminated (SIGTERM); continue with the same options plus "
        f"--resume --out {out}"
    )
    assert not (out / "run.lock").exists()  # no stale lock to delete by hand
    done = read_checkpoint(out / "checkpoint.npz")[0]["iteration"]
    longer = [str(done + 2) if a == "100000" else a for a in argv]
    assert main([*longer, "--resume"]) == 0


def _lock(out, pid, host=None):
    out.mkdir(exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00"}
    (out / "run.lock").write_text(json.dumps(owner))


def test_lock_of_a_live_process_refuses_with_its_pid(blobs, tmp_path):
    _lock(tmp_path, os.getpid())
    with pytest.raises(RunFolderError, match=f"in use by PID {os.getpid()} ") as info:
        quiet_train(small(), blobs, tmp_path)
    assert f"({socket.gethostname()}, started 2024-01-01T00:00:00)" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]  # nothing written


@pytest.mark.parametrize(
    "holds, options",
    [
        ((), {"resume": True}),  # the first run has not written a checkpoint yet
        (("history.json", "checkpoint.npz"), {}),
        (("history.json", "checkpoint.npz"), {"overwrite": True}),
        (("history.json", "checkpoint.npz"), {"resume": True}),
    ],
    ids=["resume-before-checkpoint", "plain", "overwrite", "resume"],
)
def test_a_folder_in_use_is_refused_first_whatever_it_holds(tmp_path, holds, options):
    first = rundir.RunFolder(tmp_path).open()
    try:
        for name in holds:
            (tmp_path / name).write_text("the first run's")
        with pytest.raises(RunFolderError, match=f"is in use by PID {os.getpid()} "):
            rundir.RunFolder(tmp_path).open(**options)
        for name in holds:
            assert (tmp_path / name).read_text() == "the first run's", name
    finally:
        first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(holds)  # no lock, no draft


def test_the_lock_never_exists_without_its_owner(tmp_path):
    """Whatever line of rundir runs, a run.lock on disk already names its owner."""
    lock, seen = tmp_path / "run.lock", []

    def look(frame, event, arg):
        if lock.exists():
            seen.append(lock.read_text())
        return look

    def tracer(frame, event, arg):  # a look after every line executed inside rundir.py
        return look if frame.f_code.co_filename == rundir.__file__ else None

    sys.settrace(tracer)
    try:
        folder = rundir.RunFolder(tmp_path).open()
    finally:
        sys.settrace(None)
    folder.close()
    assert seen, "the lock was never seen"
    assert all(text.startswith("{") and json.loads(text)["pid"] == os.getpid() for text in seen)


def test_lock_without_hard_links(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(rundir.os, "link", no_links)
    folder = rundir.RunFolder(tmp_path).open()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RunFolderError, match=f"in use by PID {os.getpid()} "):
        rundir.RunFolder(tmp_path).open()
    folder.close()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_released_while_read_is_taken(tmp_path, monkeypatch):
    first = rundir.RunFolder(tmp_path).open()
    real_read, reads = rundir.RunFolder._read_owner, []

    def racing_read(self):
        reads.append(self)
        if len(reads) == 1:
            return None  # the check before locking: the first run started just after it
        first.close()  # the first run ends between the second's failed link and this read
        return real_read(self)

    monkeypatch.setattr(rundir.RunFolder, "_read_owner", racing_read)
    second = rundir.RunFolder(tmp_path).open()
    assert len(reads) == 2 and second._locked
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_drafts_of_dead_runs_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead, alive = f".run.lock.{gone.pid}@{host}.tmp", f".run.lock.{os.getppid()}@{host}.tmp"
    for name in (dead, alive):
        (tmp_path / name).write_text("{}")
    rundir.RunFolder(tmp_path).open().close()
    assert [p.name for p in tmp_path.iterdir()] == [alive]  # a live process's draft is left alone


def test_stale_lock_is_reported_not_taken_over(blobs, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(tmp_path, gone.pid)
    with pytest.raises(RunFolderError, match="stale lock") as info:
        quiet_train(small(), blobs, tmp_path)
    assert f"process {gone.pid}" in str(info.value) and "then start the run again" in str(
        info.value
    )
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == gone.pid  # untouched


def test_unreadable_lock_says_how_to_clear_it(blobs, tmp_path):
    (tmp_path / "run.lock").write_text("")
    with pytest.raises(RunFolderError, match="cannot be read .* delete .*run.lock"):
        quiet_train(small(), blobs, tmp_path)


def test_lock_is_released_however_the_run_ends(blobs, tmp_path):
    quiet_train(small(), blobs, tmp_path / "done")
    with pytest.raises(SimulatedInterruptError):
        quiet_train(small(), blobs, tmp_path / "stopped", callback=stop_at_epoch(1))
    with pytest.raises(Exception, match="diverged"):
        quiet_train(small(lr=1e308), blobs, tmp_path / "diverged")
    with pytest.raises(CheckpointError):
        quiet_train(small(lr=0.5), blobs, tmp_path / "done", resume=True)
    for run in ("done", "stopped", "diverged"):
        assert not (tmp_path / run / "run.lock").exists(), run


# --- leftovers of killed writes ---------------------------------------------------------------

LEFTOVERS = (
    ".checkpoint.npz.k2j3_x.part.npz",
    ".history.json.abc123.part.json",
    ".params.npz.q.part.npz",
    ".loss.png.zz.part.png",
)


@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_partial_files_of_killed_writes_are_removed(blobs, finished, how):
    for name in LEFTOVERS:
        (finished / name).write_bytes(b"half a file")
    (finished / "notes.txt").write_text("mine")
    (finished / ".history.json.keep").write_text("not ours")
    quiet_train(small(iters=40), blobs, finished, **{how: True})
    names = sorted(p.name for p in finished.iterdir())
    assert names == sorted(
        [
            ".history.json.keep",
            "accuracy.png",
            "checkpoint.npz",
            "history.json",
            "loss.png",
            "notes.txt",
            "params.npz",
        ]
    )


# --- the out folder ---------------------------------------------------------------------------


def test_out_dir_checks(blobs, tmp_path):
    with pytest.raises(ValueError, match="out_dir='' is empty"):
        quiet_train(small(), blobs, "")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        quiet_train(small(), blobs, a_file)
    with pytest.raises(TypeError, match="out_dir=3"):
        quiet_train(small(), blobs, 3)
    assert a_file.read_text() == "mine"


def test_failed_resume_check_creates_no_folder(blobs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        quiet_train(small(), blobs, tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()


# --- damaged and edited checkpoints -----------------------------------------------------------


def _resume_error(blobs, folder):
    with pytest.raises(CheckpointError) as info:
        quiet_train(small(iters=40), blobs, folder, resume=True)
    return str(info.value)


@pytest.mark.parametrize("damage", ["zero-bytes", "no-config", "no-history", "not-a-dict"])
def test_unreadable_checkpoints_get_one_clear_error(blobs, finished, damage):
    path = finished / "checkpoint.npz"
    if damage == "zero-bytes":
        path.write_bytes(b"")
    else:
        meta, arrays = read_checkpoint(path)
        if damage == "not-a-dict":
            meta = [1, 2]
        else:
            del meta[damage.removeprefix("no-")]
        write_checkpoint(path, meta, arrays)
    message = _resume_error(blobs, finished)
    assert "is not a readable fastnum checkpoint" in message and "--overwrite" in message


def test_cli_reports_a_zero_byte_checkpoint_in_one_line(finished, capsys, monkeypatch, blobs):
    import fastnum.data

    monkeypatch.setattr(fastnum.data, "load_mnist", lambda **kw: blobs)
    (finished / "checkpoint.npz").write_bytes(b"")
    assert main(["train", "--resume", "--out", str(finished), "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not a readable fastnum checkpoint" in err


def _set_back(meta, arrays):
    meta["iteration"] -= 10


def _cut_loss(meta, arrays):
    arrays["loss"] = arrays["loss"][:-5]


def _replace_params(meta, arrays):
    arrays["W1"] = arrays["W1"] * 2


@pytest.mark.parametrize("edit", [_set_back, _cut_loss, _replace_params])
def test_edited_checkpoint_fails_its_checksum(blobs, finished, edit):
    path = finished / "checkpoint.npz"
    meta, arrays = read_checkpoint(path)
    edit(meta, arrays)
    write_checkpoint(path, meta, arrays)
    assert "does not match its checksum" in _resume_error(blobs, finished)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set_back, "iteration 20 but 30 recorded losses"),
        (
            lambda m, a: (_set_back(m, a), _cut_loss(m, a), _cut_loss(m, a)),
            "do not follow the schedule of 20 iterations",
        ),
        (lambda m, a: m["history"]["train_acc"].pop(), "epoch records have different lengths"),
    ],
)
def test_resigned_checkpoint_must_agree_with_its_history(blobs, finished, edit, problem):
    path = finished / "checkpoint.npz"
    meta, arrays = read_checkpoint(path)
    edit(meta, arrays)
    write_checkpoint(path, meta, arrays, sign=True)
    message = _resume_error(blobs, finished)
    assert "is inconsistent" in message and problem in message


def test_checkpoint_with_nan_parameters_says_so(blobs, finished):
    path = finished / "checkpoint.npz"
    meta, arrays = read_checkpoint(path)
    arrays["b2"][1] = np.nan
    write_checkpoint(path, meta, arrays, sign=True)
    message = _resume_error(blobs, finished)
    assert "holds non-finite parameters (b2 contains NaN or inf)" in message
    assert "learning rate" not in message


def test_untouched_checkpoint_still_resumes(blobs, finished):
    meta, arrays = read_checkpoint(finished / "checkpoint.npz")
    write_checkpoint(finished / "checkpoint.npz", meta, arrays)  # rewritten, same content
    assert quiet_train(small(iters=40), blobs, finished, resume=True).history["epoch_iter"] == [
        1,
        11,
        21,
        31,
    ]
