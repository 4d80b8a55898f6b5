"""`python -m mobileast <command> ...`: user-facing commands."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

COMMANDS = {
    "complexity": ("mobileast.complexity", "params, MACs and parameter memory of a model"),
    "predict": ("mobileast.predict", "scene label and class probabilities for WAV files"),
    "evaluate": ("mobileast.evaluate", "metrics of models (TorchScript, ONNX, checkpoint) on the evaluate fold"),
    "export": ("mobileast.export", "a trained student as an ONNX model (float, or int8 from the int8 model)"),
    "submit": ("mobileast.submit", "a DCASE Task 1 submission in the 2023, 2024 or 2025 format"),
    "download": ("mobileast.data.download", "download and verify the TAU22 development set (or the MicIRP impulse "
                                            "responses)"),
    "profile": ("mobileast.profiles", "params overrides of the report's TAU22 setups (list, print, apply)"),
    "dvc-deps": ("mobileast.dvcdeps", "check (--check) or regenerate (--write) the code deps and params lists "
                                      "of dvc.yaml from what each stage imports and declares"),
    "params-doc": ("mobileast.paramsdoc", "write (or --check) docs/configuration.md, the params reference "
                                          "generated from mobileast.schema"),
}


def version() -> str:
    """The installed package's version; pyproject.toml's when the package is not installed (a bare checkout)."""
    try:
        return importlib.metadata.version("mobileast")
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def usage() -> str:
    lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: python -m mobileast <command> [options]   (or: mobileast <command> [options])\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n"
            "`python -m mobileast <command> --help` describes a command; --version prints the version.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"mobileast {version()}")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = f"unknown command '{argv[0]}'" if argv else "no command given"
        print(f"error: {problem}; known commands: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        status = module.main(argv[1:]) or 0
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early, e.g. `... | head`: not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit fails no more
        return 0
    return status
