"""The project code a module runs: its import closure, as dvc.yaml lists a stage's code deps.

Read from the source (no import): a module's imports at top level or inside functions,
recursively, with the parent packages' __init__.py files Python executes on the way.
mobileast.dvcdeps writes dvc.yaml from it; a training stage's resume key hashes the same
files (mobileast.training.checkpoint), so both agree on what "the stage's code" is.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Iterable

# Imported by stages but no dependency of any: what they do cannot change a stage's outputs.
UNTRACKED_CODE = {
    "src/mobileast/progress.py": "display only: progress bars on the terminal",
    "src/mobileast/schema.py": "checks only: it accepts or rejects params.yaml, never changes what a stage "
                               "computes (the values a stage reads are its params deps), so a new key or "
                               "meaning re-runs no stage",
    "src/mobileast/tracking.py": "MLflow runs only, outside the DVC outputs; the `track` stage, which writes "
                                 "them, is always_changed and so re-runs whatever changed",
}


def module_file(name: str, root: Path) -> Path | None:
    """Source file of a project module (package -> __init__.py), None for third-party."""
    top = name.split(".")[0]
    base = {"mobileast": root / "src", "stages": root}.get(top)
    if base is None:
        return None
    path = base.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> frozenset[str]:
    """Every module a file imports, at top level or inside functions (lazy imports too)."""
    return _modules_imported_by(path.read_text())


@functools.lru_cache(maxsize=None)
def _modules_imported_by(source: str) -> frozenset[str]:
    """imported_modules of a source text, parsed once per text: `dvc-deps` follows the
    closure of every stage, which reaches the same files again and again, and the parse is
    the cost (the key is the text itself, so an edited file is parsed anew)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


def code_closure(module: str, root: Path, untracked: Iterable[str] = tuple(UNTRACKED_CODE)) -> set[str]:
    """Project source files (relative to `root`) a module runs: itself, its imports,
    recursively, with the parent packages' __init__.py files that Python executes on the
    way; a file of `untracked` (default: UNTRACKED_CODE, as dvc.yaml and the resume key
    count a stage's code) is left out and its imports are not followed."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            name = None if path is None else path.relative_to(root).as_posix()
            if name is not None and name not in seen and name not in untracked:
                seen.add(name)
                todo.extend(imported_modules(path))
    return seen
