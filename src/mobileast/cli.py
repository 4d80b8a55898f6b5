"""`python -m mobileast <command> ...`: user-facing commands."""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "complexity": ("mobileast.complexity", "params, MACs and parameter memory of a model"),
    "predict": ("mobileast.predict", "scene label and class probabilities for WAV files"),
    "evaluate": ("mobileast.evaluate", "metrics of models (TorchScript, ONNX, checkpoint) on the evaluate fold"),
    "export": ("mobileast.export", "a trained student as an ONNX model (float, or int8 from the int8 model)"),
    "submit": ("mobileast.submit", "a DCASE2023 Task 1 submission package (output, complexity, meta)"),
    "download": ("mobileast.data.download", "download and verify the TAU22 development set"),
    "profile": ("mobileast.profiles", "params overrides of the report's TAU22 setups (list, print, apply)"),
    "dvc-deps": ("mobileast.dvcdeps", "check (--check) or regenerate (--write) the code deps and params lists "
                                      "of dvc.yaml from what each stage imports and declares"),
    "params-doc": ("mobileast.paramsdoc", "write (or --check) docs/configuration.md, the params reference "
                                          "generated from mobileast.schema"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m mobileast <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        status = module.main(argv[1:]) or 0
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early, e.g. `... | head`: not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit fails no more
        return 0
    return status
