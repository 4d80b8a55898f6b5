"""`python -m mobileast dvc-deps --check | --write`: the code deps and params lists of dvc.yaml,
generated from what each stage runs.

A stage of dvc.yaml runs `stages/python -m stages.<name>`. Its code deps are the project's
.py files that module imports, transitively (lazy imports inside functions too, and the
parent packages' __init__.py files Python executes on the way), less progress.py,
schema.py and tracking.py (UNTRACKED_CODE: display, checks and MLflow only, they cannot
change a stage's outputs); its `params:` are the keys the
script's PARAMS list declares (PARAMS = None: the whole params.yaml). `--check` lists
every difference of dvc.yaml from that and exits 1 if there is one; `--write` rewrites the
stages' code deps and params lists in place, keeping every other line (data and model
deps, outs, metrics, plots, comments); it first adds to params.yaml each key of the
schema (mobileast.schema) it lacks, with the schema's default, and last rewrites the
configuration reference (mobileast.paramsdoc). So adding an import to a stage, or a key
to params (its schema entry, with a default), is that one edit plus
`python -m mobileast dvc-deps --write`.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from mobileast.files import project_root
from mobileast.imports import UNTRACKED_CODE, code_closure, module_file
from mobileast.params import add_missing, missing_keys, read_params

STAGE_COMMAND = "stages/python -m "  # stages/python: the venv's interpreter, found from any copy
WHOLE_FILE = "params.yaml"  # dvc.yaml's params entry of a stage depending on every key


def declared_params(script: Path) -> list[str] | None:
    """The PARAMS list of a stage script, read from its source (no import): the dotted keys
    the stage reads and depends on; None for the whole file."""
    for node in ast.parse(script.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "PARAMS" and getattr(node, "value", None) is not None:
            return ast.literal_eval(node.value)
    raise ValueError(f"{script} declares no PARAMS (the params keys the stage reads)")


def untracked_params(script: Path) -> list[str]:
    """The UNTRACKED list of a stage script: keys it reads that are no dependency."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "UNTRACKED" for t in node.targets):
            return ast.literal_eval(node.value)
    return []


@dataclass(frozen=True)
class Stage:
    """What dvc.yaml must say of a stage: its code deps (sorted) and params entries."""

    name: str
    module: str
    code: list[str]
    params: list[Any]


def stage_module(name: str, definition: dict[str, Any]) -> str:
    cmd = str(definition.get("cmd", ""))
    if not cmd.startswith(STAGE_COMMAND):
        raise ValueError(f"dvc.yaml: stage {name} must run `{STAGE_COMMAND}stages.<name>`, got {cmd!r}")
    return cmd.split()[2]


def expected(root: Path) -> list[Stage]:
    """Every stage of root/dvc.yaml, with the deps and params generated from its script."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    stages = []
    for name, definition in pipeline.items():
        module = stage_module(name, definition)
        keys = declared_params(module_file(module, root))
        params = [{WHOLE_FILE: None}] if keys is None else list(keys)
        stages.append(Stage(name, module, sorted(code_closure(module, root)), params))
    return stages


def is_code(dep: Any) -> bool:
    return isinstance(dep, str) and dep.endswith(".py")


def differences(root: Path) -> list[str]:
    """Each way root/dvc.yaml differs from the generated code deps and params, and each key of
    the schema root/params.yaml lacks, one line each."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    problems = [f"params.yaml: lacks {key} (--write adds the schema's default)"
                for key in missing_keys(read_params(root / "params.yaml"))]
    for stage in expected(root):
        definition = pipeline[stage.name]
        listed = {dep for dep in definition.get("deps") or [] if is_code(dep)}
        script = f"{stage.module.replace('.', '/')}.py"
        problems += [f"dvc.yaml: stage {stage.name}: deps lack {path} (imported by {script})"
                     for path in stage.code if path not in listed]
        problems += [f"dvc.yaml: stage {stage.name}: deps list {path}, " + (
                     f"which is no dependency of any stage ({UNTRACKED_CODE[path]})" if path in UNTRACKED_CODE
                     else f"which {script} does not import") for path in sorted(listed - set(stage.code))]
        params = definition.get("params") or []
        if params != stage.params:
            problems.append(f"dvc.yaml: stage {stage.name}: params are {_keys(params)} but {script} declares "
                            f"PARAMS {_keys(stage.params)}")
    return problems


def _keys(params: list[Any]) -> str:
    return "[" + ", ".join(WHOLE_FILE if isinstance(key, dict) else key for key in params) + "]"


STAGE_LINE = re.compile(r"^  (\w+):\s*$")
KEY_LINE = re.compile(r"^    (\w+):")
ITEM_LINE = re.compile(r"^      - ")


def rewrite(text: str, stages: Sequence[Stage]) -> str:
    """dvc.yaml `text` with each stage's `params:` block and the .py items of its `deps:`
    block replaced by the generated ones (code deps first, then the other deps in their
    order and with their comments); every other line is kept as it is."""
    wanted = {stage.name: stage for stage in stages}
    without_deps = {name for name, definition in yaml.safe_load(text)["stages"].items() if "deps" not in definition}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i, stage = 0, None
    while i < len(lines):
        line = lines[i]
        if not line.startswith(" ") and line.strip():
            stage = None
        if match := STAGE_LINE.match(line):
            stage = wanted.get(match.group(1))
        key = KEY_LINE.match(line)
        if stage is None or key is None or key.group(1) not in ("params", "deps", "cmd"):
            out.append(line)
            i += 1
            continue
        end = i + 1
        while end < len(lines) and (ITEM_LINE.match(lines[end]) or lines[end].startswith("          ")):
            end += 1
        block = lines[i + 1:end]
        if key.group(1) == "cmd":  # the params block, generated, goes right after the command (and always_changed)
            out.append(line)
            if end < len(lines) and lines[end].startswith("    always_changed:"):
                out.append(lines[end])
                end += 1
            out += _params_block(stage)
            if stage.name in without_deps:  # a new stage: its code deps
                out += ["    deps:\n", *(f"      - {path}\n" for path in stage.code)]
        elif key.group(1) == "deps":
            out.append(line)
            out += [f"      - {path}\n" for path in stage.code]
            out += [item for item in block if not is_code(ITEM_LINE.sub("", item).split("#")[0].strip())]
        i = end  # an old params block is dropped: the generated one was written after cmd
    return "".join(out)


def _params_block(stage: Stage) -> list[str]:
    if not stage.params:
        return []
    items = [f"      - {WHOLE_FILE}:\n" if isinstance(key, dict) else f"      - {key}\n" for key in stage.params]
    return ["    params:\n", *items]


def write(root: Path) -> bool:
    """Rewrite root/dvc.yaml's code deps and params lists; whether it changed."""
    path = root / "dvc.yaml"
    old = path.read_text()
    new = rewrite(old, expected(root))
    if new != old:
        path.write_text(new)
    return new != old


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast dvc-deps", description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m mobileast dvc-deps --check   # in CI: dvc.yaml matches the code\n"
               "  python -m mobileast dvc-deps --write   # after adding an import or a params key")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="list the differences; exit 1 if there is one")
    action.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps and params lists (and add to params.yaml "
                        "the schema keys it lacks, and rewrite docs/configuration.md)")
    parser.add_argument("--root", type=Path, help="the project (default: the one holding the working directory)")
    args = parser.parse_args(argv)
    root = (args.root or project_root()).resolve()
    if args.write:
        added = add_missing(root / "params.yaml")
        if added:
            print(f"{root / 'params.yaml'}: added {', '.join(added)} (the schema's defaults)", file=sys.stderr)
        changed = write(root)
        print(f"{root / 'dvc.yaml'}: {'rewritten' if changed else 'already up to date'}", file=sys.stderr)
        from mobileast.paramsdoc import write_doc  # it reads the stages as this module does

        write_doc(root)
        return 0
    from mobileast.paramsdoc import stale  # it reads the stages as this module does

    problems = differences(root) + stale(root)
    for problem in problems:
        print(problem)
    if problems:
        print("run `python -m mobileast dvc-deps --write` to regenerate them", file=sys.stderr)
    return 1 if problems else 0
