"""params.yaml: reading it as DVC does, checking it against mobileast.schema (keys, types,
allowed values), selecting the part a stage declares, and editing it with its comments kept."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from mobileast.errors import ParamsError
from mobileast.files import atomic_output, project_root
from mobileast.schema import NO_DEFAULT, SCHEMA, Param


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
    if kind == "float":  # ints too: DVC writes `-S dkd.alpha=5` as 5; NaN is no number
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
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

    The whole file is checked for unknown keys and for values of the wrong type or outside
    the allowed ones (a typo anywhere stops every stage), the declared parts for missing
    keys (mobileast.schema)."""
    keys = list(keys)
    params = read_params()
    check_params(params, keys)
    return select(params, keys)


def edit_file(path: Path, edit: Callable[[Any], None]) -> None:
    """Apply `edit` to the params file at `path` as a ruamel.yaml round-trip document (a
    mapping keeping comments, key order and layout); the result is checked against the
    schema (check_params) before it replaces the file, atomically."""
    from ruamel.yaml import YAML

    editor = YAML()
    editor.preserve_quotes = True
    editor.width = 4096
    editor.representer.add_representer(float, _represent_float)
    editor.representer.add_representer(type(None), _represent_null)
    document = editor.load(Path(path).read_text())
    edit(document)
    text = io.StringIO()
    editor.dump(document, text)
    check_params(read_yaml(text.getvalue()))
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text.getvalue())


def _represent_float(representer: Any, value: float) -> Any:
    """Floats with a dot in the mantissa (1.0e-05, not ruamel's 1e-05, which YAML 1.1 reads as a string)."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _represent_null(representer: Any, value: None) -> Any:
    """None as `null` (ruamel writes nothing, `f_max:`, which reads back as null but hides it)."""
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def missing_keys(params: Mapping[str, Any], node: Any = None, prefix: str = "") -> list[str]:
    """The dotted keys (or whole sections) of the schema that `params` lacks."""
    node = SCHEMA if node is None else node
    missing = []
    for name, child in node.items():
        key = f"{prefix}{name}"
        if not isinstance(params, Mapping) or name not in params:
            missing.append(key)
        elif isinstance(child, dict):
            missing += missing_keys(params[name], child, key + ".")
    return missing


def default_of(node: Any, key: str) -> Any:
    """The schema default of a key, or of every key of a section (nested); ParamsError if one has none."""
    if isinstance(node, dict):
        return {name: default_of(child, f"{key}.{name}") for name, child in node.items()}
    if node.default is NO_DEFAULT:
        raise ParamsError(f"params.yaml lacks '{key}', whose schema entry (mobileast.schema) gives no default: "
                          "add it to params.yaml, or give the entry a default")
    return node.default


def add_missing(path: Path) -> list[str]:
    """Write into the params file at `path` every schema key it lacks, with its schema default
    and meaning as a comment, after the keys of the schema that precede it (comments and
    everything else kept); the keys added. So adding a key to the project is its schema
    entry with a default, then `python -m mobileast dvc-deps --write`."""
    added = missing_keys(read_params(path))
    if not added:
        return []
    values = {key: default_of(schema_at(key), key) for key in added}

    def insert(document: Any) -> None:
        for key, value in values.items():
            *parents, name = key.split(".")
            section, node = document, SCHEMA
            for parent in parents:
                section, node = section[parent], node[parent]
            before = list(node)[:list(node).index(name)]
            position = max((list(section).index(k) + 1 for k in before if k in section), default=0)
            flow = section.fa.flow_style()  # e.g. an augmentation's {enabled: ..., p: ...}: no room for comments
            _insert(section, position, name, value, node[name], flow)

    edit_file(path, insert)
    return added


def _insert(section: Any, position: int, name: str, value: Any, node: Any, flow: bool) -> None:
    """Insert `name: value` into a ruamel mapping: lists in flow style ([a, b], as params.yaml
    writes them), a new section as a block of its keys, each commented with its meaning."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list):
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    elif isinstance(node, dict):
        block = CommentedMap()
        for i, (key, child) in enumerate(node.items()):
            _insert(block, i, key, value[key], child, False)
        value = block
    comment = node.meaning if isinstance(node, Param) and not flow else None
    section.insert(position, name, value, comment=comment)
