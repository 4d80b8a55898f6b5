"""params.yaml: reading it as DVC does, checking it against mobileast.schema, and selecting
the part a stage declares."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mobileast.errors import ParamsError
from mobileast.files import project_root
from mobileast.schema import SCHEMA, Param


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
    """params.yaml, checked to have every section and key of the schema, no other, and
    values of the schema's types and allowed values."""
    params = read_params(path)
    check_params(params)
    return params


def check_params(params: Mapping[str, Any], keys: Iterable[str] | None = None) -> None:
    """Raise ParamsError for a key the schema does not know or a value it does not allow
    (wrong type, not a choice, out of range) anywhere in `params`, and for a missing key in
    the parts named by dotted `keys` (default: everywhere)."""
    _check_unknown(params, SCHEMA, "")
    for key in [""] if keys is None else keys:
        schema, value = SCHEMA, params
        for name in filter(None, key.split(".")):
            schema, value = _child(schema, value, name, key)
        _check_missing(value, schema, key)


def schema_at(key: str) -> Any:
    """The schema entry of a dotted key (a section dict or a Param); ParamsError if unknown."""
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
    if isinstance(schema, Param):
        check_value(schema, value, section)
        return
    if not isinstance(value, Mapping):
        raise ParamsError(f"params.yaml: '{section}' must be a section with keys {', '.join(schema)}, "
                          f"got {value!r}")
    for name, child in value.items():
        if name not in schema:
            raise ParamsError(f"params.yaml: unknown key '{name}' in {_where(section)} "
                              f"(known keys: {', '.join(sorted(schema))})")
        _check_unknown(child, schema[name], f"{section}.{name}" if section else name)


KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "list of str": "a list of strings", "mapping": "a mapping"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":  # ints too: DVC writes `-S dkd.alpha=5` as 5
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list of str":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, Mapping)


def check_value(param: Param, value: Any, key: str) -> None:
    """Raise ParamsError naming the dotted `key` if `value` is not of `param`'s kind or not
    one of its allowed values; null passes only where the schema allows it."""
    if value is None and param.nullable:
        return
    if not _is_kind(value, param.kind):
        null = " or null" if param.nullable else ""
        raise ParamsError(f"params.yaml: {key} must be {KIND_WORDS[param.kind]}{null}, got {value!r}")
    items = value if param.kind == "list of str" else [value]
    if param.choices and any(item not in param.choices for item in items):
        raise ParamsError(f"params.yaml: {key} must be {param.allowed()}, got {value!r}")
    if param.kind in ("int", "float") and not _in_range(param, value):
        raise ParamsError(f"params.yaml: {key} must be {param.allowed()}, got {value!r}")


def _in_range(param: Param, value: float) -> bool:
    if param.low is not None and (value <= param.low if param.low_open else value < param.low):
        return False
    return param.high is None or value <= param.high


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
