"""Errors that name parameters: one Message, spelled by the library or as the CLI's options."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from fastnum import cli
from fastnum._validate import (
    Message,
    ParameterError,
    ParameterTypeError,
    check_int,
    check_positive,
    check_step,
    spelled,
)
from fastnum.rundir import checkpoint_refused
from fastnum.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _command(name):
    """The parser of ``fastnum NAME`` and the spelling main() writes its errors with."""
    parser = cli.build_parser()
    spelling = parser.parse_args([name]).spelling
    (sub,) = (a for a in parser._actions if a.dest == "command")
    return sub.choices[name], spelling


def _options(parser):
    return {s for a in parser._actions for s in a.option_strings}


def test_validators_raise_errors_that_carry_the_parameter():
    train = _command("train")[1]
    with pytest.raises(ParameterError) as bad:
        check_int("hidden_sizes[1]", 0, 1, "widths are positive.")
    assert bad.value.name == "hidden_sizes[1]" and isinstance(bad.value, ValueError)
    assert str(bad.value) == "hidden_sizes[1]=0 must be at least 1; widths are positive."
    assert spelled(bad.value, train) == (
        "--hidden-sizes[1]=0 must be at least 1; widths are positive."
    )
    with pytest.raises(ParameterTypeError) as wrong:
        check_positive("lr", "0.1")
    assert isinstance(wrong.value, TypeError) and not isinstance(wrong.value, ValueError)
    assert spelled(wrong.value, train) == "--lr='0.1' must be a number."
    with pytest.raises(ParameterError) as tiny:
        check_step(1e-20)
    assert spelled(tiny.value, train).startswith("--h=1e-20 is too small")
    assert "Use --h >= 1e-12" in spelled(tiny.value, train)


def test_values_are_never_read_as_template_fields():
    # A path or a hint holding braces or a parameter's name stays as it is.
    message = Message("{name}={value!r} is odd; see {path}", "lr", value="{h}", path="runs/{lr}/")
    assert str(message) == "lr='{h}' is odd; see runs/{lr}/"
    assert message.spelled(_command("train")[1]) == "--lr='{h}' is odd; see runs/{lr}/"
    with pytest.raises(ParameterError) as hint:
        check_int("iters", 0, 1, "a {hint} with braces")
    assert str(hint.value).endswith("; a {hint} with braces")


@pytest.mark.parametrize(
    "exc",
    [
        ParameterError("batch_size", "{name}={value} > {train_size}", value=7),
        ParameterTypeError("out_dir", "{name}={value!r} is no path", value=3),
        checkpoint_refused("runs/a/checkpoint.npz is damaged"),
    ],
    ids=["value", "type", "checkpoint"],
)
def test_errors_survive_pickling_with_their_parameters(exc):
    # Worker processes send errors back pickled: type, name and spelling must come along.
    back = pickle.loads(pickle.dumps(exc))
    train = _command("train")[1]
    assert type(back) is type(exc) and str(back) == str(exc)
    assert getattr(back, "name", None) == getattr(exc, "name", None)
    assert spelled(back, train) == spelled(exc, train) != str(exc)


def test_every_train_setting_is_spelled_as_an_option_the_parser_takes():
    parser, spelling = _command("train")
    args = parser.parse_args([])
    options = _options(parser)
    fields = [f for f in inspect.signature(TrainConfig).parameters if hasattr(args, f)]
    assert len(fields) > 15
    for name in [*fields, "out_dir", "data_dir"]:
        assert spelling.name(name) in options, name


def test_every_gradcheck_argument_the_cli_passes_is_spelled_as_its_option():
    from fastnum.gradcheck import gradcheck

    parser, spelling = _command("gradcheck")
    options = _options(parser)
    passed = ["h", "rtol", "atol", "directions", "seed", "method", "workers", "worst"]
    passed += ["probe_seconds", "fallback_seconds", "hidden_size", "hidden_sizes"]
    assert set(passed[:10]) <= set(inspect.signature(gradcheck).parameters)
    for name in passed:
        assert spelling.name(name) in options, name
    assert spelling.name("rtol") == "--tol" and spelling.name("input_size") == "input_size"


def test_messages_outside_the_validators_name_options(capsys):
    # No MNIST needed: TrainConfig refuses these before any data is loaded.
    assert cli.main(["train", "--net", "simpleconv", "--hidden-sizes", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fastnum train: error: --hidden-sizes is for --net dense; SimpleConvNet has one hidden "
        "layer of --hidden units (the book uses 100)."
    )
    assert cli.main(["train", "--net", "simpleconv", "--weight-init-std", "he"]) == 2
    assert "--weight-init-std='he' is for the dense networks" in capsys.readouterr().err
    message = spelled(checkpoint_refused("it is damaged"), _command("train")[1])
    assert message.endswith("(overwrite=True, --overwrite) or use another --out.")


def test_the_library_keeps_python_names():
    with pytest.raises(ValueError, match=r"pass e.g. hidden_sizes=\(50,\)\.$"):
        TrainConfig(activation="relu")
    with pytest.raises(ValueError, match=r"^momentum=0.5 is not used by optimizer='adam'"):
        TrainConfig(optimizer="adam", momentum=0.5)


def test_every_command_is_a_module_with_a_parser_and_a_run():
    for name in cli.COMMANDS:
        module = sys.modules[f"fastnum.cli.{name}"]
        assert callable(module.add_parser) and callable(module.run)
        assert cli.build_parser().parse_args([name]).func is module.run


def test_python_dash_m_fastnum_shows_the_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "fastnum", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0 and "train" in proc.stdout and "gradcheck" in proc.stdout
