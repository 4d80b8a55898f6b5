"""dvc.yaml stays exact: every stage depends on precisely the code it runs and the
params keys its script declares, so `dvc exp run -S key=value` re-runs what it must
and nothing else, and every stage but `track` can be restored from DVC's run cache."""
import ast
import importlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """Source file of a project module (package -> __init__.py), None for third-party."""
    top = name.split(".")[0]
    base = {"mobileast": ROOT / "src", "stages": ROOT}.get(top)
    if base is None:
        return None
    path = base.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_closure(module: str) -> set[str]:
    """Project source files a module runs: itself, its imports, recursively, with the
    parent packages' __init__.py files that Python executes on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {str(p.relative_to(ROOT)) for p in seen}


STAGE_COMMAND = "stages/python -m stages."  # stages/python: the venv's interpreter, found from any copy
STAGES = sorted(name for name, stage in PIPELINE.items() if stage["cmd"].startswith(STAGE_COMMAND))


def test_every_stage_runs_a_stage_script():
    assert STAGES == sorted(PIPELINE)


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_what_the_stage_imports(stage):
    module = PIPELINE[stage]["cmd"].split()[2]
    code_deps = {d for d in PIPELINE[stage]["deps"] if d.endswith(".py")}
    assert code_deps == code_closure(module)


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_exactly_what_the_script_declares(stage):
    script = importlib.import_module(PIPELINE[stage]["cmd"].split()[2])
    declared = PIPELINE[stage].get("params", [])
    if getattr(script, "PARAMS", None) is None:  # reads the whole file
        assert declared == ["params.yaml"] or declared == [{"params.yaml": None}]
    else:
        assert declared == script.PARAMS
    # params read but declared as no dependency: outputs must not depend on them
    assert set(getattr(script, "UNTRACKED", [])) <= {"data.workers"}




def run_launcher(cwd: Path, bin_dir: Path) -> str:
    """stages/python -c ... run from `cwd` with only `bin_dir` on PATH; its stdout."""
    for tool in ("dirname",):  # what the launcher calls besides the shell's builtins
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run([str(ROOT / "stages" / "python"), "-c", "import os; print(os.environ['PYTHONPATH'])"],
                          cwd=cwd, env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_stage_interpreter_is_the_venv_found_upwards(tmp_path):
    """From a DVC experiment copy inside the project: the project's .venv, the copy's src first."""
    venv_bin = tmp_path / "project" / ".venv" / "bin"
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpx"
    venv_bin.mkdir(parents=True)
    copy.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (tmp_path / "bin").mkdir()
    assert run_launcher(copy, tmp_path / "bin") == str(copy / "src")


def test_stage_interpreter_without_a_venv_is_python3_on_path(tmp_path):
    """No .venv: `python3` (many systems have no `python`)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    assert run_launcher(tmp_path, tmp_path / "bin") == str(tmp_path / "src")

def declared_outs(stage: dict) -> dict[str, list[dict]]:
    """The stage's outs, metrics and plots as {kind: [{"path": ..., **flags}]}."""
    def entry(item: str | dict) -> dict:
        if isinstance(item, str):
            return {"path": item}
        [(path, flags)] = item.items()
        return {"path": path, **(flags or {})}

    return {kind: [entry(item) for item in stage.get(kind, [])] for kind in ("outs", "metrics", "plots")}


@pytest.mark.parametrize("stage", [name for name in STAGES if name != "track"])
def test_every_stage_but_track_can_be_restored_from_the_run_cache(stage):
    """DVC saves a stage run to its run cache only if the stage is not always_changed, has
    deps and outputs, no `persist` output and no plain out with `cache: false` (metrics and
    plots may have it): then `dvc exp run` back to params already tried restores, not reruns."""
    declared = declared_outs(PIPELINE[stage])
    assert not PIPELINE[stage].get("always_changed") and PIPELINE[stage]["deps"] and any(declared.values())
    assert not [out["path"] for entries in declared.values() for out in entries if out.get("persist")]
    assert not [out["path"] for out in declared["outs"] if out.get("cache") is False]


def test_track_runs_every_time():
    assert PIPELINE["track"]["always_changed"] is True

def write_code_deps(path: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite every stage's code deps in dvc.yaml to its code closure, keeping its other deps
    (data, models) after them and the file's comments: `python tests/test_dvc_pipeline.py`."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.width, yaml_rt.preserve_quotes = 120, True
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    pipeline = yaml_rt.load(path.read_text())
    for stage in pipeline["stages"].values():
        deps = stage["deps"]
        others = [(d, deps.ca.items.get(i)) for i, d in enumerate(deps) if not str(d).endswith(".py")]
        code = sorted(code_closure(stage["cmd"].split()[2]), key=lambda d: (not d.startswith("stages/"), d))
        deps.ca.items.clear()
        deps[:] = code + [d for d, _ in others]
        for i, (_, comment) in enumerate(others, start=len(code)):
            if comment is not None:
                deps.ca.items[i] = comment
    text = io.StringIO()
    yaml_rt.dump(pipeline, text)
    # a blank line before every stage and the top-level plots
    path.write_text(re.sub(r"(?m)(?<=\S\n)(?=(  [a-z_]+|plots):\n)", "\n", text.getvalue()))


if __name__ == "__main__":
    write_code_deps()
