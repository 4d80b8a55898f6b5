"""Project root, params.yaml loading and small helpers shared by all stages."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TextIO

import yaml
from tqdm import tqdm

from mobileast.schema import FREE, SCHEMA

SCENES = (
    "airport", "bus", "metro", "metro_station", "park",
    "public_square", "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
UNSEEN_DEVICES = ("s4", "s5", "s6")
LOG_PROGRESS_INTERVAL = 60.0  # s between progress lines when stderr is no terminal


def project_root(start: str | Path | None = None) -> Path:
    """The directory holding dvc.yaml, searched upwards from `start` (default: cwd)."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no dvc.yaml found in {here} or any parent directory")


class InputError(ValueError):
    """Bad input a user must fix (params, dataset, model file); the message says what and where."""


class ParamsError(InputError):
    """params.yaml (or overrides of it) does not match mobileast.schema; the message names
    the key, its section and the keys the section knows."""


@contextmanager
def params_errors(section: str) -> Iterator[None]:
    """Re-raise a ValueError (a ParamsError too) or TypeError of building something from
    params `section` as a ParamsError naming it, so the stage ends with the message."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise ParamsError(f"params.yaml, {section}: {error}") from None


class YAML12Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does (as DVC and ruamel write them):
    `1e-05` is a float, where YAML 1.1 requires a dot (`1.0e-05`) and gives a string."""


YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """YAML as params.yaml is read (YAML12Loader)."""
    return yaml.load(text, Loader=YAML12Loader)


def read_params(path: str | Path | None = None) -> dict[str, Any]:
    """params.yaml as written (default: the one at the project root), unchecked."""
    path = Path(path) if path else project_root() / "params.yaml"
    params = read_yaml(Path(path).read_text())
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """params.yaml, checked to have every section and key of the schema and no other."""
    params = read_params(path)
    check_params(params)
    return params


def check_params(params: Mapping[str, Any], keys: Iterable[str] | None = None) -> None:
    """Raise ParamsError for a key the schema does not know anywhere in `params`, and for a
    missing key in the parts named by dotted `keys` (default: everywhere)."""
    _check_unknown(params, SCHEMA, "")
    for key in [""] if keys is None else keys:
        schema, value = SCHEMA, params
        for name in filter(None, key.split(".")):
            schema, value = _child(schema, value, name, key)
        _check_missing(value, schema, key)


def schema_at(key: str) -> Any:
    """The schema entry of a dotted key (a section dict, LEAF or FREE); ParamsError if unknown."""
    node: Any = SCHEMA
    section = ""
    for name in key.split("."):
        if not isinstance(node, dict) or name not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none: it is a value"
            raise ParamsError(f"params.yaml: unknown key '{name}' in {_where(section)} (known keys: {known})")
        node, section = node[name], f"{section}.{name}" if section else name
    return node


def _where(section: str) -> str:
    return f"section '{section}'" if section else "the top level"


def _child(schema: Any, value: Any, name: str, key: str) -> tuple[Any, Any]:
    if not isinstance(schema, dict) or name not in schema:
        raise ParamsError(f"params.yaml has no key '{key}' in its schema")
    if not isinstance(value, Mapping) or name not in value:
        raise ParamsError(f"params.yaml: missing key '{key}'")
    return schema[name], value[name]


def _check_unknown(value: Any, schema: Any, section: str) -> None:
    if not isinstance(schema, dict):
        if schema == FREE and value is not None and not isinstance(value, Mapping):
            raise ParamsError(f"params.yaml: '{section}' must be a mapping (or {{}}), got {value!r}")
        return
    if not isinstance(value, Mapping):
        raise ParamsError(f"params.yaml: '{section}' must be a section with keys {', '.join(schema)}, "
                          f"got {value!r}")
    for name, child in value.items():
        if name not in schema:
            raise ParamsError(f"params.yaml: unknown key '{name}' in {_where(section)} "
                              f"(known keys: {', '.join(sorted(schema))})")
        _check_unknown(child, schema[name], f"{section}.{name}" if section else name)


def _check_missing(value: Any, schema: Any, section: str) -> None:
    if not isinstance(schema, dict):
        return
    absent = [name for name in schema if name not in value]
    if absent:
        raise ParamsError(f"params.yaml: {_where(section)} lacks {', '.join(repr(a) for a in absent)} "
                          f"(it needs: {', '.join(schema)})")
    for name, child in schema.items():
        _check_missing(value[name], child, f"{section}.{name}" if section else name)


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
    """The project's params.yaml restricted to a stage's declared keys (see `select`).

    The whole file is checked for unknown keys (a typo anywhere stops every stage), the
    declared parts for missing ones (mobileast.schema)."""
    keys = list(keys)
    params = read_params()
    check_params(params, keys)
    return select(params, keys)


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
    """Write `obj` as indented JSON with a final newline, atomically (same content, same bytes)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class _Lines:
    """A stream for tqdm that writes every status as a line of its own: a log (CI, a
    queued `dvc exp run`) gets readable lines instead of carriage-return redraws."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any] | None = None, *, interval: float = LOG_PROGRESS_INTERVAL,
             **kwargs: Any) -> tqdm:
    """A tqdm progress bar with ETA on stderr for a long loop (kwargs: tqdm's, e.g. total, desc, unit).

    On a terminal it is redrawn in place (at most once a second); otherwise it writes
    a line when the loop starts, at most every `interval` seconds, and when it ends, so
    logs show progress and ETA without being flooded.
    """
    if sys.stderr.isatty():
        return tqdm(iterable, mininterval=1, **kwargs)
    return tqdm(iterable, file=_Lines(sys.stderr), mininterval=interval, maxinterval=interval, **kwargs)
