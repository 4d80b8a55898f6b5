"""Project root lookup, atomic file outputs (an interrupted write never leaves a partial
file) and file checksums."""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def project_root(start: str | Path | None = None) -> Path:
    """The directory holding dvc.yaml, searched upwards from `start` (default: cwd)."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no dvc.yaml found in {here} or any parent directory")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (file or directory) to write `path`'s content to.

    On success the temporary is renamed onto `path` (replacing an old output in one
    step); on any error it is deleted, so an interrupted stage leaves no partial
    output and the previous output, if any, stays intact. The temporary has the same
    name as `path` (inside a hidden sibling directory, `.<name>.tmp`), so formats that
    record their own file name (e.g. TorchScript archives) come out byte-identical on
    every run. A process killed outright (SIGKILL, power loss) cannot clean up: its
    scratch directory has a fixed name, so the next write of the same output removes it
    (and those of older versions, named `.<name>.tmp-<pid>`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    for stale in (scratch, *path.parent.glob(f".{glob.escape(path.name)}.tmp-*")):
        _remove(stale)
    scratch.mkdir()
    tmp = scratch / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = scratch / f"{path.name}.old"
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _remove(scratch)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON with a final newline, atomically (same content, same bytes).

    A NaN or infinite number raises ValueError naming the file and the key path of the
    first one (e.g. `student_float.log_loss`): JSON has no such numbers (Python would write
    `NaN`, which JSON readers reject), and one in an output means a broken result, not one
    to record. Metrics that are undefined on purpose are written as null.
    """
    where = _non_finite(obj)
    if where is not None:
        raise ValueError(f"{path}: refusing to write the non-finite number {where[1]} at {where[0] or 'the top level'}")
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _non_finite(obj: Any, path: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinite float in `obj` (dicts, lists, tuples), else None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path, obj)
    if isinstance(obj, dict):
        items = ((f"{path}.{key}" if path else str(key), value) for key, value in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{index}]", value) for index, value in enumerate(obj))
    else:
        return None
    for where, value in items:
        found = _non_finite(value, where)
        if found is not None:
            return found
    return None


def file_md5(path: str | Path) -> str:
    """md5 hex digest of a file's bytes (as DVC and the dataset's publishers hash files),
    read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
