"""The ``fastnum`` command line: help, clear one-line errors, train and gradcheck on MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnum import cli
from fastnum._validate import Message, Setting
from fastnum.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--grad",
    "backprop",
    "--iters",
    "12",
    "--batch-size",
    "20",
    "--train-size",
    "100",
    "--test-size",
    "50",
    "--hidden",
    "5",
    "--backend",
    "numpy",
]


def one_error_line(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--help"],
            ["examples:", "fastnum train --grad backprop", "exit codes", "3 no verdict possible"],
        ),
        (
            ["train", "--help"],
            [
                "--grad {numerical,forward,spsa,backprop}",
                "--resume",
                "history.json",
                "--train-size N",
                "examples:",
            ],
        ),
        (
            ["gradcheck", "--help"],
            ["--tol", "1e-05", "1e-7", "examples:", "2 bad option or input, or --model's own"],
        ),
    ],
)
def test_help(capsys, argv, words):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: fastnum" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--lr", "-1"], ["fastnum train: error:", "--lr=-1.0", "> 0"]),
        (["train", "--h", "0"], ["--h=0.0"]),
        (["train", "--iters", "0"], ["--iters=0", "at least 1"]),
        (["train", "--hidden", "0"], ["--hidden=0"]),
        (["train", "--batch-size", "0"], ["--batch-size=0"]),
        (["train", "--threads", "0"], ["--threads=0"]),
        (["train", "--resume"], ["--resume needs --out DIR"]),
        (["gradcheck", "--tol", "-1"], ["fastnum gradcheck: error:", "--tol=-1.0"]),
        (["train", "--activation", "relu"], ["--activation='relu' needs --hidden-sizes"]),
        (["train", "--hidden-sizes", "30,0"], ["--hidden-sizes[1]=0"]),
    ],
)
def test_bad_values_fail_with_one_clear_line(capsys, argv, words):
    assert main(argv) == 2
    one_error_line(capsys, *words)


def test_relu_hint_is_an_option_the_parser_accepts(capsys):
    assert main(["train", "--activation", "relu"]) == 2
    line = one_error_line(capsys, "--hidden-sizes 50")
    assert "(50,)" not in line
    args = cli.build_parser().parse_args(["train", "--activation", "relu", "--hidden-sizes", "50"])
    assert args.hidden_sizes == (50,)


def _spelling(command):
    """The option spelling of ``fastnum COMMAND`` that main() writes error messages with."""
    return cli.build_parser().parse_args([command]).spelling


def test_a_setting_in_a_message_is_written_as_the_parser_accepts_it():
    message = Message("pass e.g. {example}.", example=Setting("hidden_sizes", (100, 50)))
    assert str(message) == "pass e.g. hidden_sizes=(100, 50)."
    assert message.spelled(_spelling("train")) == "pass e.g. --hidden-sizes 100,50."
    args = cli.build_parser().parse_args(["train", "--hidden-sizes", "100,50"])
    assert args.hidden_sizes == (100, 50)
    engine = Message("{engine} is not possible", engine=Setting("method", "engine"))
    assert engine.spelled(_spelling("gradcheck")) == "--method engine is not possible"


def test_gradcheck_negative_seed_names_the_option(capsys, monkeypatch):
    import fastnum.data

    monkeypatch.setattr(fastnum.data, "load_mnist", lambda **kw: pytest.fail("loaded MNIST"))
    assert main(["gradcheck", "--seed", "-3"]) == 2
    one_error_line(capsys, "--seed=-3", "non-negative")


def test_empty_out_is_refused_and_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK, "--out", ""]) == 2
    one_error_line(capsys, "--out='' is empty")
    assert list(tmp_path.iterdir()) == []


def test_invalid_threads_leave_no_out_folder(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    assert main(["train", *QUICK, *data_dir, "--threads", "100000", "--out", str(out)]) == 2
    one_error_line(capsys, "--threads=100000")
    assert not out.exists()


def test_out_on_a_file_names_it(capsys, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["train", *QUICK, "--out", str(a_file)]) == 2
    line = one_error_line(capsys, f"--out {a_file} is a file, not a folder", "--resume")
    assert "Errno" not in line and a_file.read_text() == "mine"


def test_unknown_backend_environment_variable_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("FASTNUM_BACKEND", "cuda")
    # Each command would also fail on its other options: the backend must be refused first.
    for command in (["train", "--lr", "-1"], ["gradcheck", "--tol", "-1"]):
        assert main(command) == 2
        one_error_line(
            capsys, "backend='cuda' (from $FASTNUM_BACKEND) is unknown", "unset FASTNUM_BACKEND"
        )
    # An explicit --backend wins: the error is now the next one, about --lr.
    assert main(["train", "--backend", "numpy", "--lr", "-1"]) == 2
    one_error_line(capsys, "--lr=-1.0")


def test_argparse_errors_return_2(capsys):
    assert main(["train", "--grad", "adam"]) == 2
    assert "invalid choice: 'adam'" in capsys.readouterr().err
    assert main(["train", "--iters", "many"]) == 2
    assert main(["train", "--hidden-sizes", "30;20"]) == 2
    assert "'30;20' is not a comma-separated list" in capsys.readouterr().err


def test_option_names_replace_python_names():
    train, gradcheck = _spelling("train"), _spelling("gradcheck")
    message = Message(
        "{name}={value} is larger than the training set; use {name} 100 or less",
        "batch_size",
        value=200,
    )
    assert message.spelled(train) == (
        "--batch-size=200 is larger than the training set; use --batch-size 100 or less"
    )
    message = Message("{name}=0 must be positive ({h}=1e-4)", "hidden_size")
    assert (
        message.spelled(train)
        == message.spelled(gradcheck)
        == "--hidden=0 must be positive (--h=1e-4)"
    )
    assert gradcheck.name("rtol") == "--tol" and train.name("out_dir") == "--out"
    # Names that are no option of the command, and values, stay as they are.
    assert Message("{x_train} has 5 features").spelled(train) == "x_train has 5 features"
    message = Message("see {path}, or a larger {train_size}.", path="runs/seed/lr.json")
    assert message.spelled(train) == "see runs/seed/lr.json, or a larger --train-size."
    assert message.spelled(gradcheck) == "see runs/seed/lr.json, or a larger train_size."


def test_keyboard_interrupt_returns_130_with_a_resume_hint(capsys, monkeypatch, tmp_path):
    import fastnum.train

    def interrupted(*args, **kwargs):
        (tmp_path / "checkpoint.npz").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(fastnum.train, "train", interrupted)
    assert main(["train", "--out", str(tmp_path)]) == 130
    assert f"--resume --out {tmp_path}" in capsys.readouterr().err


def test_unknown_backend_variable_from_the_shell():
    env = {**os.environ, "FASTNUM_BACKEND": "cuda"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastnum.cli", "train", "--iters", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "fastnum train: error: backend='cuda' (from $FASTNUM_BACKEND) "
        "is unknown; use one of auto, numba, numpy, or unset "
        "FASTNUM_BACKEND."
    )


def test_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "fastnum.cli", "train", "--lr", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "fastnum train: error: --lr=0.0 must be a finite number > 0; the book uses 0.1."
    )


# --- on MNIST ---------------------------------------------------------------------------------


@pytest.fixture
def data_dir(mnist_parsed_once):
    """``--data-dir`` options; MNIST is parsed once per session, not once per command."""
    return ["--data-dir", str(mnist_parsed_once)]


def test_train_reads_mnist_and_writes_outputs(capsys, tmp_path, mnist_source_dir):
    data_dir = ["--data-dir", str(mnist_source_dir)]  # the real loader, once
    out = tmp_path / "run"
    assert main(["train", *QUICK, *data_dir, "--out", str(out), "-v"]) == 0
    stdout = capsys.readouterr().out
    assert "backend: numpy reference" in stdout
    assert "train acc, test acc |" in stdout and f"outputs in {out}" in stdout
    doc = json.loads((out / "history.json").read_text())
    assert doc["status"] == "completed" and doc["config"]["iters"] == 12
    assert doc["config"]["hidden_size"] == 5 and doc["data"]["train_size"] == 100
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy.png", "checkpoint.npz", "history.json", "loss.png", "params.npz"]


def test_train_default_out_dir(capsys, tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK, *data_dir, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-backprop") and (run / "params.npz").is_file()


def test_train_resume_and_extend(capsys, tmp_path, data_dir):
    base = ["train", *QUICK, *data_dir, "--out", str(tmp_path / "a"), "-q"]
    assert main(base) == 0
    assert main(base) == 2  # the folder already holds a run
    one_error_line(capsys, "already holds a run", "--resume", "--overwrite")
    assert main([*base, "--resume", "--iters", "20"]) == 0
    assert (
        main(["train", *QUICK, *data_dir, "--iters", "20", "--out", str(tmp_path / "b"), "-q"]) == 0
    )
    with np.load(tmp_path / "a" / "params.npz") as a, np.load(tmp_path / "b" / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ("W1", "b1", "W2", "b2"))
    assert main([*base, "--resume", "--lr", "0.5"]) == 2
    one_error_line(capsys, "cannot resume", "--lr=0.1 there, 0.5 now")


def test_train_multilayer_relu(capsys, tmp_path, data_dir):
    out = tmp_path / "deep"
    argv = [
        "train",
        *QUICK,
        *data_dir,
        "--hidden-sizes",
        "6,4",
        "--activation",
        "relu",
        "--weight-init-std",
        "0.1",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "history.json").read_text())
    assert doc["config"]["hidden_sizes"] == [6, 4] and doc["config"]["activation"] == "relu"
    with np.load(out / "params.npz") as params:
        assert {k: params[k].shape for k in params} == {
            "W1": (784, 6),
            "b1": (6,),
            "W2": (6, 4),
            "b2": (4,),
            "W3": (4, 10),
            "b3": (10,),
        }


def test_train_follows_fastnum_backend(capsys, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("FASTNUM_BACKEND", "numpy")
    quick = [a for a in QUICK if a not in ("--backend", "numpy")]
    assert (
        main(
            [
                "train",
                *quick,
                "--grad",
                "numerical",
                "--iters",
                "2",
                *data_dir,
                "--out",
                str(tmp_path),
                "-q",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "history.json").read_text())["backend"] == "numpy"


def test_full_disk_is_one_line_with_the_resume_hint(capsys, tmp_path, data_dir, monkeypatch):
    import errno
    import os

    import fastnum.rundir

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    real_write_text = fastnum.rundir.write_text
    monkeypatch.setattr(fastnum.rundir, "write_text", disk_full)  # history.json's writer
    out = tmp_path / "run"
    assert main(["train", *QUICK, *data_dir, "--out", str(out), "-q"]) == 2
    line = one_error_line(
        capsys, f"could not write {out / 'history.json'}: the disk is full", f"--resume --out {out}"
    )
    assert "Errno" not in line and (out / "checkpoint.npz").is_file()
    assert not (out / "run.lock").exists()
    monkeypatch.setattr(fastnum.rundir, "write_text", real_write_text)  # space freed
    assert main(["train", *QUICK, *data_dir, "--out", str(out), "-q", "--resume"]) == 0


def test_train_divergence_exits_1(capsys, tmp_path, data_dir):
    assert main(["train", *QUICK, *data_dir, "--lr", "1e308", "--out", str(tmp_path), "-q"]) == 1
    line = one_error_line(capsys, "fastnum train: diverged:", "--lr=1e+308", "Lower the learning")
    assert str(tmp_path / "history.json") in line
    assert json.loads((tmp_path / "history.json").read_text())["status"] == "diverged"


def test_train_data_errors(capsys, tmp_path, data_dir):
    assert main(["train", *QUICK, *data_dir, "--batch-size", "101", "--out", str(tmp_path)]) == 2
    one_error_line(
        capsys,
        "--batch-size=101 is larger than the training set (100 samples)",
        "or a larger --train-size",
    )
    assert main(["train", *QUICK, *data_dir, "--train-size", "70000"]) == 2
    one_error_line(capsys, "--train-size=70000 is larger than the 60000 samples")


def test_missing_mnist_is_a_clear_error(capsys, tmp_path):
    assert main(["train", *QUICK, "--data-dir", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, "fastnum train: error:", "nowhere")


def test_gradcheck_passes(capsys, data_dir):
    assert main(["gradcheck", *data_dir, "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "784x10" in out and "1e-07" in out


def test_gradcheck_fails_past_tolerance(capsys, data_dir):
    assert (
        main(
            [
                "gradcheck",
                *data_dir,
                "--backend",
                "numpy",
                "--tol",
                "1e-12",
                "--atol",
                "1e-15",
                "--no-log-guard",
            ]
        )
        == 1
    )
    assert "FAIL" in capsys.readouterr().out


def test_gradcheck_catches_a_wrong_backprop(capsys, monkeypatch, data_dir):
    from fastnum.network import TwoLayerNet

    right = TwoLayerNet.gradient

    def wrong(self, x, t):
        grads = right(self, x, t)
        grads["b1"] = -grads["b1"]
        return grads

    monkeypatch.setattr(TwoLayerNet, "gradient", wrong)
    assert main(["gradcheck", *data_dir, "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "b1" in out


def test_gradcheck_bad_batch_size(capsys, data_dir):
    assert main(["gradcheck", *data_dir, "--batch-size", "0"]) == 2
    one_error_line(capsys, "--batch-size=0 must be between 1 and 60000")


# --- gradcheck: exit codes and the reader's own files ------------------------------------------

TINY = '''\
"""Softmax regression as a reader writes it, with knobs that break it."""

import numpy as np


class Tiny:
    def __init__(self, input_size=784, output_size=10, noise=0.0, broken=""):
        self.params = {
            "W": 0.01 * np.random.randn(input_size, output_size),
            "b": np.zeros(output_size),
        }
        self.noise, self.broken = noise, broken
        self.rng = np.random.default_rng()  # its own generator: a different draw every call

    def _probs(self, x):
        s = x @ self.params["W"] + self.params["b"]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def loss(self, x, t):
        if self.broken == "loss":
            raise RuntimeError("the loss broke")
        p = self._probs(x)
        value = -np.log(p[np.arange(len(x)), t] + 1e-7).mean()
        return value + self.noise * self.rng.standard_normal() if self.noise else value

    def gradient(self, x, t):
        if self.broken == "gradient":
            raise ZeroDivisionError("division by zero")
        d = self._probs(x)
        d[np.arange(len(x)), t] -= 1
        d /= len(x)
        return {"W": x.T @ d, "b": d.sum(axis=0)}


class Named:
    """Argument names that are also fastnum options; defaults JSON can and cannot hold."""

    def __init__(self, hidden_size, lr=0.1, seed=None, shape=(1, 28, 28), rng=np.random):
        raise AssertionError("never built")
'''


@pytest.fixture
def tiny(tmp_path):
    """``tiny.py`` in a temporary folder: its path for ``--model``."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return path


@pytest.fixture
def no_mnist(monkeypatch):
    """MNIST must not be loaded: the error comes before the slow load."""
    import fastnum.data

    monkeypatch.setattr(fastnum.data, "load_mnist", lambda **kw: pytest.fail("loaded MNIST"))


@pytest.mark.parametrize(
    "error, code, prefix",
    [
        (
            "GradcheckRefusedError",
            cli.EXIT_REFUSED,
            "fastnum gradcheck: no verdict: two evaluations of net.loss(x, t)",
        ),
        ("UserCodeError", cli.EXIT_USAGE, "fastnum gradcheck: error: net.gradient(x, t) raised"),
    ],
)
def test_gradcheck_refusal_and_user_code_errors_have_their_exit_codes(
    capsys, monkeypatch, data_dir, tiny, error, code, prefix
):
    import fastnum.gradcheck
    from fastnum.gradcheck import _errors

    # The reader's own words (here a KeyError on 'batch_size') are quoted, not turned into options.
    message = {
        "GradcheckRefusedError": "two evaluations of net.loss(x, t) at the same parameters\n"
        "gave 2.302585 and 2.302591: the loss is not deterministic",
        "UserCodeError": "net.gradient(x, t) raised KeyError: 'batch_size'",
    }[error]

    def refuses(*args, **kwargs):
        raise getattr(_errors, error)(message)

    monkeypatch.setattr(fastnum.gradcheck, "gradcheck", refuses)
    assert main(["gradcheck", *data_dir, "--model", f"{tiny}:Tiny", "--workers", "1"]) == code
    line = one_error_line(capsys, prefix)
    assert line.endswith(" ".join(message.split()))
    assert code not in (cli.EXIT_OK, cli.EXIT_FAILED)  # 1 is a verdict: the check failed


def _tiny_gradcheck(capsys, data_dir, tiny, model_args):
    argv = ["gradcheck", *data_dir, "--model", f"{tiny}:Tiny", "--model-args", model_args]
    code = main([*argv, "--workers", "1", "--backend", "numpy"])
    return code, capsys.readouterr()


def test_gradcheck_of_a_readers_tiny_class_passes(capsys, data_dir, tiny):
    code, captured = _tiny_gradcheck(capsys, data_dir, tiny, "{}")
    assert code == cli.EXIT_OK, captured
    assert "PASS" in captured.out and captured.err == ""


def test_gradcheck_refuses_a_noisy_loss_with_exit_3(capsys, data_dir, tiny):
    code, captured = _tiny_gradcheck(capsys, data_dir, tiny, '{"noise": 1e-6}')
    assert code == cli.EXIT_REFUSED, captured
    assert "fastnum gradcheck: no verdict:" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "broken, words",
    [
        ("loss", "RuntimeError: the loss broke"),
        ("gradient", "ZeroDivisionError"),
    ],
)
def test_gradcheck_reports_the_readers_exception_with_exit_2(capsys, data_dir, tiny, broken, words):
    code, captured = _tiny_gradcheck(capsys, data_dir, tiny, json.dumps({"broken": broken}))
    assert code == cli.EXIT_USAGE, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "source, words",
    [
        ("class Net:\n    def __init__(self)\n        pass\n", ["SyntaxError", "line 2"]),
        (
            "import numpy\n\nimport fastnum_no_such_module\n",
            ["ModuleNotFoundError: No module named 'fastnum_no_such_module'", "line 3"],
        ),
        ("SCALE = 1\nSCALE = SCALE / 0\n", ["ZeroDivisionError: division by zero", "line 2"]),
        (
            "class Net:\n    def __init__(self):\n        raise OSError('no weights.pkl here')\n",
            ["--model: Net() raised OSError: no weights.pkl here", "line 3"],
        ),
    ],
    ids=["syntax", "import", "at-import", "constructor"],
)
def test_a_readers_file_that_fails_is_one_line_naming_it(capsys, tmp_path, no_mnist, source, words):
    path = tmp_path / "broken_net.py"
    path.write_text(source)
    assert main(["gradcheck", "--model", f"{path}:Net"]) == cli.EXIT_USAGE
    one_error_line(capsys, "fastnum gradcheck: error: --model", "broken_net.py", *words)
    imported = words[0].startswith("--model: Net()")  # only the constructor failed
    assert ("fastnum_model_broken_net" in sys.modules) == imported  # no half-imported module
    sys.modules.pop("fastnum_model_broken_net", None)


def _model_args_example(line):
    """The JSON of the ``--model-args '...'`` example an error line gives."""
    import re

    (example,) = re.findall(r"write e\.g\. --model-args '(\{.*?\})'", line)
    return json.loads(example)


@pytest.mark.parametrize(
    "model_args, words",
    [
        ("{hidden_size: 5}", ["is not valid JSON"]),
        ("[5]", ["must be a JSON object of Named's keyword arguments, not list"]),
        (
            '{"hidden": 5}',
            ["Named takes no argument 'hidden'; it accepts hidden_size, lr, seed, shape, rng"],
        ),
        ('{"lr": 0.5}', ["lacks 'hidden_size', which Named needs"]),
    ],
    ids=["json", "array", "keyword", "missing"],
)
def test_model_args_errors_give_an_example_of_the_readers_own_class(
    capsys, tiny, no_mnist, model_args, words
):
    argv = ["gradcheck", "--model", f"{tiny}:Named", "--model-args", model_args]
    assert main(argv) == cli.EXIT_USAGE
    line = one_error_line(capsys, *words)
    # Valid JSON with the class's own names (not rewritten into options such as --hidden),
    # the defaults JSON can hold, and a placeholder (named) where there is no default.
    assert _model_args_example(line) == {
        "hidden_size": 50,
        "lr": 0.1,
        "seed": None,
        "shape": [1, 28, 28],
    }
    assert "--hidden " not in line and "--lr" not in line


def test_model_args_example_of_a_class_without_known_names(capsys, tmp_path, no_mnist):
    path = tmp_path / "odd.py"
    path.write_text(
        "class Odd:\n    def __init__(self, width, *, depth=3, name='x y'):\n        pass\n"
    )
    assert main(["gradcheck", "--model", f"{path}:Odd", "--model-args", "{"]) == cli.EXIT_USAGE
    line = one_error_line(capsys, "(0 stands for your value of width)")
    assert _model_args_example(line) == {"width": 0, "depth": 3, "name": "x y"}


def _truncated_npz(path):
    """The first half of a real .npz archive (of the book's two-layer shapes)."""
    whole = path.parent / "whole.npz"
    np.savez(whole, W1=np.zeros((784, 10)), b1=np.zeros(10))
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])


@pytest.mark.parametrize(
    "write, what",
    [
        (lambda p: p.write_text("W1 0.1 0.2\n"), "is not a zip archive"),
        (lambda p: np.save(p, np.zeros(3)), "is a .npy file (one unnamed array)"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (_truncated_npz, "is a damaged .npz archive"),
        (lambda p: None, "does not exist"),
    ],
    ids=["text", "npy", "empty", "truncated", "missing"],
)
def test_params_that_are_not_an_npz_archive_say_so(capsys, tmp_path, no_mnist, write, what):
    path = tmp_path / "weights.npy"
    write(path)
    assert main(["gradcheck", "--params", str(path)]) == cli.EXIT_USAGE
    one_error_line(capsys, f"--params {path} {what}", f"np.savez('{tmp_path / 'weights.npz'}'")
