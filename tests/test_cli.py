"""The command line: --version, an unknown command named with the known ones, every command's
--help complete (full description and an example), device names as plain strings."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mobileast import cli
from mobileast.cli_docs import command_parser
from mobileast.metrics import device_order, evaluate_predictions

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"mobileast {importlib.metadata.version('mobileast')}\n"
    assert importlib.metadata.version("mobileast") == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_version_from_python_m():
    """`python -m mobileast --version` in a fresh interpreter, as a user types it."""
    out = subprocess.run([sys.executable, "-m", "mobileast", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mobileast {cli.version()}"


def test_unknown_command_is_named_with_the_known_ones(capsys):
    assert cli.main(["frobnicate"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown command 'frobnicate'" in captured.err
    for name in cli.COMMANDS:
        assert name in captured.err


def test_no_command_is_an_error_and_help_is_not(capsys):
    assert cli.main([]) == 2
    assert "no command given" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_help_has_a_description_and_an_example(name, capsys):
    module = importlib.import_module(cli.COMMANDS[name][0])
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    description = command_parser(name).description
    assert description and description.rstrip().endswith("."), f"{name}: description cut or missing"
    assert description.split("\n")[0] in text  # shown as written (RawDescriptionHelpFormatter), not rewrapped
    assert "example" in text and f"python -m mobileast {name}" in text.split("example")[-1]
    assert "SPEC" not in text


def test_device_names_are_plain_strings():
    """numpy string arrays give numpy.str_ elements, whose repr (np.str_('a')) showed in logs."""
    order = device_order(np.array(["s1", "a", "x", "b"]))
    assert order == ["a", "b", "s1", "x"] and all(type(d) is str for d in order)
    metrics = evaluate_predictions(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]), np.array(["a", "b", "s4"]),
                                   np.array(["a", "b"]), ["x", "y", "z"])
    assert str(metrics["seen_devices"]) == "['a', 'b']" and str(metrics["unseen_devices"]) == "['s4']"
    assert all(type(d) is str for d in metrics["per_device"])
