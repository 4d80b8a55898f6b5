"""Profiles: named, versioned sets of params.yaml overrides kept in `profiles/<name>.yaml`.

A profile file holds `version`, `description`, `requires` ({dotted key: what to give},
values the user must supply with `--set`, e.g. the dataset root), `defines` (the params
sections and keys whose values the profile fixes) and `overrides` ({dotted key: value},
every key a value of mobileast.schema). A profile must set every key under `defines`
that decides a run's result (`decided_keys`: all but the training sections' hardware
keys and the settings of switched-off augmentations), so that its result never depends
on what the workspace's params.yaml holds there; keys outside `defines` (seed, quant,
evaluate, the teacher for a student profile alone, ...) keep params.yaml's values.
`extends: _base` adds the overrides of `profiles/_base.yaml` (a base shared by several
profiles, not listed or used alone) before the profile's own; a profile's `version`
covers its base, so changing a base means raising the version of every profile
extending it. Profiles combine: later ones and `--set` win, but two profiles giving one
key different values is an error.

    python -m mobileast profile --list
    python -m mobileast profile tau22-sub1                       # the overrides as YAML
    python -m mobileast profile tau22-passt tau22-sub1 --set data.root=/datasets/tau22 --apply
    python -m mobileast profile tau22-passt tau22-sub1 --set data.root=/datasets/tau22 --dvc-args \\
        | xargs .venv/bin/dvc exp run -n tau22-sub1

`--apply` rewrites params.yaml in place with only those values changed (comments, key
order and every other value kept; checked against the schema before it is written);
`--dvc-args` prints them as `-S key=value` arguments of `dvc exp run`, one per line,
shell-quoted (xargs reads the quotes). Both also set the params key `profile` to the
profiles' names and versions (e.g. `tau22-passt v2 + tau22-sub1 v2`): no stage reads it,
but `dvc exp show`, `dvc params diff` and the experiment's MLflow run show it.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from mobileast.errors import InputError, ParamsError
from mobileast.files import project_root
from mobileast.params import edit_file, read_yaml, schema_at
from mobileast.schema import SCHEMA, leaves

PROFILES_DIR = "profiles"
PROFILE_KEYS = {"version", "description", "extends", "requires", "defines", "overrides"}
BASE_PREFIX = "_"  # profiles/_<name>.yaml: a base that profiles extend, not a profile to use
RECORD_KEY = "profile"  # the params key recording the applied profiles
TRAINING_SECTIONS = ("train", "teacher.train")
HARDWARE_KEYS = ("precision", "compile", "nproc", "sync_bn")  # how a training run uses the machine


@dataclass(frozen=True)
class Profile:
    name: str
    version: int
    description: str
    requires: Mapping[str, str]
    defines: tuple[str, ...]
    overrides: Mapping[str, Any]


def profiles_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / PROFILES_DIR


def available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.stem.startswith(BASE_PREFIX))


def check_key(key: str, where: str) -> None:
    """A dotted key must name a value (or a free mapping such as student.custom), not a section."""
    try:
        node = schema_at(key)
    except ParamsError as error:
        raise ParamsError(f"{where}: {error}") from None
    if isinstance(node, dict):
        raise ParamsError(f"{where}: '{key}' is a section; name its keys ({', '.join(node)})")


def schema_keys(key: str) -> list[str]:
    """The dotted keys of the values at and below `key` in the params schema."""
    return list(leaves(schema_at(key), key))


def decided_keys(defines: Sequence[str], value: Callable[[str], Any]) -> list[str]:
    """The keys under `defines` that decide a run's result, given `value(key)` of the
    `enabled` keys: all but the HARDWARE_KEYS of training sections and the other keys of a
    section whose `enabled` is false (a switched-off augmentation)."""
    decided = []
    for key in (key for section in defines for key in schema_keys(section)):
        if "." not in key:  # a top-level key (e.g. seed)
            decided.append(key)
            continue
        section, leaf = key.rsplit(".", 1)
        if section in TRAINING_SECTIONS and leaf in HARDWARE_KEYS:
            continue
        if leaf != "enabled" and "enabled" in schema_at(section) and value(f"{section}.enabled") is False:
            continue
        decided.append(key)
    return decided


def _read(name: str, directory: Path, extended: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile file `name` as a mapping, its base's (`extends`) defines, requires and overrides merged in."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"no profile {name!r} in {directory} (profiles: {', '.join(available(directory))})")
    data = read_yaml(path.read_text())
    if not isinstance(data, dict) or set(data) - PROFILE_KEYS or "overrides" not in data:
        raise InputError(f"{path}: a profile is a mapping of {', '.join(sorted(PROFILE_KEYS))} (overrides required)")
    data = {"path": path, **data, "overrides": dict(data["overrides"] or {}),
            "requires": dict(data.get("requires") or {}), "defines": list(data.get("defines") or [])}
    for key in [*data["overrides"], *data["requires"]]:
        check_key(key, str(path))
    for key in data["defines"]:
        try:
            schema_at(key)
        except ParamsError as error:
            raise ParamsError(f"{path}: defines: {error}") from None
    base = data.get("extends")
    if base is None:
        return data
    if not str(base).startswith(BASE_PREFIX) or base in extended:
        raise InputError(f"{path}: extends must name a base profile ({BASE_PREFIX}<name>, no cycle), got {base!r}")
    parent = _read(base, directory, (*extended, name))
    return {**data, "overrides": parent["overrides"] | data["overrides"],
            "requires": parent["requires"] | data["requires"],
            "defines": list(dict.fromkeys(parent["defines"] + data["defines"]))}


def load_profile(name: str, directory: Path) -> Profile:
    """The profile `name` (its base merged in), checked: known keys, and every key under
    `defines` that decides the result set (see decided_keys)."""
    if name.startswith(BASE_PREFIX):
        raise InputError(f"{name} is a base that profiles extend, not a profile to use "
                         f"(profiles: {', '.join(available(directory))})")
    data = _read(name, directory)
    overrides = data["overrides"]
    unset = [key for key in decided_keys(data["defines"], overrides.get) if key not in overrides]
    if unset:
        raise InputError(f"{data['path']}: it defines {', '.join(data['defines'])} but leaves {', '.join(unset)} "
                         "to params.yaml: set them (or switch the augmentation off)")
    order = {key: i for i, key in enumerate(key for section in SCHEMA for key in schema_keys(section))}
    return Profile(name, int(data.get("version", 1)), str(data.get("description", "")), data["requires"],
                   tuple(data["defines"]), dict(sorted(overrides.items(), key=lambda item: order[item[0]])))


def record(profiles: Sequence[Profile]) -> dict[str, str]:
    """The `profile` params value naming the applied profiles and their versions."""
    return {RECORD_KEY: " + ".join(f"{p.name} v{p.version}" for p in profiles)}


def resolve(profiles: Sequence[Profile], sets: Mapping[str, Any]) -> dict[str, Any]:
    """The combined overrides: the profiles in order, then `sets`; every required key must be set."""
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for profile in profiles:
        for key, value in profile.overrides.items():
            if key in flat and flat[key] != value:
                raise ParamsError(f"profiles {origin[key]} and {profile.name} disagree on {key} "
                                  f"({flat[key]!r} vs {value!r})")
            flat[key], origin[key] = value, profile.name
    for key in sets:
        check_key(key, "--set")
    missing = {key: what for p in profiles for key, what in p.requires.items() if key not in sets}
    if missing:
        raise ParamsError("; ".join(f"profile needs --set {key}=... ({what})" for key, what in missing.items()))
    return flat | dict(sets)


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """['train.epochs=1', ...] -> {'train.epochs': 1}, values read as YAML."""
    sets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set expects KEY=VALUE, got {item!r}")
        sets[key.strip()] = read_yaml(value) if value.strip() else ""
    return sets


def apply(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of nested `params` with the dotted `overrides` set; keys must exist in params."""
    result = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        _parent(result, key)[key.rsplit(".", 1)[-1]] = copy.deepcopy(value)
    return result


def _parent(params: Any, key: str) -> Any:
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        if not isinstance(node, Mapping) or name not in node:
            raise ParamsError(f"params.yaml has no section {key.rsplit('.', 1)[0]!r} to set {key} in")
        node = node[name]
    if leaf not in node:
        raise ParamsError(f"params.yaml has no key {key!r}")
    return node


def apply_to_file(path: Path, overrides: Mapping[str, Any]) -> None:
    """Set `overrides` in the params file at `path`, keeping its comments and other keys.

    The result is checked against the schema before it replaces the file (atomically).
    """
    def set_overrides(document: Any) -> None:
        for key, value in overrides.items():
            _parent(document, key)[key.rsplit(".", 1)[-1]] = value

    edit_file(path, set_overrides)


def yaml_value(value: Any) -> str:
    """A value as one line of YAML flow syntax, as `dvc exp run -S key=value` reads it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def dvc_args(overrides: Mapping[str, Any]) -> list[str]:
    """`-S key=value` lines for `dvc exp run`, shell-quoted."""
    return [f"-S {shlex.quote(f'{key}={yaml_value(value)}')}" for key, value in overrides.items()]


def as_yaml(profiles: Sequence[Profile], overrides: Mapping[str, Any]) -> str:
    """The overrides as nested YAML (as they look in params.yaml), with the profiles' headers."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    lines = [f"# profile {p.name} (version {p.version}): {p.description}" for p in profiles]
    defined = list(dict.fromkeys(key for p in profiles for key in p.defines))
    lines += [f"# defines {', '.join(defined)}; every other key keeps params.yaml's value"] if defined else []
    lines += [f"# needs --set {key}=...: {what}" for p in profiles for key, what in p.requires.items()
              if key not in overrides]
    return "\n".join(lines + [yaml.safe_dump(nested, sort_keys=False, width=100).rstrip()]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast profile", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Named, versioned sets of params.yaml overrides (profiles/<name>.yaml): the report's\n"
                    "TAU22 setups. Without --apply or --dvc-args, print the combined overrides as YAML.\n"
                    "Profiles combine in order; --set wins; two profiles giving one key different values\n"
                    "is an error. --apply and --dvc-args also set the params key `profile` to the\n"
                    "profiles' names and versions.",
        epilog="examples:\n"
               "  python -m mobileast profile --list\n"
               "  python -m mobileast profile tau22-sub1\n"
               "  python -m mobileast profile tau22-passt tau22-sub1 --set data.root=/datasets/tau22 --apply\n"
               "  python -m mobileast profile tau22-passt tau22-sub1 --set data.root=/datasets/tau22 --dvc-args \\\n"
               "      | xargs .venv/bin/dvc exp run -n tau22-sub1")
    parser.add_argument("names", nargs="*", help="profiles to combine, in order")
    parser.add_argument("--list", action="store_true", help="list the profiles")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further override (e.g. data.root=/datasets/tau22); repeatable")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="write the overrides into params.yaml")
    action.add_argument("--dvc-args", action="store_true", help="print them as -S arguments of dvc exp run")
    parser.add_argument("--params", type=Path, help="the params file to --apply to (default: the project's)")
    args = parser.parse_args(argv)
    directory = profiles_dir()
    if not args.names and not args.list:
        parser.error("name at least one profile (or --list)")
    try:
        if args.list:
            for name in available(directory):
                profile = load_profile(name, directory)
                print(f"{name:<14} v{profile.version}  {profile.description}")
            return 0
        profiles = [load_profile(name, directory) for name in args.names]
        sets = parse_sets(args.set)
        if args.apply or args.dvc_args:
            overrides = record(profiles) | resolve(profiles, sets)
        else:  # printing needs no required values
            overrides = resolve([replace(p, requires={}) for p in profiles], sets)
        if args.apply:
            target = args.params or project_root() / "params.yaml"
            apply_to_file(target, overrides)
            print(f"{target}: set {len(overrides)} values ({RECORD_KEY}: {overrides[RECORD_KEY]})", file=sys.stderr)
        elif args.dvc_args:
            print("\n".join(dvc_args(overrides)))
        else:
            print(as_yaml(profiles, overrides), end="")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
