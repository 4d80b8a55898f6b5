"""Project root, params.yaml loading and small helpers shared by all stages."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

SCENES = (
    "airport", "bus", "metro", "metro_station", "park",
    "public_square", "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
UNSEEN_DEVICES = ("s4", "s5", "s6")


def project_root(start: str | Path | None = None) -> Path:
    """The directory holding dvc.yaml, searched upwards from `start` (default: cwd)."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no dvc.yaml found in {here} or any parent directory")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read params.yaml (default: the one at the project root)."""
    path = Path(path) if path else project_root() / "params.yaml"
    with open(path) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'dkd': {'alpha': 1}} -> {'dkd.alpha': 1}, as DVC and MLflow name params."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def select(params: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The part of `params` named by dotted keys ('seed', 'logits.hop_s'), nested as in
    params.yaml: what a stage declares under `params:` in dvc.yaml and depends on."""
    picked: dict[str, Any] = {}
    for key in keys:
        *parents, leaf = key.split(".")
        source, target = params, picked
        for name in parents:
            source, target = source[name], target.setdefault(name, {})
        if leaf not in source:
            raise KeyError(f"params.yaml has no key {key!r}")
        target[leaf] = source[leaf]
    return picked


def stage_params(keys: Iterable[str]) -> dict[str, Any]:
    """The project's params.yaml restricted to a stage's declared keys (see `select`)."""
    return select(load_params(), keys)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (file or directory) to write `path`'s content to.

    On success the temporary is renamed onto `path` (replacing an old output in one
    step); on any error it is deleted, so an interrupted stage leaves no partial
    output and the previous output, if any, stays intact. The temporary has the same
    name as `path` (inside a hidden sibling directory), so formats that record their
    own file name (e.g. TorchScript archives) come out byte-identical on every run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(scratch)
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
    """Write `obj` as indented JSON with a final newline, atomically (same content, same bytes)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
